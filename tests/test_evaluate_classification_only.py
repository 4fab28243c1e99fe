"""nnunet_mtl evaluate / compare on a classification-only prediction folder: class_predictions.csv and no masks (what
nnunet_mtl predict writes for nnUNetTrainerClsOnly), plain and per-fold."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import compare as cmp
from nnunet_mtl.evaluation.aggregate import aggregate_summaries
from nnunet_mtl.evaluation.evaluate import evaluate_folder
from nnunet_mtl.evaluation.formatting import format_aggregate_table, format_per_fold_table, format_summary_table
from nnunet_mtl.evaluation.per_fold import short_summary_line

CLASSES = ("benign", "malignant")
CLASS_LABELS = {"benign": 0, "malignant": 1}
CASES = [f"{i:04d}" for i in range(8)]
TRUTH = [0, 1, 0, 1, 1, 0, 1, 0]
# P(malignant) per case: one fold's model, another's, and their ensemble (no ties, both classes wrong somewhere)
P1 = {"fold_0": [.20, .70, .60, .45, .90, .10, .80, .30],
      "fold_1": [.10, .65, .35, .80, .55, .40, .30, .20],
      "ensemble": [.15, .68, .48, .62, .72, .25, .55, .25]}


def _square(top, size=8, shape=(24, 24)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, 4:4 + size] = 1
    return m


def _write_class_predictions(path, p1, cases=CASES):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
        for c, p in zip(cases, p1):
            w.writerow([c, CLASSES[int(p > 0.5)], f"{1 - p:.6f}", f"{p:.6f}"])


@pytest.fixture
def world(tmp_path):
    """The raw dataset (labelsTs, cases.csv, dataset.json under nnUNet_raw/Dataset503_ClsOnly), a classification-only
    prediction folder cls/ (with one extra row of an image that is no reference case) and an empty folder."""
    ds = tmp_path / "raw" / "Dataset503_ClsOnly"
    (ds / "labelsTs").mkdir(parents=True)
    for i, c in enumerate(CASES):
        Image.fromarray(_square(4 + i % 3)).save(ds / "labelsTs" / f"{c}.png")
    with open(ds / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        w.writerows([c, "test", CLASSES[t], f"P{c}"] for c, t in zip(CASES, TRUTH))
    (ds / "dataset.json").write_text(json.dumps({"name": "ClsOnly", "class_labels": CLASS_LABELS}))
    cls = tmp_path / "cls"
    cls.mkdir()
    _write_class_predictions(cls / "class_predictions.csv", P1["ensemble"] + [0.9], CASES + ["9999"])
    (tmp_path / "empty").mkdir()
    return tmp_path


def _ds(world):
    return world / "raw" / "Dataset503_ClsOnly"


def _evaluate(world, pred, **kw):
    ds = _ds(world)
    kw.setdefault("class_predictions_csv", None)
    return evaluate_folder(pred, ds / "labelsTs", cases_csv=ds / "cases.csv", class_labels=CLASS_LABELS,
                           bootstrap=kw.pop("bootstrap", 200), **kw)


def _sklearn(p1):
    y, p = np.array(TRUTH), np.array(p1)
    pred = (p > 0.5).astype(int)
    return {"accuracy": accuracy_score(y, pred), "auc": roc_auc_score(y, p),
            "balanced_accuracy": balanced_accuracy_score(y, pred), "macro_f1": f1_score(y, pred, average="macro"),
            "brier": float(np.mean((p - y) ** 2))}


def _one_error_line(capsys, code, needle):
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


# ------------------------------------------------------------------------------------------------ plain folder
def test_plain_folder_is_scored_on_classification_only(world, capsys):
    out = world / "cls" / "evaluation"
    summary = _evaluate(world, world / "cls", output_dir=out)
    assert "9999" in capsys.readouterr().err  # the row without reference: ignored, with a warning line
    assert summary["segmentation"] is None and summary["num_cases"] == len(CASES)
    assert summary["ignored_predictions"] == ["9999"] and summary["missing_predictions"] == []
    cls = summary["classification"]
    for key, value in _sklearn(P1["ensemble"]).items():
        assert cls[key] == pytest.approx(value, abs=1e-6), key
    assert cls["num_cases"] == len(CASES) and cls["positive_class"] == "malignant"
    intervals = summary["confidence_intervals"]["intervals"]
    assert intervals and all(k.startswith("classification.") for k in intervals)
    low, high = intervals["classification.auc"]
    assert low <= cls["auc"] <= high
    assert any(n.startswith("classification only: no masks in ") for n in summary["notes"])
    assert "classification_only" in summary["definitions"] and "dice" not in summary["definitions"]
    assert json.loads((out / "summary.json").read_text())["segmentation"] is None
    with open(out / "per_case.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["case_id", "true_class", "predicted_class", "prob_benign", "prob_malignant", "brier"]
    assert [r["case_id"] for r in rows] == CASES
    assert float(rows[2]["brier"]) == pytest.approx((P1["ensemble"][2] - TRUTH[2]) ** 2, abs=1e-5)
    for name in ("confusion_matrix.png", "roc_curve.png", "reliability_diagram.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    table = format_summary_table(summary)
    assert "Segmentation: not evaluated (classification only" in table and "Classification (8 cases)" in table
    assert "Dice" not in table and "empty reference" not in table and "balanced accuracy" in table
    assert "Dice" not in short_summary_line(summary) and "classification only" in short_summary_line(summary)


def test_a_reference_case_without_a_row(world, capsys):
    ds = _ds(world)
    _write_class_predictions(world / "cls" / "class_predictions.csv", P1["fold_0"][1:], CASES[1:])
    with pytest.raises(NnunetMtlError, match=r"1 reference case\(s\) have no class prediction in .*: 0000; expected "
                                             r"one row per reference case"):
        _evaluate(world, world / "cls")
    summary = _evaluate(world, world / "cls", allow_missing=True)
    assert summary["missing_predictions"] == ["0000"] and summary["num_cases"] == 7
    assert summary["classification"]["num_cases"] == 7
    capsys.readouterr()
    code = main(["evaluate", "-pred", str(world / "cls"), "-ref", str(ds / "labelsTs"), "--cases",
                 str(ds / "cases.csv")])
    _one_error_line(capsys, code, "have no class prediction in")
    assert not (world / "cls" / "evaluation").exists()


@pytest.mark.parametrize("setup, extra, needle", [
    (lambda w: None, [], "has no CASE_ID.png masks and no class_predictions.csv; expected the masks and / or"),
    (lambda w: _write_class_predictions(w / "empty" / "class_predictions_part0.csv", P1["fold_0"]), [],
     "only class_predictions_part*.csv (from -num_parts)"),
    (lambda w: _write_class_predictions(w / "empty" / "class_predictions.csv", P1["fold_0"]), ["--no-cases"],
     "expected the reference classes: pass --cases or -d"),
    (lambda w: _write_class_predictions(w / "empty" / "class_predictions.csv", P1["fold_0"]), ["--attention"],
     "--attention: prediction folder"),
])
def test_a_folder_without_masks_and_usable_class_predictions_is_one_line(world, capsys, setup, extra, needle):
    ds = _ds(world)
    setup(world)
    cases = [] if "--no-cases" in extra else ["--cases", str(ds / "cases.csv")]
    argv = ["evaluate", "-pred", str(world / "empty"), "-ref", str(ds / "labelsTs"), *cases,
            *[e for e in extra if e != "--no-cases"]]
    err = _one_error_line(capsys, main(argv), needle)
    assert str(world / "empty") in err and err.startswith("nnunet_mtl evaluate: error: ")
    assert not (world / "empty" / "evaluation").exists()
    if not extra:
        with pytest.raises(NnunetMtlError, match="has no CASE_ID.png masks and no class_predictions.csv"):
            _evaluate(world, world / "empty")


def test_cli_with_a_dataset_id_prints_the_table(world, capsys, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(world / "raw"))
    assert main(["evaluate", "-pred", str(world / "cls"), "-d", "503", "-np", "4", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "note: -np 4 not used" in out and "capped" not in out
    assert "Segmentation: not evaluated (classification only" in out and "Classification (8 cases)" in out
    assert "AUC" in out and "Dice" not in out and "sensitivity (malignant)" in out
    assert f"wrote {world / 'cls' / 'evaluation' / 'summary.json'}" in out
    summary = json.loads((world / "cls" / "evaluation" / "summary.json").read_text())
    assert summary["segmentation"] is None
    assert summary["classification"]["auc"] == pytest.approx(_sklearn(P1["ensemble"])["auc"])


# ------------------------------------------------------------------------------------------------ per-fold folder
def _per_fold(world, with_json=True):
    pf = world / "perfold"
    for sub, p1 in P1.items():
        (pf / sub).mkdir(parents=True)
        _write_class_predictions(pf / sub / "class_predictions.csv", p1)
    if with_json:
        (pf / "per_fold.json").write_text(json.dumps({"folds": [0, 1], "subfolders": {
            "fold_0": {"folds": [0]}, "fold_1": {"folds": [1]}, "ensemble": {"folds": [0, 1]}}}))
    return pf


@pytest.mark.parametrize("with_json", [True, False])
def test_per_fold_folder_mean_std_over_folds_and_ensemble(world, capsys, monkeypatch, with_json):
    pf = _per_fold(world, with_json)
    monkeypatch.setenv("nnUNet_raw", str(world / "raw"))
    assert main(["evaluate", "-pred", str(pf), "-d", "503", "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((pf / "evaluation" / "per_fold_summary.json").read_text())
    metrics = result["mean_std_over_folds"]["metrics"]
    assert not [k for k in metrics if k.startswith("segmentation")]
    assert not [k for k in result["fold_ensemble"]["metrics"] if k.startswith("segmentation")]
    for key in ("accuracy", "auc", "macro_f1", "brier"):
        per_fold = [_sklearn(P1[f])[key] for f in ("fold_0", "fold_1")]
        m = metrics[f"classification.{key}"]
        assert m["values"] == pytest.approx(per_fold, abs=1e-6) and m["n"] == 2
        assert m["mean"] == pytest.approx(np.mean(per_fold), abs=1e-6)
        assert m["std"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-6)
        assert result["fold_ensemble"]["metrics"][f"classification.{key}"] == pytest.approx(
            _sklearn(P1["ensemble"])[key], abs=1e-6)
    assert result["positive_class"] == "malignant" and result["folds"]["fold_1"]["num_cases"] == len(CASES)
    for sub in P1:
        summary = json.loads((pf / sub / "evaluation" / "summary.json").read_text())
        assert summary["segmentation"] is None and summary["classification"]["num_cases"] == len(CASES)
    assert "accuracy" in printed and "AUC" in printed and "Dice" not in printed and " nan" not in printed
    assert "segmentation: not evaluated (classification only" in printed
    assert printed.count("classification only") >= 3  # the folds' and the ensemble's short lines
    assert format_per_fold_table(result) in printed
    with open(pf / "evaluation" / "per_fold_summary.csv", newline="") as f:
        assert {r["metric"] for r in csv.DictReader(f)} >= {"classification.accuracy", "classification.auc"}


def test_per_fold_folder_with_a_missing_row_writes_nothing(world, capsys):
    ds = _ds(world)
    pf = _per_fold(world)
    _write_class_predictions(pf / "fold_1" / "class_predictions.csv", P1["fold_1"][:-1], CASES[:-1])
    code = main(["evaluate", "-pred", str(pf), "-ref", str(ds / "labelsTs"), "--cases", str(ds / "cases.csv")])
    err = _one_error_line(capsys, code, "1 reference case(s) have no class prediction in")
    assert str(pf / "fold_1" / "class_predictions.csv") in err and "0007" in err
    assert not any(pf.rglob("evaluation"))


# ------------------------------------------------------------------------------------------------ aggregate
def test_aggregate_of_classification_only_summaries(world, capsys):
    paths = []
    for name in ("fold_0", "fold_1"):
        pred = world / name
        pred.mkdir()
        _write_class_predictions(pred / "class_predictions.csv", P1[name])
        _evaluate(world, pred, output_dir=pred / "evaluation")
        paths.append(pred / "evaluation" / "summary.json")
    agg = aggregate_summaries(paths)
    assert not [k for k in agg["metrics"] if k.startswith("segmentation")]
    accuracies = [_sklearn(P1[n])["accuracy"] for n in ("fold_0", "fold_1")]
    assert agg["metrics"]["classification.accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert agg["metrics"]["classification.accuracy"]["std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert any("classification only" in n for n in agg["notes"])
    table = format_aggregate_table(agg)
    assert "classification.auc" in table and "segmentation" not in table.split("note:")[0]
    capsys.readouterr()
    assert main(["evaluate", "--aggregate", *map(str, paths), "-o", str(world / "agg.json")]) == 0
    assert "classification.macro_f1" in capsys.readouterr().out and (world / "agg.json").is_file()
    # a file that is not a summary is still refused, segmentation null without classification too
    (world / "bad.json").write_text(json.dumps({"segmentation": None, "classification": None}))
    with pytest.raises(NnunetMtlError, match="bad.json has 'segmentation' null without a 'classification' block"):
        aggregate_summaries([paths[0], world / "bad.json"])
    (world / "other.json").write_text(json.dumps({"num_cases": 3}))
    with pytest.raises(NnunetMtlError, match="has no 'segmentation' block"):
        aggregate_summaries([world / "other.json"])


# ------------------------------------------------------------------------------------------------ compare
def _multitask_run(world, name="mtl", p1=None, classes=True):
    """A prediction folder with masks (and class predictions), evaluated."""
    ds = _ds(world)
    pred = world / name
    pred.mkdir()
    for i, c in enumerate(CASES):
        Image.fromarray(_square(4 + i % 3 + (i % 2))).save(pred / f"{c}.png")
    if classes:
        _write_class_predictions(pred / "class_predictions.csv", p1 or P1["fold_1"])
    evaluate_folder(pred, ds / "labelsTs", class_predictions_csv=pred / "class_predictions.csv" if classes else None,
                    cases_csv=ds / "cases.csv", class_labels=CLASS_LABELS, output_dir=pred / "evaluation",
                    bootstrap=0)
    return pred


def test_compare_classification_only_with_a_multitask_run(world, capsys, monkeypatch):
    _evaluate(world, world / "cls", output_dir=world / "cls" / "evaluation")
    mtl = _multitask_run(world)
    result = cmp.compare([world / "cls", mtl], cases_csv=_ds(world) / "cases.csv", n_resamples=200)
    rows = {r["metric"]: r for r in result["rows"]}
    assert list(rows) == ["accuracy", "auc", "brier"]
    assert rows["accuracy"]["mean_a"] == pytest.approx(_sklearn(P1["ensemble"])["accuracy"])
    assert rows["accuracy"]["mean_b"] == pytest.approx(_sklearn(P1["fold_1"])["accuracy"])
    assert rows["auc"]["mean_a"] == pytest.approx(_sklearn(P1["ensemble"])["auc"], abs=1e-6)
    assert any("segmentation not compared for" in n and str(world / "cls") in n for n in result["notes"])
    capsys.readouterr()
    out = world / "cmp"
    monkeypatch.setenv("nnUNet_raw", str(world / "raw"))
    assert main(["compare", str(mtl), str(world / "cls"), "-d", "503", "-o", str(out), "--n-resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "AUC" in printed and "Dice" not in printed
    assert "note: segmentation not compared for" in printed
    with open(out / "comparison.csv", newline="") as f:
        assert [r["metric"] for r in csv.DictReader(f)] == ["accuracy", "auc", "brier"]


def test_compare_classification_only_with_a_segmentation_only_run_is_one_line(world, capsys):
    _evaluate(world, world / "cls", output_dir=world / "cls" / "evaluation")
    seg = _multitask_run(world, "seg", classes=False)
    capsys.readouterr()
    code = main(["compare", str(world / "cls"), str(seg), "-o", str(world / "cmp"), "--n-resamples", "200"])
    err = _one_error_line(capsys, code, "share no metric")
    assert str(world / "cls") in err and not (world / "cmp").exists()
