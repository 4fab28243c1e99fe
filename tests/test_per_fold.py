"""Per-fold prediction, evaluation and guidance ablation (``--per-fold``): the argument and pre-flight checks, the
layout each command writes (with a stand-in predictor), the per-fold evaluation against numbers computed by hand,
and one end-to-end run through the real commands (two folds of a tiny phantom)."""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_mtl.cli.main import main
from nnunet_mtl.inference.models import check_per_fold_folds, parse_folds
from nnunet_mtl.errors import NnunetMtlError
from tests.e2e_helpers import BIN, nnunet_env, run, train_in_process

CLASSES = ["benign", "malignant"]


def one_error_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------ fold checks
def test_parse_folds():
    assert parse_folds(["0", "2", "all"]) == [0, 2, "all"]
    with pytest.raises(NnunetMtlError, match="-f 'x' is not a fold"):
        parse_folds(["0", "x"])


@pytest.mark.parametrize("folds, needle", [
    (["all"], "-f all cannot be combined with --per-fold"),
    (["0", "all"], "'all' is one model"),
    (["0"], "at least two folds, got -f 0"),
    (["1", "0", "1"], "fold 1 more than once"),
    (["0", "-1"], "is not a fold"),
])
def test_per_fold_needs_two_distinct_numbered_folds(folds, needle):
    with pytest.raises(NnunetMtlError, match=needle) as info:
        check_per_fold_folds(folds)
    assert "\n" not in str(info.value)


def test_per_fold_folds_keep_their_order():
    assert check_per_fold_folds(["2", "0", "1"]) == [2, 0, 1]


@pytest.mark.parametrize("command", ["predict", "ablate-guidance"])
@pytest.mark.parametrize("folds, needle", [(["all"], "-f all"), (["3"], "at least two folds")])
def test_cli_per_fold_fold_errors_are_one_line_before_anything(tmp_path, capsys, monkeypatch, command, folds, needle):
    monkeypatch.delenv("nnUNet_results", raising=False)  # the folds are checked before the model is even looked up
    out = tmp_path / "out"
    code = main([command, "-i", str(tmp_path), "-o", str(out), "-d", "777", "-c", "2d", "-f", *folds,
                 "--per-fold", "-device", "cpu"])
    assert needle in one_error_line(capsys, code)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ a fake model
PLANS = {"dataset_name": "Dataset777_A",
         "nnunet_mtl": {"class_labels": {"benign": 0, "malignant": 1}, "guidance_features": ["f0", "f1"]}}


