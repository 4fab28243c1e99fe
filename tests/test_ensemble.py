"""``nnunet_mtl ensemble``: the masks equal nnU-Net's own ensemble_folders (what nnUNetv2_ensemble runs) on the same
folders, byte for byte; class_predictions.csv is the case-wise mean; a per-fold folder stands for its ensemble/;
bad inputs are one line with nothing written. The prediction folders are built by hand as nnU-Net's export writes
them (CASE.npz with 'probabilities', CASE.pkl with the properties, the mask, dataset.json, plans.json) plus our
class_predictions.csv."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import save_pickle
from PIL import Image

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference import ensemble as ens
from tests.file_helpers import snapshot

LABELS = {"background": 0, "lesion": 1, "cyst": 2}
CLASSES = ["benign", "malignant", "normal"]
CASES = ["case_a", "case_b", "case_c"]
SHAPE = (1, 12, 16)  # nnU-Net's 2D PNG layout: (1, H, W)
# per folder, per case: class probabilities (case_a: F1 says benign, F2 malignant, their mean malignant)
CLASS_PROBS = {
    "F1": {"case_a": (0.6, 0.4, 0.0), "case_b": (0.2, 0.3, 0.5), "case_c": (0.333333, 0.333333, 0.333334)},
    "F2": {"case_a": (0.1, 0.9, 0.0), "case_b": (0.25, 0.125, 0.625), "case_c": (0.7, 0.2, 0.1)},
}
PLANS = {"dataset_name": "Dataset900_Ens", "plans_name": "nnUNetPlans", "image_reader_writer": "NaturalImage2DIO",
         "label_manager": "LabelManager", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
         "configurations": {}}


def write_csv(path: Path, rows: dict, names=CLASSES) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class"] + [f"prob_{n}" for n in names])
        for case, probs in rows.items():
            w.writerow([case, names[int(np.argmax(probs))]] + [f"{p:.6f}" for p in probs])


def make_prediction_folder(folder: Path, seed: int, class_rows: dict) -> Path:
    """What nnunet_mtl predict --save_probabilities writes (nnU-Net's export_prediction_from_logits files)."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "ultrasound"}, "labels": LABELS,
                                                     "numTraining": 3, "file_ending": ".png"}))
    (folder / "plans.json").write_text(json.dumps(PLANS))
    for case in CASES:
        logits = rng.normal(size=(len(LABELS), *SHAPE)) * 2
        probs = (np.exp(logits) / np.exp(logits).sum(0, keepdims=True)).astype(np.float32)
        np.savez_compressed(folder / f"{case}.npz", probabilities=probs)
        save_pickle({"spacing": (999, 1, 1), "shape_before_cropping": SHAPE,
                     "bbox_used_for_cropping": [[0, 1], [0, SHAPE[1]], [0, SHAPE[2]]],
                     "shape_after_cropping_and_before_resampling": SHAPE}, str(folder / f"{case}.pkl"))
        NaturalImage2DIO().write_seg(probs.argmax(0).astype(np.uint8), str(folder / f"{case}.png"), {})
    write_csv(folder / "class_predictions.csv", class_rows)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """F1, F2 and nnU-Net's own ensemble of them (ensemble_folders, with the merged probabilities) in REF."""
    from nnunetv2.ensembling.ensemble import ensemble_folders
    root = tmp_path_factory.mktemp("ens")
    make_prediction_folder(root / "F1", 1, CLASS_PROBS["F1"])
    make_prediction_folder(root / "F2", 2, CLASS_PROBS["F2"])
    ensemble_folders([str(root / "F1"), str(root / "F2")], str(root / "REF"), save_merged_probabilities=True,
                     num_processes=1)
    return root


