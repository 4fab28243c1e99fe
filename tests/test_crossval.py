"""nnunet_mtl crossval's parts without a training: merging the folds' class_predictions.csv, the stale-folder check,
the ranking. The command end to end runs in tests/test_readme.py (the README's cross-validation block)."""
from __future__ import annotations

import csv
import json

import pytest

from nnunet_mtl.cli.crossval import check_merged_masks
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.crossval import (crossval_folder_name, merge_fold_class_predictions, multitask_score,
                                            rank_models)

NAMES = ["benign", "malignant"]


def write_fold(model, k, rows, names=NAMES):
    folder = model / f"fold_{k}" / "validation"
    folder.mkdir(parents=True)
    with open(folder / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", *[f"prob_{n}" for n in names]])
        for case, p in rows:
            w.writerow([case, names[int(p[1] > p[0])], *[f"{v:.6f}" for v in p]])
    return folder


@pytest.fixture
def model(tmp_path):
    m = tmp_path / "Dataset900_X" / "nnUNetTrainerMTL__nnUNetPlans__2d"
    m.mkdir(parents=True)
    (m / "plans.json").write_text(json.dumps({"nnunet_mtl": {"class_labels": {"malignant": 1, "benign": 0}}}))
    write_fold(m, 0, [("a", (0.9, 0.1)), ("b", (0.2, 0.8))])
    write_fold(m, 1, [("c", (0.4, 0.6))])
    return m


def test_merge_takes_each_case_from_its_fold(model):
    merged = model / crossval_folder_name([0, 1])
    assert merged.name == "crossval_results_folds_0_1"
    path = merge_fold_class_predictions(model, [0, 1], merged)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["a", "b", "c"]
    assert [r["predicted_class"] for r in rows] == ["benign", "malignant", "malignant"]
    assert float(rows[2]["prob_malignant"]) == pytest.approx(0.6)
    # only the folds asked for
    path = merge_fold_class_predictions(model, [1], merged)
    with open(path) as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == ["c"]


@pytest.mark.parametrize("break_it, needle", [
    (lambda m: write_fold(m, 2, [("a", (0.5, 0.5))]), "case a is in the validation of fold 0 and of fold 2"),
    (lambda m: (m / "fold_2" / "validation").mkdir(parents=True), "fold 2's final validation to have run"),
    (lambda m: write_fold(m, 2, [("d", (1.0, 0.0, 0.0))], ["benign", "malignant", "normal"]), "from another model"),
    (lambda m: (m / "plans.json").write_text("{}"), "has no class labels"),
])
def test_merge_refuses_before_writing(model, break_it, needle):
    break_it(model)
    merged = model / "crossval_results_folds_0_1_2"
    with pytest.raises(NnunetMtlError, match=needle) as info:
        merge_fold_class_predictions(model, [0, 1, 2], merged)
    assert "\n" not in str(info.value) and not (merged / "class_predictions.csv").exists()


def test_a_stale_merged_folder_is_not_reused(model):
    for k, case in ((0, "a"), (1, "c")):
        (model / f"fold_{k}" / "validation" / f"{case}.png").write_bytes(b"mask " + case.encode())
    merged = model / "crossval_results_folds_0_1"
    merged.mkdir()
    (merged / "a.png").write_bytes(b"mask a")
    (merged / "c.png").write_bytes(b"mask c")
    check_merged_masks(model, [0, 1], merged, ".png")  # current: nothing said
    (model / "fold_1" / "validation" / "c.png").write_bytes(b"retrained")
    with pytest.raises(NnunetMtlError, match="differs from the fold's validation mask of c.png"):
        check_merged_masks(model, [0, 1], merged, ".png")
    (merged / "c.png").unlink()
    with pytest.raises(NnunetMtlError, match="lacks the mask of c.png"):
        check_merged_masks(model, [0, 1], merged, ".png")
    (merged / "z.png").write_bytes(b"x")
    (merged / "c.png").write_bytes(b"retrained")
    with pytest.raises(NnunetMtlError, match="has masks of no fold's validation, e.g. z.png"):
        check_merged_masks(model, [0, 1], merged, ".png")


def test_ranking_by_dice_or_multitask():
    rows = [{"model": "A", "dice": 0.80, "auc": 0.60}, {"model": "B", "dice": 0.78, "auc": 0.90},
            {"model": "C", "dice": None, "auc": 0.99}]
    for r in rows:
        r["multitask"] = multitask_score(r["dice"], r["auc"])
    assert rows[1]["multitask"] == pytest.approx(0.84) and rows[2]["multitask"] is None
    assert [r["model"] for r in rank_models(rows, "dice")] == ["A", "B", "C"]
    assert [r["model"] for r in rank_models(rows, "multitask")] == ["B", "A", "C"]
    assert multitask_score(0.5, float("nan")) is None
    with pytest.raises(NnunetMtlError, match="expected one of dice, multitask"):
        rank_models(rows, "auc")