@pytest.fixture
def model(tmp_path, monkeypatch):
    """nnUNet_results with a model folder of three folds' checkpoints (enough for the pre-flight checks), an input
    folder of four images and a cases.csv for them."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    folder = tmp_path / "nnUNet_results" / "Dataset777_A" / "nnUNetTrainerMTL__nnUNetPlans__2d"
    for k in range(3):
        (folder / f"fold_{k}").mkdir(parents=True)
        torch.save({"init_args": {"plans": {"dataset_name": "Dataset777_A"}}},
                   folder / f"fold_{k}" / "checkpoint_final.pth")
    (folder / "plans.json").write_text(json.dumps(PLANS))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".png", "class_labels": PLANS["nnunet_mtl"][
        "class_labels"]}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    cases = {"c0": "benign", "c1": "benign", "c2": "malignant", "c3": "malignant"}
    for case in cases:
        Image.new("L", (8, 8), 40).save(inputs / f"{case}_0000.png")
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        w.writerows([c, "test", k, f"P{c}"] for c, k in cases.items())
    return {"root": tmp_path, "folder": folder, "inputs": inputs, "cases": cases, "cases_csv": tmp_path / "cases.csv"}


def predict_argv(model, out, *extra, command="predict", folds=("0", "1")):
    return [command, "-i", str(model["inputs"]), "-o", str(out), "-d", "777", "-c", "2d", "-tr", "nnUNetTrainerMTL",
            "-f", *folds, "-device", "cpu", *extra]


def test_missing_checkpoint_of_one_fold_stops_before_any_prediction(model, capsys):
    out = model["root"] / "out"
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold", folds=("0", "1", "4"))))
    assert "fold_4" in err and "checkpoint_final.pth" in err
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold", "-chk", "checkpoint_best.pth")))
    assert "fold_0" in err and "checkpoint_best.pth" in err
    assert not out.exists()


def test_unreadable_input_stops_before_any_prediction(model, capsys):
    (model["inputs"] / "c1_0000.png").write_bytes(b"\x89PNG broken")
    out = model["root"] / "out"
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold")))
    assert "c1_0000.png" in err and not out.exists()


def test_per_fold_into_a_plain_prediction_folder_is_refused(model, capsys):
    out = model["root"] / "out"
    out.mkdir()
    Image.new("L", (8, 8)).save(out / "c0.png")
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold")))
    assert "plain prediction" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == ["c0.png"]


# ------------------------------------------------------------------------------------------------ a stand-in predictor
class FakePredictor:
    """What the per-fold code uses of MultitaskPredictor; fold k's model predicts a mask of value k + 1 (the
    ensemble: 9) and class probabilities from a per-fold linear classifier on a recorded embedding."""

    def __init__(self, folds):
        self.folds = folds
        self.class_names = list(CLASSES)
        self.segments = True  # a model that segments (MultitaskPredictor: False for classification-only models)
        self.class_probabilities = {}
        self.record_embeddings = False
        self.embeddings = {}
        self.device = torch.device("cpu")

    def fold_classifiers(self):
        # fold k relies on guided feature 0 with weight k + 1, ignores feature 1
        return [(np.array([[-(k + 1.0), 0.0], [k + 1.0, 0.0]]), np.array([0.1, 0.0])) for k in self.folds]

    def write_class_predictions(self, path, merge_existing=True):  # the real writer: it merges by case id
        from nnunet_mtl.inference.predictor import MultitaskPredictor
        return MultitaskPredictor.write_class_predictions(self, Path(path), merge_existing)


@pytest.fixture
def fake_prediction(monkeypatch):
    """load_predictor / predict_folder replaced; records every (folds, output, args) they were called with."""
    from nnunet_mtl.inference import runner
    from nnunet_mtl.evaluation.guidance_ablation import class_probabilities
    calls = []

    def load_predictor(args, checked=None):
        return FakePredictor(parse_folds(args.f))

    def predict_folder(predictor, args, output):
        calls.append({"folds": predictor.folds, "output": Path(output), "args": args})
        value = 9 if len(predictor.folds) > 1 else predictor.folds[0] + 1
        for image in sorted(Path(args.i).glob("*_0000.png")):
            case = image.name[:-len("_0000.png")]
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(Path(output) / f"{case}.png")
            x = -1.0 if case in ("c0", "c1") else 1.0
            h = np.array([[[[x * (1 + 0.1 * k), 0.5]]] for k in predictor.folds])  # folds, mirrors, tiles, K
            if predictor.record_embeddings:
                predictor.embeddings[case] = h
            predictor.class_probabilities[case] = class_probabilities(h, predictor.fold_classifiers())

    monkeypatch.setattr(runner, "load_predictor", load_predictor)
    monkeypatch.setattr(runner, "predict_folder", predict_folder)
    return calls


def mask_values(folder):
    return {p.stem: int(np.asarray(Image.open(p)).max()) for p in sorted(Path(folder).glob("*.png"))}


def test_predict_per_fold_layout(model, fake_prediction, capsys):
    out = model["root"] / "out"
    assert main(predict_argv(model, out, "--per-fold", "--save_probabilities", folds=("2", "0"))) == 0
    printed = capsys.readouterr().out
    # one run per fold's model alone, in the order given, then the ensemble of all of them
    assert [(c["folds"], c["output"]) for c in fake_prediction] == [
        ([2], out / "fold_2"), ([0], out / "fold_0"), ([2, 0], out / "ensemble")]
    assert all(c["args"].save_probabilities and not c["args"].per_fold for c in fake_prediction)
    assert printed.index("fold 1/2: fold 2's model alone") < printed.index("fold 2/2: fold 0's model alone") \
        < printed.index("ensemble: folds 2, 0 together")
    assert sorted(p.name for p in out.iterdir()) == ["ensemble", "fold_0", "fold_2", "per_fold.json"]
    assert set(mask_values(out / "fold_2").values()) == {3} and set(mask_values(out / "ensemble").values()) == {9}
    for sub in ("fold_0", "fold_2", "ensemble"):
        with open(out / sub / "class_predictions.csv") as f:
            assert sorted(r["case_id"] for r in csv.DictReader(f)) == sorted(model["cases"])
    info = json.loads((out / "per_fold.json").read_text())
    assert info["folds"] == [2, 0] and info["checkpoint"] == "checkpoint_final.pth"
    assert info["trainer"] == "nnUNetTrainerMTL" and info["dataset"] == "Dataset777_A"
    assert {k: v["folds"] for k, v in info["subfolders"].items()} == {"fold_2": [2], "fold_0": [0],
                                                                     "ensemble": [2, 0]}
    assert "-f 2 0" in info["command"] and "--per-fold" in info["command"]
    assert "-f 2 0" in info["subfolders"]["ensemble"]["command"]
    assert "--per-fold" not in info["subfolders"]["fold_0"]["command"] and "-f 0 " in info["subfolders"]["fold_0"][
        "command"]
    assert not list(out.rglob("*.tmp"))


def test_predict_per_fold_passes_checkpoint_and_parts(model, fake_prediction, capsys):
    for k in range(2):
        torch.save({"init_args": {"plans": {"dataset_name": "Dataset777_A"}}},
                   model["folder"] / f"fold_{k}" / "checkpoint_best.pth")
    out = model["root"] / "out"
    assert main(predict_argv(model, out, "--per-fold", "-chk", "checkpoint_best.pth", "-num_parts", "2",
                             "-part_id", "1")) == 0
    assert all(c["args"].chk == "checkpoint_best.pth" and (c["args"].num_parts, c["args"].part_id) == (2, 1)
               for c in fake_prediction)
    assert (out / "fold_1" / "class_predictions_part1.csv").is_file()
    assert json.loads((out / "per_fold.json").read_text())["checkpoint"] == "checkpoint_best.pth"


def test_continue_prediction_of_another_model_is_refused(model, fake_prediction, capsys):
    out = model["root"] / "out"
    assert main(predict_argv(model, out, "--per-fold")) == 0
    before = (out / "per_fold.json").read_bytes()
    capsys.readouterr()
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold", "--continue_prediction",
                                                   folds=("0", "1", "2"))))
    assert "folds" in err and "[0, 1]" in err and "mix" in err
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold", "--continue_prediction",
                                                   "--disable_tta")))
    assert "disable_tta" in err
    assert (out / "per_fold.json").read_bytes() == before and len(fake_prediction) == 3
    # the same model continues; a plain prediction into the per-fold folder is refused
    assert main(predict_argv(model, out, "--per-fold", "--continue_prediction")) == 0
    assert all(c["args"].continue_prediction for c in fake_prediction[3:])
    capsys.readouterr()
    err = one_error_line(capsys, main(predict_argv(model, out, folds=("0",))))
    assert "per_fold.json" in err and "--per-fold" in err


def test_ablate_guidance_per_fold(model, fake_prediction, capsys):
    out = model["root"] / "abl"
    argv = predict_argv(model, out, "--per-fold", "--cases", str(model["cases_csv"]), command="ablate-guidance",
                        folds=("0", "1", "2"))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert [c["folds"] for c in fake_prediction] == [[0], [1], [2], [0, 1, 2]]
    for sub in ("fold_0", "fold_1", "fold_2", "ensemble"):
        for name in ("guidance_ablation.csv", "guidance_ablation.json", "guidance_ablation.png",
                     "class_predictions.csv"):
            assert (out / sub / name).is_file(), (sub, name)
    agg = json.loads((out / "guidance_ablation_per_fold.json").read_text())
    per_fold = [json.loads((out / f"fold_{k}" / "guidance_ablation.json").read_text()) for k in range(3)]
    ensemble = json.loads((out / "ensemble" / "guidance_ablation.json").read_text())
    assert [r["feature"] for r in agg["features"]] == ["f0", "f1"]
    for i, row in enumerate(agg["features"]):
        for key in ("delta_macro_precision", "delta_macro_recall", "delta_macro_f1", "changed_predictions"):
            values = [p["features"][i][key] for p in per_fold]
            assert row[key]["values"] == pytest.approx(values)
            assert row[key]["mean"] == pytest.approx(np.mean(values))
            assert row[key]["std"] == pytest.approx(np.std(values, ddof=1))
            assert row[key]["ensemble"] == pytest.approx(ensemble["features"][i][key])
    # every fold decides by feature 0 alone: zeroing it leaves the bias (benign) for every case
    assert agg["features"][0]["changed_predictions"]["values"] == [2, 2, 2]
    assert agg["features"][0]["delta_macro_f1"]["mean"] < -0.4 and agg["features"][1]["delta_macro_f1"]["mean"] == 0
    with open(out / "guidance_ablation_per_fold.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["feature"] for r in rows] == ["f0", "f1"]
    assert float(rows[0]["mean_delta_macro_f1"]) == pytest.approx(agg["features"][0]["delta_macro_f1"]["mean"])
    assert "mean ± sample std over 3 folds" in printed and "fold 3/3" in printed
    assert json.loads((out / "per_fold.json").read_text())["subfolders"]["ensemble"]["folds"] == [0, 1, 2]


def test_ablate_guidance_per_fold_checks_reference_classes_first(model, fake_prediction, capsys):
    lines = model["cases_csv"].read_text().splitlines()
    model["cases_csv"].write_text("\n".join(line for line in lines if not line.startswith("c2,")) + "\n")
    out = model["root"] / "abl"
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold", "--cases", str(model["cases_csv"]),
                                                   command="ablate-guidance")))
    assert "c2" in err and str(model["cases_csv"]) in err
    assert not out.exists() and not fake_prediction


# ------------------------------------------------------------------------------------------------ per-fold evaluation
def _square(top, left, size, shape=(16, 16)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def _write_prediction(folder, masks, probs):
    folder.mkdir(parents=True)
    for case, mask in masks.items():
        Image.fromarray(mask).save(folder / f"{case}.png")
    with open(folder / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
        for case, p in probs.items():
            w.writerow([case, CLASSES[int(p[1] > p[0])], *p])


REF = {"a": _square(2, 2, 8), "b": _square(4, 4, 8), "c": _square(10, 10, 4)}
REF_CLASS = {"a": "benign", "b": "malignant", "c": "malignant"}


@pytest.fixture
def per_fold_folder(tmp_path):
    """A fake per-fold prediction folder: two folds and their ensemble, the references and classes.

    Dice per case: fold_0 a 1, b 0 (empty), c 0.5 (4x4 squares shifted by 2) -> mean 0.5;
    fold_1 a 0.5 (8x8 squares shifted by 4), b 1, c 1 -> mean 5/6; ensemble: all 1.
    Classes: fold_0 calls b benign (accuracy 2/3), fold_1 and the ensemble are all right.
    """
    ref = tmp_path / "labels"
    ref.mkdir()
    for case, mask in REF.items():
        Image.fromarray(mask).save(ref / f"{case}.png")
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        w.writerows([c, "test", k, f"P{c}"] for c, k in REF_CLASS.items())
    (tmp_path / "dataset.json").write_text(json.dumps({"class_labels": {"benign": 0, "malignant": 1}}))
    out = tmp_path / "pred"
    _write_prediction(out / "fold_0", {"a": REF["a"], "b": np.zeros((16, 16), np.uint8), "c": _square(10, 12, 4)},
                      {"a": (0.9, 0.1), "b": (0.6, 0.4), "c": (0.2, 0.8)})
    _write_prediction(out / "fold_1", {"a": _square(2, 6, 8), "b": REF["b"], "c": REF["c"]},
                      {"a": (0.7, 0.3), "b": (0.3, 0.7), "c": (0.4, 0.6)})
    _write_prediction(out / "ensemble", dict(REF), {"a": (0.8, 0.2), "b": (0.45, 0.55), "c": (0.3, 0.7)})
    (out / "per_fold.json").write_text(json.dumps({"folds": [0, 1], "subfolders": {
        "fold_0": {"folds": [0]}, "fold_1": {"folds": [1]}, "ensemble": {"folds": [0, 1]}}}))
    return tmp_path


def _evaluate_argv(root, *extra):
    return ["evaluate", "-pred", str(root / "pred"), "-ref", str(root / "labels"), "--cases",
            str(root / "cases.csv"), "--class-labels", str(root / "dataset.json"), *extra]


def test_evaluate_per_fold_folder_by_hand(per_fold_folder, capsys):
    root = per_fold_folder
    assert main(_evaluate_argv(root)) == 0
    printed = capsys.readouterr().out
    result = json.loads((root / "pred" / "evaluation" / "per_fold_summary.json").read_text())
    metrics = result["mean_std_over_folds"]["metrics"]
    dice = metrics["segmentation.dice.mean"]
    assert dice["values"] == pytest.approx([0.5, 5 / 6])
    assert dice["mean"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert dice["std"] == pytest.approx(abs(5 / 6 - 0.5) / math.sqrt(2))  # sample std of two numbers
    acc = metrics["classification.accuracy"]
    assert acc["mean"] == pytest.approx(5 / 6) and acc["std"] == pytest.approx((1 / 3) / math.sqrt(2))
    # fold_0: benign P 1/2 R 1 F1 2/3 (support 1), malignant P 1 R 1/2 F1 2/3 (support 2); fold_1: all 1
    wf1 = metrics["classification.weighted_f1"]
    assert wf1["values"] == pytest.approx([2 / 3, 1.0]) and wf1["mean"] == pytest.approx(5 / 6)
    assert metrics["classification.weighted_precision"]["values"] == pytest.approx([(0.5 + 2) / 3, 1.0])
    ensemble = result["fold_ensemble"]["metrics"]
    assert ensemble["segmentation.dice.mean"] == pytest.approx(1.0)
    assert ensemble["classification.accuracy"] == pytest.approx(1.0)
    assert result["num_folds"] == 2 and list(result["folds"]) == ["fold_0", "fold_1"]
    assert result["ensemble"]["folds"] == [0, 1]
    # each subfolder evaluated into its own evaluation/ as a plain folder would be
    for sub in ("fold_0", "fold_1", "ensemble"):
        summary = json.loads((root / "pred" / sub / "evaluation" / "summary.json").read_text())
        assert summary["num_cases"] == 3 and summary["classification"] is not None
    fold_0 = json.loads((root / "pred" / "fold_0" / "evaluation" / "summary.json").read_text())
    assert fold_0["segmentation"]["dice"]["mean"] == pytest.approx(0.5)
    # the table names both numbers
    assert "mean ± std over 2 folds" in printed and "fold ensemble" in printed
    assert "0.6667 ± 0.2357" in printed and "ensemble of folds 0, 1" in printed
    with open(root / "pred" / "evaluation" / "per_fold_summary.csv") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert float(rows["segmentation.dice.mean"]["fold_1"]) == pytest.approx(5 / 6)
    assert float(rows["segmentation.dice.mean"]["fold_ensemble"]) == pytest.approx(1.0)


def test_evaluate_per_fold_without_per_fold_json_and_with_o(per_fold_folder, capsys):
    root = per_fold_folder
    (root / "pred" / "per_fold.json").unlink()
    assert main(_evaluate_argv(root, "-o", str(root / "ev"))) == 0
    result = json.loads((root / "ev" / "per_fold_summary.json").read_text())
    assert result["mean_std_over_folds"]["metrics"]["segmentation.dice.mean"]["mean"] == pytest.approx(2 / 3)
    assert result["fold_ensemble"]["metrics"]["segmentation.dice.mean"] == pytest.approx(1.0)
    assert any("no per_fold.json" in n for n in result["notes"])
    assert (root / "ev" / "fold_0" / "summary.json").is_file() and (root / "ev" / "ensemble" / "summary.json").is_file()
    assert not (root / "pred" / "fold_0" / "evaluation").exists()


def test_evaluate_per_fold_with_dataset_id(per_fold_folder, monkeypatch, capsys):
    root = per_fold_folder
    ds = root / "raw" / "Dataset502_X"
    ds.mkdir(parents=True)
    (root / "labels").rename(ds / "labelsTs")
    (root / "cases.csv").rename(ds / "cases.csv")
    (root / "dataset.json").rename(ds / "dataset.json")
    monkeypatch.setenv("nnUNet_raw", str(root / "raw"))
    assert main(["evaluate", "-pred", str(root / "pred"), "-d", "502"]) == 0
    result = json.loads((root / "pred" / "evaluation" / "per_fold_summary.json").read_text())
    assert result["mean_std_over_folds"]["metrics"]["classification.accuracy"]["mean"] == pytest.approx(5 / 6)


def test_evaluate_per_fold_missing_subfolder_writes_nothing(per_fold_folder, capsys):
    root = per_fold_folder
    (root / "pred" / "fold_1" / "b.png").unlink()
    err = one_error_line(capsys, main(_evaluate_argv(root)))
    assert "fold_1" in err and "b" in err
    Image.fromarray(REF["b"]).save(root / "pred" / "fold_1" / "b.png")
    import shutil
    shutil.rmtree(root / "pred" / "ensemble")
    err = one_error_line(capsys, main(_evaluate_argv(root)))
    assert "ensemble" in err and "per_fold.json" in err
    assert not list((root / "pred").rglob("evaluation"))
    err = one_error_line(capsys, main(_evaluate_argv(root, "--classes", str(root / "pred" / "fold_0" /
                                                                             "class_predictions.csv"))))
    assert "--classes" in err
    err = one_error_line(capsys, main(_evaluate_argv(root, "-o", str(root / "pred" / "fold_0"))))
    assert "is the input folder" in err and not (root / "pred" / "fold_0" / "summary.json").exists()


def test_a_model_folder_is_not_taken_for_predictions(tmp_path, capsys):
    model = tmp_path / "nnUNetTrainerMTL__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    (tmp_path / "ref").mkdir()
    Image.fromarray(REF["a"]).save(tmp_path / "ref" / "a.png")
    err = one_error_line(capsys, main(["evaluate", "-pred", str(model), "-ref", str(tmp_path / "ref")]))
    assert "trained model folder" in err and "validation" in err


def test_a_plain_prediction_folder_is_evaluated_as_before(per_fold_folder, capsys):
    root = per_fold_folder
    assert main(["evaluate", "-pred", str(root / "pred" / "fold_1"), "-ref", str(root / "labels")]) == 0
    assert (root / "pred" / "fold_1" / "evaluation" / "summary.json").is_file()
    assert not (root / "pred" / "evaluation").exists()


# ------------------------------------------------------------------------------------------------ end to end
DATASET = "501"  # the session's trained phantom (tests/conftest.py), copied
TRAINER = "nnUNetTrainerMTL_tiny"


@pytest.fixture(scope="module")
def two_folds(tmp_path_factory, trained_phantom):
    """A tiny phantom, planned, and folds 0 and 1 trained with the smoke-test schedule: a copy of the session's
    trained phantom (fold 0, through nnUNetv2_train), whose shared folders stay as they are, and fold 1 trained here
    in this process (nnU-Net's run_training: the checkpoint the predictions read, without a second start of nnU-Net
    and its final validation, which no test here reads)."""
    import shutil

    from nnunet_mtl.trainers import TRAINERS
    assert trained_phantom["dataset"] == DATASET and trained_phantom["trainer"] == TRAINER
    root = tmp_path_factory.mktemp("per_fold_e2e")
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(trained_phantom["root"] / var, root / var)
    model = trained_phantom["model"]  # only this trainer's folder (other tests train more into the shared one)
    shutil.copytree(model, root / "nnUNet_results" / model.parent.name / model.name)
    env = nnunet_env(root)
    with pytest.MonkeyPatch.context() as mp:
        train_in_process(root, DATASET, TRAINERS[TRAINER], mp, fold=1, seed=1)
    assert (root / "nnUNet_results" / model.parent.name / model.name / "fold_1" / "checkpoint_final.pth").is_file()
    raw = Path(env["nnUNet_raw"]) / trained_phantom["raw"].name
    return {"root": root, "env": env, "raw": raw}


def _predict(two_folds, out, *folds_and_flags):
    return run([str(BIN / "nnunet_mtl"), "predict", "-i", str(two_folds["raw"] / "imagesTs"), "-o", str(out),
                "-d", DATASET, "-c", "2d", "-tr", TRAINER, "-device", "cpu", "--disable_tta", "-f",
                *folds_and_flags], two_folds["env"])


@pytest.mark.e2e
def test_per_fold_prediction_and_evaluation_end_to_end(two_folds):
    root, env = two_folds["root"], two_folds["env"]
    out = root / "per_fold"
    result = _predict(two_folds, out, "0", "1", "--per-fold")
    assert "fold 1/2" in result.stdout and "fold 2/2" in result.stdout and "ensemble" in result.stdout
    _predict(two_folds, root / "plain_0", "0")
    _predict(two_folds, root / "plain_01", "0", "1")
    images = sorted(p.name[:-len("_0000.png")] for p in (two_folds["raw"] / "imagesTs").glob("*_0000.png"))
    for sub, plain in (("fold_0", "plain_0"), ("ensemble", "plain_01")):
        ours, theirs = sorted((out / sub).glob("*.png")), sorted((root / plain).glob("*.png"))
        assert [p.stem for p in ours] == [p.stem for p in theirs] == images
        for a, b in zip(ours, theirs):
            assert a.read_bytes() == b.read_bytes(), (sub, a.name)  # bit-identical PNGs
        assert (out / sub / "class_predictions.csv").read_text() == (root / plain / "class_predictions.csv").read_text()
    assert sorted(p.stem for p in (out / "fold_1").glob("*.png")) == images
    info = json.loads((out / "per_fold.json").read_text())
    assert info["folds"] == [0, 1] and info["checkpoint"] == "checkpoint_final.pth" and info["trainer"] == TRAINER
    assert {k: v["folds"] for k, v in info["subfolders"].items()} == {"fold_0": [0], "fold_1": [1],
                                                                     "ensemble": [0, 1]}

    result = run([str(BIN / "nnunet_mtl"), "evaluate", "-pred", str(out), "-d", DATASET], env)
    assert "mean ± std over 2 folds" in result.stdout and "fold ensemble" in result.stdout
    summary = json.loads((out / "evaluation" / "per_fold_summary.json").read_text())
    folds = [json.loads((out / f"fold_{k}" / "evaluation" / "summary.json").read_text()) for k in (0, 1)]
    for key, get in (("segmentation.dice.mean", lambda s: s["segmentation"]["dice"]["mean"]),
                     ("classification.accuracy", lambda s: s["classification"]["accuracy"]),
                     ("classification.weighted_f1", lambda s: s["classification"]["weighted_f1"])):
        values = [get(s) for s in folds]
        m = summary["mean_std_over_folds"]["metrics"][key]
        assert m["values"] == pytest.approx(values) and m["mean"] == pytest.approx(np.mean(values))
        assert m["std"] == pytest.approx(np.std(values, ddof=1))
    # the ensemble's numbers are those of the plain -f 0 1 prediction
    run([str(BIN / "nnunet_mtl"), "evaluate", "-pred", str(root / "plain_01"), "-d", DATASET], env)
    plain = json.loads((root / "plain_01" / "evaluation" / "summary.json").read_text())
    ensemble = summary["fold_ensemble"]["metrics"]
    assert ensemble["segmentation.dice.mean"] == pytest.approx(plain["segmentation"]["dice"]["mean"])
    assert ensemble["classification.macro_f1"] == pytest.approx(plain["classification"]["macro_f1"])
    assert summary["ensemble"]["num_cases"] == len(images)


# ------------------------------------------------------------------------------------------------ an existing output
def _rows(path):
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_predicting_into_a_folder_of_other_predictions_keeps_their_rows(model, fake_prediction, capsys):
    """Issue 13, item 4: class_predictions.csv was cut to the new rows while the old masks stayed."""
    out = model["root"] / "out"
    first, second = model["root"] / "first", model["root"] / "second"
    for folder, cases in ((first, ("c0", "c1")), (second, ("c1", "c2"))):
        folder.mkdir()
        for case in cases:
            (folder / f"{case}_0000.png").write_bytes((model["inputs"] / f"{case}_0000.png").read_bytes())
    assert main(predict_argv({**model, "inputs": first}, out)) == 0
    before = _rows(out / "class_predictions.csv")
    assert sorted(before) == ["c0", "c1"]
    assert main(predict_argv({**model, "inputs": second}, out, folds=("0",))) == 0
    after = _rows(out / "class_predictions.csv")
    assert sorted(after) == ["c0", "c1", "c2"] == sorted(p.stem for p in out.glob("*.png"))  # masks and rows agree
    assert after["c0"] == before["c0"] and after["c1"] != before["c1"]  # c1 predicted now: its row replaced
    capsys.readouterr()
    # a mask without a row (written by nnUNetv2_predict, say) is pointed out
    Image.new("L", (8, 8)).save(out / "x9.png")
    assert main(predict_argv({**model, "inputs": second}, out, folds=("0",))) == 0
    assert "note: 1 mask(s) in" in capsys.readouterr().out


def test_predicting_into_a_folder_of_another_models_classes_is_refused_first(model, fake_prediction, capsys):
    out = model["root"] / "out"
    out.mkdir()
    (out / "class_predictions.csv").write_text("case_id,predicted_class,prob_TR1,prob_TR2\nz,TR1,0.9,0.1\n")
    Image.new("L", (8, 8)).save(out / "z.png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = one_error_line(capsys, main(predict_argv(model, out)))
    assert "class_predictions.csv has columns case_id,predicted_class,prob_TR1,prob_TR2" in err
    assert "prob_benign,prob_malignant" in err and "another -o" in err
    assert fake_prediction == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same for one subfolder of a per-fold run, before any fold is predicted
    (out / "class_predictions.csv").unlink()
    (out / "z.png").unlink()
    (out / "fold_1").mkdir()
    (out / "fold_1" / "class_predictions.csv").write_text("case_id,label\n")
    err = one_error_line(capsys, main(predict_argv(model, out, "--per-fold")))
    assert "fold_1/class_predictions.csv has columns case_id,label" in err and fake_prediction == []
    assert not (out / "per_fold.json").exists()