@pytest.fixture
def w(template, tmp_path):
    shutil.copytree(template / "F1", tmp_path / "F1")
    shutil.copytree(template / "F2", tmp_path / "F2")
    return tmp_path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_masks_equal_nnunet(out: Path, ref: Path, npz: bool) -> None:
    for case in CASES:
        assert (out / f"{case}.png").read_bytes() == (ref / f"{case}.png").read_bytes(), case
        assert np.array_equal(np.asarray(Image.open(out / f"{case}.png")), np.asarray(Image.open(ref / f"{case}.png")))
        assert (out / f"{case}.npz").is_file() == npz and (out / f"{case}.pkl").is_file() == npz
        if npz:
            assert np.array_equal(np.load(out / f"{case}.npz")["probabilities"],
                                  np.load(ref / f"{case}.npz")["probabilities"])
            assert (out / f"{case}.pkl").read_bytes() == (ref / f"{case}.pkl").read_bytes()
    assert json.loads((out / "dataset.json").read_text()) == json.loads((ref / "dataset.json").read_text())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "staging left behind"


# ------------------------------------------------------------------------------------------------ the command
def test_masks_equal_nnunet_ensemble_and_classes_are_the_mean(w, template, capsys):
    out = w / "OUT"
    code = main(["ensemble", "-i", str(w / "F1"), str(w / "F2"), "-o", str(out), "-np", "1", "--save_npz"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert_masks_equal_nnunet(out, template / "REF", npz=True)
    # the ensemble differs from either input somewhere (the test would be vacuous otherwise)
    for f in ("F1", "F2"):
        assert any((out / f"{c}.png").read_bytes() != (w / f / f"{c}.png").read_bytes() for c in CASES)

    rows = read_rows(out / "class_predictions.csv")
    assert [r["case_id"] for r in rows] == sorted(CASES)
    assert list(rows[0]) == ["case_id", "predicted_class"] + [f"prob_{n}" for n in CLASSES]
    for row in rows:
        mean = np.mean([CLASS_PROBS[f][row["case_id"]] for f in ("F1", "F2")], axis=0)
        assert [float(row[f"prob_{n}"]) for n in CLASSES] == pytest.approx(mean, abs=5e-7)
        assert all(len(row[f"prob_{n}"].split(".")[1]) == 6 for n in CLASSES)
        assert row["predicted_class"] == CLASSES[int(np.argmax(mean))]
    assert rows[0]["predicted_class"] == "malignant"  # case_a: F1 alone says benign

    info = json.loads((out / "ensemble.json").read_text())
    assert [i["folder"] for i in info["inputs"]] == [str((w / "F1").resolve()), str((w / "F2").resolve())]
    assert info["cases"] == 3 and info["class_names"] == CLASSES and info["save_npz"] is True
    assert info["inputs"][0]["dataset"] == "Dataset900_Ens" and info["inputs"][0]["trainer"] is None
    assert info["command"].startswith("nnunet_mtl ensemble -i ") and "--save_npz" in info["command"]
    assert "masks: 3/3 cases" in stdout and "classes benign, malignant, normal" in stdout


def test_per_fold_input_and_worker_processes(w, template, capsys):
    """A per-fold folder stands for its ensemble/; -np 2 runs nnU-Net's merge in a spawn pool; same masks."""
    per_fold = w / "RLAR"
    (per_fold / "fold_0").mkdir(parents=True)
    (per_fold / "fold_1").mkdir()
    shutil.copytree(w / "F2", per_fold / "ensemble")
    (per_fold / "per_fold.json").write_text(json.dumps({
        "written_by": "nnunet_mtl predict --per-fold", "folds": [0, 1], "trainer": "nnUNetTrainerRLAR",
        "plans": "nnUNetPlans", "configuration": "2d", "dataset": "Dataset900_Ens",
        "checkpoint": "checkpoint_final.pth",
        "subfolders": {"fold_0": {"folds": [0]}, "fold_1": {"folds": [1]},
                       "ensemble": {"folds": [0, 1], "command": "nnunet_mtl predict -f 0 1 ..."}}}))
    out = w / "deep" / "OUT"
    code = main(["ensemble", "-i", str(w / "F1"), str(per_fold), "-o", str(out), "-np", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert_masks_equal_nnunet(out, template / "REF", npz=False)
    info = json.loads((out / "ensemble.json").read_text())
    second = info["inputs"][1]
    assert second["folder"] == str((per_fold / "ensemble").resolve())
    assert second["trainer"] == "nnUNetTrainerRLAR" and second["folds"] == [0, 1] and second["configuration"] == "2d"
    assert "fold ensemble of per-fold folder" in stdout and "2 processes" in stdout


def test_masks_only_when_no_folder_has_class_predictions(w, template, capsys):
    for f in ("F1", "F2"):
        (w / f / "class_predictions.csv").unlink()
    out = w / "OUT"
    assert main(["ensemble", "-i", str(w / "F1"), str(w / "F2"), "-o", str(out), "-np", "1"]) == 0
    assert "masks only" in capsys.readouterr().out
    assert_masks_equal_nnunet(out, template / "REF", npz=False)
    assert not (out / "class_predictions.csv").exists()
    assert json.loads((out / "ensemble.json").read_text())["class_predictions"] is None


def test_rerun_into_the_same_output_replaces_it(w, template, capsys):
    argv = ["ensemble", "-i", str(w / "F1"), str(w / "F2"), "-o", str(w / "OUT"), "-np", "1", "--save_npz"]
    assert main(argv) == 0 and main(argv) == 0
    assert_masks_equal_nnunet(w / "OUT", template / "REF", npz=True)


def test_error_during_the_masks_leaves_nothing(w, monkeypatch, capsys):
    calls = []

    def failing(job):
        calls.append(job)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(job)
    real = ens._merge_job
    monkeypatch.setattr(ens, "_merge_job", failing)
    (w / "OLD").mkdir()
    (w / "OLD" / "notes.txt").write_text("keep")
    for out in (w / "NEW", w / "OLD"):
        before = snapshot(w)
        calls.clear()
        with pytest.raises(RuntimeError, match="disk full"):
            main(["ensemble", "-i", str(w / "F1"), str(w / "F2"), "-o", str(out), "-np", "1"])
        assert snapshot(w) == before, out


# ------------------------------------------------------------------------------------------------ the pure parts
def test_average_class_predictions(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_csv(a, {"x": (0.5, 0.5), "y": (1.0, 0.0)}, ["lo", "hi"])
    write_csv(b, {"y": (0.0, 1.0), "x": (0.25, 0.75)}, ["lo", "hi"])
    names, rows = ens.average_class_predictions([a, b])
    assert names == ["lo", "hi"]
    assert rows == [{"case_id": "x", "predicted_class": "hi", "prob_lo": "0.375000", "prob_hi": "0.625000"},
                    {"case_id": "y", "predicted_class": "lo", "prob_lo": "0.500000", "prob_hi": "0.500000"}]
    write_csv(c, {"x": (0.5, 0.5), "y": (1.0, 0.0)}, ["hi", "lo"])
    with pytest.raises(NnunetMtlError, match="same prob_<class> columns in the same order"):
        ens.average_class_predictions([a, c])
    write_csv(c, {"x": (0.5, 0.5)}, ["lo", "hi"])
    with pytest.raises(NnunetMtlError, match=f"case y has no row in {c}"):
        ens.average_class_predictions([a, c])


# ------------------------------------------------------------------------------------------------ bad inputs
def _drop_row(path: Path, case: str) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in lines if not line.startswith(case + ",")) + "\n")


def _swap_columns(path: Path) -> None:
    rows = read_rows(path)
    write_csv(path, {r["case_id"]: (float(r["prob_malignant"]), float(r["prob_benign"]), float(r["prob_normal"]))
                     for r in rows}, ["malignant", "benign", "normal"])


def _per_fold_without_ensemble(w: Path) -> Path:
    p = w / "PF"
    (p / "fold_0").mkdir(parents=True)
    (p / "fold_1").mkdir()
    (p / "per_fold.json").write_text(json.dumps({"folds": [0, 1], "subfolders": {"fold_0": {"folds": [0]},
                                                                                 "fold_1": {"folds": [1]}}}))
    return p


def _reshape_npz(path: Path) -> None:
    np.savez_compressed(path, probabilities=np.full((len(LABELS), 1, 8, 8), 1 / 3, dtype=np.float32))


def _relabel(path: Path) -> None:
    d = json.loads(path.read_text())
    d["labels"] = {"background": 0, "lesion": 1}
    path.write_text(json.dumps(d))


def _io(w, *inputs, out="OUT"):
    return ["ensemble", "-i", *(str(w / i) for i in inputs), "-o", str(w / out), "-np", "1"]


BAD = [
    ("folder-without-npz", lambda w: ([p.unlink() for p in (w / "F2").glob("*.npz")], _io(w, "F1", "F2"))[1],
     "F2 has no CASE.npz segmentation probabilities; expected a folder predicted with --save_probabilities"),
    ("case-without-mask", lambda w: ((w / "F2" / "case_b.png").unlink(), _io(w, "F1", "F2"))[1],
     "case case_b has no {w}/F2/case_b.png, but there is {w}/F1/case_b.png"),
    ("case-without-npz", lambda w: ((w / "F1" / "case_c.npz").unlink(), _io(w, "F1", "F2"))[1],
     "case case_c has no {w}/F1/case_c.npz (predicted partly without --save_probabilities?)"),
    ("case-without-csv-row", lambda w: (_drop_row(w / "F2" / "class_predictions.csv", "case_a"),
                                        _io(w, "F1", "F2"))[1],
     "case case_a has no row in {w}/F2/class_predictions.csv"),
    ("csv-columns-reordered", lambda w: (_swap_columns(w / "F2" / "class_predictions.csv"), _io(w, "F1", "F2"))[1],
     "same prob_<class> columns in the same order"),
    ("csv-in-one-folder-only", lambda w: ((w / "F2" / "class_predictions.csv").unlink(), _io(w, "F1", "F2"))[1],
     "F2 has no class_predictions.csv"),
    ("npz-shapes-differ", lambda w: (_reshape_npz(w / "F2" / "case_a.npz"), _io(w, "F1", "F2"))[1], "of shape"),
    ("npz-not-a-zip", lambda w: ((w / "F2" / "case_a.npz").write_text("x"), _io(w, "F1", "F2"))[1],
     "case_a.npz is not a readable .npz"),
    ("labels-differ", lambda w: (_relabel(w / "F2" / "dataset.json"), _io(w, "F1", "F2"))[1], "has labels"),
    ("no-dataset-json", lambda w: ((w / "F2" / "dataset.json").unlink(), _io(w, "F1", "F2"))[1],
     "dataset.json does not exist"),
    ("input-missing", lambda w: _io(w, "F1", "nope"), "input folder"),
    ("one-input", lambda w: _io(w, "F1"), "expected at least two"),
    ("same-input-twice", lambda w: _io(w, "F1", "F1"), "names"),
    ("o-is-input", lambda w: _io(w, "F1", "F2", out="F2"), "is one of the inputs"),
    ("o-is-file", lambda w: ((w / "OUT").write_text("x"), _io(w, "F1", "F2"))[1], "OUT is a file"),
    ("o-holds-other-cases", lambda w: ((w / "OUT").mkdir(), (w / "OUT" / "zzz.png").write_bytes(b"x"),
                                       _io(w, "F1", "F2"))[-1], "zzz.png"),
    ("o-stale-npz", lambda w: ((w / "OUT").mkdir(), (w / "OUT" / "case_a.npz").write_bytes(b"x"),
                               _io(w, "F1", "F2"))[-1], "without --save_npz"),
    ("o-mask-is-folder", lambda w: ((w / "OUT" / "case_a.png").mkdir(parents=True), _io(w, "F1", "F2"))[1],
     "case_a.png is a folder"),
    ("per-fold-without-ensemble", lambda w: (_per_fold_without_ensemble(w), _io(w, "F1", "PF"))[1],
     "without an ensemble/ subfolder"),
    ("np-zero", lambda w: _io(w, "F1", "F2")[:-1] + ["0"], "-np 0"),
]


@pytest.mark.parametrize("setup, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(w, capsys, setup, needle):
    argv = setup(w)
    before = snapshot(w)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("nnunet_mtl ensemble: error: "), err
    assert needle.format(w=w) in err, err
    assert snapshot(w) == before
