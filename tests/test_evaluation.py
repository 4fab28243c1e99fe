"""Evaluation: segmentation metrics (Dice, IoU, HD95 vs brute force), classification metrics vs hand values,
folder evaluation, aggregation and the ``nnunet_mtl evaluate`` command."""
import csv
import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.classification import classification_metrics
from nnunet_mtl.evaluation.aggregate import aggregate_summaries
from nnunet_mtl.evaluation.evaluate import evaluate_folder
from nnunet_mtl.evaluation.formatting import format_aggregate_table, format_summary_table
from nnunet_mtl.evaluation.inputs import load_class_labels, read_cases_table
from nnunet_mtl.evaluation.segmentation import case_metrics, dice_iou, hd95
from tests.file_helpers import square, write_png

CLASS_LABELS = {"benign": 0, "malignant": 1}


# ------------------------------------------------------------------------------------------------ segmentation
def test_dice_iou_by_hand():
    pred = np.zeros((6, 6), bool)
    ref = np.zeros((6, 6), bool)
    pred[1:3, 1:3] = True  # 4 px
    ref[1:3, 1:4] = True   # 6 px, contains pred
    dice, iou = dice_iou(pred, ref)
    assert dice == pytest.approx(2 * 4 / (4 + 6))
    assert iou == pytest.approx(4 / 6)
    pred2 = np.zeros((6, 6), bool)
    pred2[4:6, 4:6] = True  # disjoint from ref
    assert dice_iou(pred2, ref) == (0.0, 0.0)


def test_empty_mask_conventions():
    empty = np.zeros((10, 20), np.uint8)
    lesion = empty.copy()
    lesion[2:5, 3:9] = 1
    both = case_metrics(empty, empty, (0.5, 2.0))
    assert (both["dice"], both["iou"], both["hd95_px"], both["hd95_mm"]) == (1.0, 1.0, 0.0, 0.0)
    for pred, ref in ((empty, lesion), (lesion, empty)):
        m = case_metrics(pred, ref, (0.5, 2.0))
        assert (m["dice"], m["iou"]) == (0.0, 0.0)
        assert m["hd95_px"] == pytest.approx(math.hypot(10, 20))  # image diagonal
        assert m["hd95_mm"] == pytest.approx(math.hypot(10 * 0.5, 20 * 2.0))
    assert case_metrics(lesion, empty)["ref_empty"] and case_metrics(empty, lesion)["pred_empty"]
    assert math.isnan(case_metrics(lesion, lesion)["hd95_mm"])  # no spacing -> no mm value


def test_hd95_single_pixels_by_hand():
    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert hd95(a, b) == pytest.approx(5.0)
    assert hd95(a, b, (2.0, 1.0)) == pytest.approx(math.hypot(6.0, 4.0))


def _brute_boundary(mask):
    # independent of scipy's erosion: a foreground pixel with a 4-neighbour that is background or outside the image
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _brute_hd95(pred, ref, spacing):
    p = np.argwhere(_brute_boundary(pred)) * np.asarray(spacing)
    r = np.argwhere(_brute_boundary(ref)) * np.asarray(spacing)
    d = cdist(p, r)
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def _random_shape(rng, shape):
    from scipy.ndimage import gaussian_filter
    field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(2, 5))
    mask = field > np.quantile(field, rng.uniform(0.6, 0.95))
    return mask


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 0.7), (0.3, 1.1), (2.0, 0.45)])
def test_hd95_matches_brute_force_on_random_shapes(spacing):
    rng = np.random.default_rng(int(spacing[0] * 100 + spacing[1] * 10))
    for _ in range(8):
        shape = tuple(rng.integers(24, 64, size=2))
        pred, ref = _random_shape(rng, shape), _random_shape(rng, shape)
        expected = _brute_hd95(pred, ref, spacing)
        assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        m = case_metrics(pred.astype(np.uint8), ref.astype(np.uint8), spacing)
        assert m["hd95_mm"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert m["hd95_px"] == pytest.approx(_brute_hd95(pred, ref, (1.0, 1.0)), rel=1e-9, abs=1e-9)


def test_hd95_is_the_max_of_the_directed_percentiles_not_pooled():
    # pred = ref plus a far-away small blob: the directed pred->ref distances have a heavy tail that a pooled
    # percentile (medpy) would dilute with the ref->pred zeros
    ref = np.zeros((40, 40), bool)
    ref[5:25, 5:25] = True
    pred = ref.copy()
    pred[34:38, 34:38] = True
    p = np.argwhere(_brute_boundary(pred))
    r = np.argwhere(_brute_boundary(ref))
    d = cdist(p, r)
    pooled = np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95)
    directed = np.percentile(d.min(axis=1), 95)
    assert hd95(pred, ref) == pytest.approx(directed)
    assert hd95(pred, ref) > pooled + 1


# ------------------------------------------------------------------------------------------------ classification
def test_binary_classification_by_hand():
    y_true = [0, 0, 1, 1, 1]
    y_pred = [0, 1, 1, 1, 0]
    p1 = np.array([0.1, 0.6, 0.8, 0.7, 0.4])
    m = classification_metrics(y_true, y_pred, np.stack([1 - p1, p1], axis=1), ["benign", "malignant"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # benign one-vs-rest: TP case 0, FN case 1, FP case 4, TN cases 2, 3 -> sensitivity 1/2, specificity 2/3
    assert m["per_class"]["benign"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "auc_ovr": 5 / 6, "sensitivity": 0.5,
         "specificity": 2 / 3})
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["malignant"]["recall"] == pytest.approx(2 / 3)
    # malignant, the positive class: TP cases 2, 3, FN case 4, FP case 1, TN case 0
    assert m["positive_class"] == "malignant"
    assert (m["sensitivity"], m["specificity"], m["precision"], m["f1"]) == pytest.approx((2 / 3, 1 / 2, 2 / 3, 2 / 3))
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # positives {0.8, 0.7, 0.4} vs negatives {0.1, 0.6}: 5 of 6 pairs ordered correctly
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == {"labels": ["benign", "malignant"], "matrix": [[1, 1], [1, 2]]}
    assert m["notes"] == []


def test_three_class_classification_by_hand():
    from sklearn.metrics import roc_auc_score
    y_true = [0, 1, 2, 0, 1, 2]
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6],
                      [0.3, 0.4, 0.3], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    y_pred = probs.argmax(axis=1)  # [0, 1, 2, 1, 0, 2]
    m = classification_metrics(y_true, y_pred, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class one-vs-rest AUCs counted by hand: 7/8, 6.5/8 (one tie), 8/8
    assert [m["per_class"][n]["auc_ovr"] for n in "abc"] == pytest.approx([7 / 8, 6.5 / 8, 1.0])
    assert m["auc"] == pytest.approx((7 / 8 + 6.5 / 8 + 1.0) / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["confusion_matrix"]["matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]


def test_auc_undefined_is_nan_with_a_note():
    m = classification_metrics([1, 1, 1], [1, 0, 1], np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]),
                               ["benign", "malignant"])
    assert math.isnan(m["auc"]) and "only class 'malignant'" in m["notes"][0]
    assert m["accuracy"] == pytest.approx(2 / 3)
    three = classification_metrics([0, 0], [0, 2], np.array([[0.8, 0.1, 0.1], [0.3, 0.2, 0.5]]), ["a", "b", "c"])
    assert math.isnan(three["auc"]) and three["notes"]
    # one class absent from the reference: OvR macro over the two that have both sides, noted
    partial = classification_metrics([0, 1, 0, 1], [0, 1, 0, 0],
                                     np.array([[.6, .3, .1], [.2, .7, .1], [.5, .4, .1], [.5, .2, .3]]),
                                     ["a", "b", "c"])
    # a: positives {.6, .5} vs negatives {.2, .5} -> 3.5/4 (one tie); b: {.7, .2} vs {.3, .4} -> 2/4
    assert partial["auc"] == pytest.approx((3.5 / 4 + 2 / 4) / 2)
    assert "c" in partial["notes"][0]
    assert math.isnan(partial["per_class"]["c"]["precision"]) and partial["per_class"]["c"]["support"] == 0


# ------------------------------------------------------------------------------------------------ folders
@pytest.fixture
def folders(tmp_path):
    """Three reference cases with zero-padded ids, predictions for them plus one without reference."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    cases = {  # case: (pred mask, ref mask, class, spacing row, spacing col, probabilities)
        "000012": (square(4, 4, 8), square(4, 4, 8), "benign", "0.5", "0.5", (0.9, 0.1)),
        "000013": (square(4, 4, 8), square(4, 8, 8), "malignant", "0.2", "0.4", (0.3, 0.7)),
        "000100": (np.zeros((32, 32)), square(10, 10, 6), "malignant", "", "", (0.6, 0.4)),
    }
    for case, (p, r, *_rest) in cases.items():
        write_png(pred / f"{case}.png", p)
        write_png(ref / f"{case}.png", r)
    write_png(pred / "999999.png", square(0, 0, 3))  # no reference: ignored with a warning
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id", "spacing_row_mm", "spacing_col_mm"])
        for case, (_p, _r, cls, sr, sc, _pr) in cases.items():
            w.writerow([case, "test", cls, f"P{case}", sr, sc])
    with open(pred / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
        for case, (*_x, probs) in cases.items():
            w.writerow([case, "benign" if probs[0] > probs[1] else "malignant", *probs])
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "X", "class_labels": CLASS_LABELS}))
    return tmp_path


def test_evaluate_folder_writes_per_case_and_summary(folders, capsys):
    out = folders / "eval"
    summary = evaluate_folder(folders / "pred", folders / "ref", class_predictions_csv=folders / "pred" /
                              "class_predictions.csv", cases_csv=folders / "cases.csv", class_labels=CLASS_LABELS,
                              output_dir=out)
    assert "999999" in capsys.readouterr().err  # the warning line about the prediction without reference
    assert summary["num_cases"] == 3 and summary["ignored_predictions"] == ["999999"]
    # dice: identical -> 1; 8x8 squares shifted by 4 columns -> 2*32/128 = 0.5; empty prediction -> 0
    assert summary["segmentation"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary["segmentation"]["dice"]["median"] == pytest.approx(0.5)
    assert summary["segmentation"]["iou"]["mean"] == pytest.approx((1 + 32 / 96 + 0) / 3)
    assert summary["segmentation"]["empty_prediction_cases"] == 1
    assert summary["segmentation"]["cases_with_spacing"] == 2
    # shifted squares: boundaries 4 columns apart -> hd95 = 4 px (95th percentile of directed distances)
    with open(out / "per_case.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["000012", "000013", "000100"]  # zero padding kept
    assert float(rows["000012"]["hd95_mm"]) == 0.0
    assert float(rows["000013"]["hd95_px"]) == pytest.approx(hd95(square(4, 4, 8) > 0, square(4, 8, 8) > 0))
    assert float(rows["000013"]["hd95_mm"]) == pytest.approx(
        hd95(square(4, 4, 8) > 0, square(4, 8, 8) > 0, (0.2, 0.4)))
    assert float(rows["000100"]["hd95_px"]) == pytest.approx(math.hypot(32, 32)) and rows["000100"]["hd95_mm"] == ""
    assert rows["000100"]["true_class"] == "malignant" and rows["000100"]["predicted_class"] == "benign"
    assert float(rows["000013"]["prob_malignant"]) == pytest.approx(0.7)
    cls = summary["classification"]
    assert cls["accuracy"] == pytest.approx(2 / 3) and cls["auc"] == pytest.approx(1.0)
    assert cls["confusion_matrix"]["matrix"] == [[1, 0], [1, 1]]
    on_disk = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert on_disk["segmentation"]["dice"] == summary["segmentation"]["dice"]
    assert "MONAI" in on_disk["definitions"]["hd95_px"]
    assert (out / "confusion_matrix.png").stat().st_size > 0 and (out / "roc_curve.png").stat().st_size > 0
    table = format_summary_table(summary)
    assert "Dice" in table and "benign" in table and "Confusion matrix" in table


def test_evaluate_folder_in_parallel_gives_the_same_numbers(folders):
    one = evaluate_folder(folders / "pred", folders / "ref", cases_csv=folders / "cases.csv")
    two = evaluate_folder(folders / "pred", folders / "ref", cases_csv=folders / "cases.csv", num_processes=2)
    assert one["segmentation"] == two["segmentation"]
    assert one["classification"] is None and "Classification: not evaluated" in format_summary_table(one)


def test_no_spacing_gives_null_hd95_mm(folders):
    summary = evaluate_folder(folders / "pred", folders / "ref")
    assert summary["segmentation"]["hd95_mm"] is None
    assert "n/a" in format_summary_table(summary)


def test_missing_prediction_names_the_case(folders):
    (folders / "pred" / "000013.png").unlink()
    with pytest.raises(NnunetMtlError, match="000013") as info:
        evaluate_folder(folders / "pred", folders / "ref")
    assert "\n" not in str(info.value)
    summary = evaluate_folder(folders / "pred", folders / "ref", allow_missing=True)
    assert summary["num_cases"] == 2 and summary["missing_predictions"] == ["000013"]


def test_missing_class_prediction_names_the_case(folders):
    csv_path = folders / "pred" / "class_predictions.csv"
    csv_path.write_text("\n".join(line for line in csv_path.read_text().splitlines() if "000012" not in line))
    with pytest.raises(NnunetMtlError, match="000012"):
        evaluate_folder(folders / "pred", folders / "ref", class_predictions_csv=csv_path,
                        cases_csv=folders / "cases.csv", class_labels=CLASS_LABELS)


def test_read_cases_table_keeps_ids_and_parses_spacing(folders):
    table = read_cases_table(folders / "cases.csv")
    assert list(table) == ["000012", "000013", "000100"]
    assert table["000013"] == {"class": "malignant", "spacing": (0.2, 0.4), "patient_id": "P000013"}
    assert table["000100"]["spacing"] is None
    assert read_cases_table(folders / "cases.csv", CLASS_LABELS) == table


def _rewrite_case(path, case, column, value):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["case_id"] == case:
            row[column] = value
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("column, value, needle", [
    ("spacing_row_mm", "abc", r"case 000013\): spacing_row_mm 'abc' is not a positive number"),
    ("spacing_col_mm", "-1", r"spacing_col_mm '-1'"),
    ("case_id", "000012", r"duplicate case_id '000012'"),
])
def test_bad_cases_csv_is_one_line_naming_the_file(folders, column, value, needle):
    path = folders / "cases.csv"
    _rewrite_case(path, "000013", column, value)
    with pytest.raises(NnunetMtlError, match=needle) as info:
        evaluate_folder(folders / "pred", folders / "ref", cases_csv=path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_class_outside_class_labels_is_checked_only_when_they_are_given(folders):
    path = folders / "cases.csv"
    _rewrite_case(path, "000013", "class", "cyst")
    assert read_cases_table(path)["000013"]["class"] == "cyst"  # segmentation only: any class name goes
    with pytest.raises(NnunetMtlError, match=r"class 'cyst' is not in class_labels") as info:
        evaluate_folder(folders / "pred", folders / "ref", class_predictions_csv=folders / "pred" /
                        "class_predictions.csv", cases_csv=path, class_labels=CLASS_LABELS)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_load_class_labels(folders, tmp_path):
    assert load_class_labels(folders / "dataset.json") == CLASS_LABELS
    bare = tmp_path / "labels.json"
    bare.write_text(json.dumps(CLASS_LABELS))
    assert load_class_labels(bare) == CLASS_LABELS
    for text, needle in (('{"name": "X"}', "has no 'class_labels'"), ("{not json", "not valid JSON"),
                         ('{"class_labels": {"a": 0, "b": 2}}', "not 0..1")):
        bare.write_text(text)
        with pytest.raises(NnunetMtlError, match=needle) as info:
            load_class_labels(bare)
        assert str(bare) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(NnunetMtlError, match="does not exist"):
        load_class_labels(tmp_path / "missing.json")


def test_aggregate_two_summaries(tmp_path):
    paths = []
    for i, (dice, auc) in enumerate(((0.8, 0.9), (0.6, None))):
        s = {"num_cases": 10, "segmentation": {"dice": {"mean": dice, "std": 0.1, "median": dice}, "hd95_mm": None},
             "classification": {"accuracy": 0.5 + i * 0.1, "auc": auc,
                                "confusion_matrix": {"labels": ["a", "b"], "matrix": [[1, 2], [3, 4]]}}}
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(s))
    agg = aggregate_summaries(paths, output_path=tmp_path / "agg.json")
    dice = agg["metrics"]["segmentation.dice.mean"]
    assert dice["mean"] == pytest.approx(0.7) and dice["std"] == pytest.approx(math.sqrt(0.02)) and dice["n"] == 2
    # one run defines AUC: no std, no t-based interval (later additions only add keys)
    assert agg["metrics"]["classification.auc"] == {"mean": 0.9, "std": None, "n": 1, "values": [0.9, None],
                                                    "ci95": None}
    assert any("one run only have no std and no 95% CI" in n for n in agg["notes"])
    assert agg["metrics"]["segmentation.hd95_mm"]["n"] == 0
    assert not any("confusion" in k for k in agg["metrics"])
    assert json.loads((tmp_path / "agg.json").read_text())["num_runs"] == 2
    assert "0.7000 ± 0.1414" in format_aggregate_table(agg)
    for text, needle in (("[1]", "not a JSON object; expected a summary.json"), ("{}", "no 'segmentation' block")):
        paths[1].write_text(text)
        with pytest.raises(NnunetMtlError, match=needle) as info:
            aggregate_summaries(paths)
        assert str(paths[1]) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_evaluate_prints_table_and_writes_files(folders, capsys):
    pred = folders / "pred"
    code = main(["evaluate", "-pred", str(pred), "-ref", str(folders / "ref"), "--cases", str(folders / "cases.csv"),
                 "--class-labels", str(folders / "dataset.json")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Dice" in out and "balanced accuracy" in out  # class_predictions.csv in -pred was picked up
    assert (pred / "evaluation" / "summary.json").is_file() and str(pred / "evaluation" / "per_case.csv") in out


def test_cli_masks_without_class_predictions_say_why_classification_is_not_evaluated(folders, tmp_path, capsys):
    """A folder of masks only (nnUNetv2_predict's, or nnUNetv2_apply_postprocessing's output) is scored for
    segmentation, with a note that names the missing CSV and the way to give it."""
    import shutil
    masks_only = tmp_path / "postprocessed"
    shutil.copytree(folders / "pred", masks_only, ignore=shutil.ignore_patterns("*.csv", "evaluation"))
    args = ["evaluate", "-pred", str(masks_only), "-ref", str(folders / "ref"), "--cases", str(folders / "cases.csv"),
            "--class-labels", str(folders / "dataset.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "has masks but no class_predictions.csv: classification not evaluated" in out and "--classes" in out
    assert json.loads((masks_only / "evaluation" / "summary.json").read_text())["classification"] is None
    # given with --classes, the unprocessed folder's CSV is evaluated and the note is gone
    assert main([*args, "--classes", str(folders / "pred" / "class_predictions.csv"), "-o", str(tmp_path / "e")]) == 0
    assert "classification not evaluated" not in capsys.readouterr().out
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["classification"] is not None


def test_cli_dataset_id_and_aggregate(folders, tmp_path, capsys, monkeypatch):
    raw = tmp_path / "raw"
    ds = raw / "Dataset501_Test"
    ds.mkdir(parents=True)
    (folders / "ref").rename(ds / "labelsTs")
    (folders / "cases.csv").rename(ds / "cases.csv")
    (folders / "dataset.json").rename(ds / "dataset.json")
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert main(["evaluate", "-pred", str(folders / "pred"), "-d", "501", "-o", str(tmp_path / "e1")]) == 0
    assert json.loads((tmp_path / "e1" / "summary.json").read_text())["classification"]["auc"] == pytest.approx(1.0)
    summary = str(tmp_path / "e1" / "summary.json")
    capsys.readouterr()
    assert main(["evaluate", "--aggregate", summary, summary, "-o", str(tmp_path / "agg.json")]) == 0
    assert "segmentation.dice.mean" in capsys.readouterr().out and (tmp_path / "agg.json").is_file()


@pytest.mark.parametrize("argv", [
    ["evaluate", "-pred", "/nonexistent/pred", "-ref", "/nonexistent/ref"],
    ["evaluate", "--aggregate", "/nonexistent/summary.json"],
])
def test_cli_bad_path_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/nonexistent/" in err


# ------------------------------------------------------------------------------------------------ weighted metrics
EXISTING_CLASSIFICATION_KEYS = ["num_cases", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall",
                                "macro_f1", "auc", "per_class", "confusion_matrix", "notes"]
WEIGHTED = ("weighted_precision", "weighted_recall", "weighted_f1")


def test_weighted_metrics_by_hand():
    # support: a 3, b 2, c 1
    # a: predicted {0, 1} both right -> P 1, R 2/3, F1 0.8; b: predicted {2, 3}, 3 right -> P 1/2, R 1/2, F1 1/2;
    # c: predicted {4, 5}, 5 right -> P 1/2, R 1, F1 2/3
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    probs = np.eye(3)[y_pred] * 0.7 + 0.1
    m = classification_metrics(y_true, y_pred, probs, ["a", "b", "c"])
    assert m["weighted_precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert m["weighted_recall"] == pytest.approx((3 * 2 / 3 + 2 * 0.5 + 1 * 1) / 6)
    assert m["weighted_recall"] == pytest.approx(m["accuracy"])  # support-weighted recall is accuracy
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["macro_precision"] == pytest.approx(2 / 3)  # unweighted, for contrast: the two differ here
    # a class predicted but absent from the reference has weight 0 (macro counts it with precision 0)
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], np.full((4, 3), 1 / 3), ["a", "b", "c"])
    assert m["weighted_precision"] == pytest.approx(1.0) and m["macro_precision"] == pytest.approx(2 / 3)
    assert m["weighted_recall"] == pytest.approx(0.75)
    assert m["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 3), (2, 5)])
def test_weighted_metrics_match_sklearn(seed, k):
    from sklearn.metrics import f1_score, precision_recall_fscore_support
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, 40)
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, k, 40))
    y_pred[:2] = k - 1  # the last class always predicted, maybe never in the reference
    probs = rng.dirichlet(np.ones(k), 40)
    m = classification_metrics(y_true, y_pred, probs, [f"c{i}" for i in range(k)])
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    assert (m["weighted_precision"], m["weighted_recall"], m["weighted_f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))


def test_weighted_metrics_are_added_without_changing_the_existing_keys():
    y_true, y_pred = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
    p1 = np.array([0.1, 0.6, 0.8, 0.7, 0.4])
    m = classification_metrics(y_true, y_pred, np.stack([1 - p1, p1], axis=1), ["benign", "malignant"])
    # later additions (MCC, Brier, ECE and its reliability table: tests/test_metrics.py; the positive class's
    # sensitivity, specificity, precision and F1) only add keys
    assert sorted(m) == sorted(EXISTING_CLASSIFICATION_KEYS + list(WEIGHTED) + ["mcc", "brier", "ece", "reliability"]
                               + ["positive_class", "sensitivity", "specificity", "precision", "f1"])
    assert all(type(m[w]) is float for w in WEIGHTED)
    from nnunet_mtl.evaluation.classification import DEFINITIONS
    assert "weighted" in DEFINITIONS["weighted_precision_recall_f1"] and "support" in DEFINITIONS[
        "weighted_precision_recall_f1"]


def test_weighted_metrics_in_summary_table_and_aggregate(folders):
    summary = evaluate_folder(folders / "pred", folders / "ref", class_predictions_csv=folders / "pred" /
                              "class_predictions.csv", cases_csv=folders / "cases.csv", class_labels=CLASS_LABELS,
                              output_dir=folders / "eval")
    on_disk = json.loads((folders / "eval" / "summary.json").read_text())
    # reference benign, malignant, malignant; predicted benign, malignant, benign:
    # benign P 1/2 R 1 F1 2/3 (support 1); malignant P 1 R 1/2 F1 2/3 (support 2)
    assert on_disk["classification"]["weighted_precision"] == pytest.approx((1 * 0.5 + 2 * 1) / 3)
    assert on_disk["classification"]["weighted_recall"] == pytest.approx(2 / 3)
    assert on_disk["classification"]["weighted_f1"] == pytest.approx(2 / 3)
    assert "weighted_precision_recall_f1" in on_disk["definitions"]
    table = format_summary_table(summary)
    assert "weighted precision" in table and "weighted recall" in table and "weighted F1" in table
    agg = aggregate_summaries([folders / "eval" / "summary.json"] * 2)
    assert agg["metrics"]["classification.weighted_f1"]["mean"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------------ never overwrite
def test_aggregate_refuses_to_write_over_an_input(folders, capsys):
    evaluate_folder(folders / "pred", folders / "ref", output_dir=folders / "e1")
    evaluate_folder(folders / "pred", folders / "ref", output_dir=folders / "e2")
    s1, s2 = folders / "e1" / "summary.json", folders / "e2" / "summary.json"
    before = s2.read_bytes()
    capsys.readouterr()
    for target in (str(s2), str(folders / "e2" / ".." / "e2" / "summary.json")):
        code = main(["evaluate", "--aggregate", str(s1), str(s2), "-o", target])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "one of the summaries" in err and "summary.json" in err
        assert s2.read_bytes() == before
    with pytest.raises(NnunetMtlError, match="is a folder"):
        aggregate_summaries([s1, s2], output_path=folders / "e2")
    assert sorted(p.name for p in (folders / "e2").iterdir()) == ["per_case.csv", "summary.json"]


def test_json_and_csv_are_written_atomically(tmp_path):
    from nnunet_mtl.atomic import write_csv, write_json
    path = tmp_path / "out.json"
    write_json({"a": float("nan"), "b": 1}, path)
    assert json.loads(path.read_text()) == {"a": None, "b": 1}
    with pytest.raises(TypeError):
        write_json({"a": {1, 2}}, path)  # not serializable: fails before anything replaces the file
    assert json.loads(path.read_text()) == {"a": None, "b": 1}

    class Boom(dict):
        def get(self, *a):
            raise RuntimeError("interrupted")
    with pytest.raises(Exception):
        write_csv([{"x": 1}, Boom()], ["x"], tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()
    write_csv([{"x": 1, "y": 2}], ["x"], tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines() == ["x", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "t.csv"]  # no temporary file left


def test_evaluate_output_folder_is_never_an_input_folder(folders, capsys):
    for target in ("pred", "ref"):
        before = sorted(p.name for p in (folders / target).iterdir())
        code = main(["evaluate", "-pred", str(folders / "pred"), "-ref", str(folders / "ref"), "-o",
                     str(folders / target)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "is the input folder" in err
        assert sorted(p.name for p in (folders / target).iterdir()) == before


# ---------------------------------------------------------------------------------------- unannotated references
def _box_label(top, left, size, shape=(32, 32)):
    """A box annotation as the contract stores it: nnU-Net's ignore label 2 inside the box, 0 outside."""
    return square(top, left, size, shape) * 2


@pytest.fixture
def partial(folders):
    """The three cases of ``folders`` plus three whose references are not outlined: 'box01' (2 inside a box),
    'none01' (all 2) and 'tbl01' (a 0 / 1 map that cases.csv says is a box); cases.csv gets a mask column."""
    pred, ref = folders / "pred", folders / "ref"
    extra = {"box01": (square(4, 4, 8), _box_label(3, 3, 10), "malignant", (0.2, 0.8), "box"),
             "none01": (square(4, 4, 8), np.full((32, 32), 2), "benign", (0.7, 0.3), "none"),
             "tbl01": (np.zeros((32, 32)), square(4, 4, 8), "benign", (0.4, 0.6), "box")}
    for case, (p, r, *_rest) in extra.items():
        write_png(pred / f"{case}.png", p)
        write_png(ref / f"{case}.png", r)
    with open(folders / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["mask"] = "full"
    rows += [{"case_id": c, "split": "train", "class": k, "patient_id": f"P{c}", "spacing_row_mm": "0.5",
              "spacing_col_mm": "0.5", "mask": m} for c, (_p, _r, k, _pr, m) in extra.items()]
    with open(folders / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(pred / "class_predictions.csv", "a", newline="") as f:
        w = csv.writer(f)
        for case, (*_x, probs, _m) in extra.items():
            w.writerow([case, "benign" if probs[0] > probs[1] else "malignant", *probs])
    (folders / "dataset.json").write_text(json.dumps({"name": "X", "class_labels": CLASS_LABELS,
                                                      "labels": {"background": 0, "lesion": 1, "ignore": 2}}))
    return folders


def _evaluate_partial(root, **kw):
    return evaluate_folder(root / "pred", root / "ref", class_predictions_csv=root / "pred" / "class_predictions.csv",
                           cases_csv=root / "cases.csv", class_labels=CLASS_LABELS, output_dir=root / "eval",
                           bootstrap=200, **kw)


def test_unannotated_references_are_left_out_of_segmentation_only(partial, capsys):
    summary = _evaluate_partial(partial)
    err = capsys.readouterr().err
    seg = summary["segmentation"]
    # the three annotated cases as in test_evaluate_folder_writes_per_case_and_summary, nothing of the others
    assert seg["dice"]["mean"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert seg["iou"]["mean"] == pytest.approx((1 + 32 / 96 + 0) / 3)
    assert (seg["annotated_cases"], seg["unannotated_cases"]) == (3, 3)
    assert seg["empty_prediction_cases"] == 1 and seg["empty_reference_cases"] == 0
    assert summary["unannotated_references"] == [
        {"case_id": "box01", "kind": "box", "source": "label map"},
        {"case_id": "none01", "kind": "none", "source": "label map"},
        {"case_id": "tbl01", "kind": "box", "source": "cases.csv"}]
    # classification keeps every case: 6 cases, the three new ones right, right, wrong
    cls = summary["classification"]
    assert cls["num_cases"] == 6 and summary["num_cases"] == 6
    assert cls["accuracy"] == pytest.approx(4 / 6)
    note = next(n for n in summary["notes"] if "unannotated" in n)
    assert "3 unannotated reference(s) (box 2, none 1" in note and "box01, none01, tbl01" in note
    assert "kept in classification" in note and note in err
    with open(partial / "eval" / "per_case.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 6
    for case in ("box01", "none01", "tbl01"):
        assert all(rows[case][m] == "" for m in ("dice", "iou", "hd95_px", "hd95_mm", "nsd_px", "nsd_mm"))
        assert rows[case]["true_class"] and rows[case]["prob_malignant"]
    assert rows["box01"]["reference_mask"] == "box" and rows["000012"]["reference_mask"] == "full"
    # the bootstrap resamples the annotated cases' values only
    low, high = summary["confidence_intervals"]["intervals"]["segmentation.dice.mean"]
    assert 0 <= low <= seg["dice"]["mean"] <= high <= 1
    table = format_summary_table(summary)
    assert "Segmentation (3 of 6 cases: 3 unannotated reference(s) left out)" in table
    assert "box 2, none 1" in table
    assert "ignore label" in summary["definitions"]["unannotated_references"]


def test_a_two_is_never_lesion_even_without_a_case_table(partial):
    summary = evaluate_folder(partial / "pred", partial / "ref", bootstrap=0)
    # without cases.csv only the label maps say it: tbl01 (0 / 1) now counts, the two maps with 2 do not
    assert [e["case_id"] for e in summary["unannotated_references"]] == ["box01", "none01"]
    assert summary["segmentation"]["annotated_cases"] == 4
    assert summary["segmentation"]["dice"]["mean"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_only_unannotated_references_give_no_segmentation_numbers(partial):
    for case in ("000012", "000013", "000100", "tbl01"):
        (partial / "ref" / f"{case}.png").unlink()
        (partial / "pred" / f"{case}.png").unlink()
    summary = evaluate_folder(partial / "pred", partial / "ref", bootstrap=100)
    assert summary["segmentation"]["dice"] is None and summary["segmentation"]["annotated_cases"] == 0
    assert "segmentation.dice.mean" not in summary["confidence_intervals"]["intervals"]
    assert "n/a (unannotated)" in format_summary_table(summary)


@pytest.mark.parametrize("label, needle", [
    (square(4, 4, 8) * 3, r"has values \[0, 3\]; expected 0 \(background\), 1 \(lesion\) and 2"),
    (square(4, 4, 8) + _box_label(20, 20, 4), r"has lesion \(1\) and ignore \(2\) pixels"),
])
def test_a_reference_with_other_values_is_one_error(folders, label, needle):
    write_png(folders / "ref" / "000013.png", label)
    with pytest.raises(NnunetMtlError, match=needle) as info:
        evaluate_folder(folders / "pred", folders / "ref", bootstrap=0)
    assert str(folders / "ref" / "000013.png") in str(info.value) and "\n" not in str(info.value)


def test_per_fold_evaluation_of_a_cross_validation_with_unannotated_references(partial, capsys):
    pf = partial / "pf"
    import shutil
    for sub in ("fold_0", "fold_1"):
        shutil.copytree(partial / "pred", pf / sub)
    assert main(["evaluate", "-pred", str(pf), "-ref", str(partial / "ref"), "--cases", str(partial / "cases.csv"),
                 "--class-labels", str(partial / "dataset.json"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    fold = json.loads((pf / "fold_0" / "evaluation" / "summary.json").read_text())
    assert [e["case_id"] for e in fold["unannotated_references"]] == ["box01", "none01", "tbl01"]
    result = json.loads((pf / "evaluation" / "per_fold_summary.json").read_text())
    assert result["mean_std_over_folds"]["metrics"]["segmentation.dice.mean"]["mean"] == pytest.approx(0.5)
    assert result["mean_std_over_folds"]["metrics"]["num_cases"]["mean"] == 6
    assert "mean ± std over 2 folds" in out


def test_a_training_folds_validation_is_scored_against_its_own_cases_of_labelsTr(folders, tmp_path, monkeypatch,
                                                                                   capsys):
    """nnU-Net's fold_K/validation holds a fold's cases only: `evaluate -pred fold_K/validation -d D` reads them from
    splits_final.json and takes labelsTr, no flag needed; a validation case without a prediction is still an error."""
    raw, pre = tmp_path / "raw" / "Dataset502_Val", tmp_path / "pre" / "Dataset502_Val"
    pre.mkdir(parents=True)
    raw.mkdir(parents=True)
    (folders / "ref").rename(raw / "labelsTr")
    write_png(raw / "labelsTr" / "000200.png", square(2, 2, 5))   # a case of the other fold
    (folders / "cases.csv").rename(raw / "cases.csv")
    (folders / "dataset.json").rename(raw / "dataset.json")
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["000012", "000013", "000100"], "val": ["000200"]},
                                                       {"train": ["000200"], "val": ["000012", "000013", "000100"]}]))
    validation = tmp_path / "res" / "Dataset502_Val" / "nnUNetTrainerMTL__nnUNetPlans__2d" / "fold_1" / "validation"
    validation.parent.mkdir(parents=True)
    (folders / "pred").rename(validation)
    (validation / "999999.png").unlink()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["evaluate", "-pred", str(validation), "-d", "502"]) == 0
    summary = json.loads((validation / "evaluation" / "summary.json").read_text())
    assert summary["num_cases"] == 3 and summary["inputs"]["ref_dir"].endswith("labelsTr")
    assert any("training fold's validation: evaluated against its 3 validation cases (fold 1's val list in"
               in n for n in summary["notes"])
    (validation / "000013.png").unlink()
    capsys.readouterr()
    assert main(["evaluate", "-pred", str(validation), "-d", "502", "--overwrite"]) != 0
    assert "1 reference case(s) have no prediction" in capsys.readouterr().err


def test_roc_says_which_class_has_no_curve_and_why():
    """One-vs-rest ROC with a class absent from the reference (a test set without normal images): the legend names
    it instead of leaving it out silently."""
    from nnunet_mtl.evaluation.plots import roc_figure
    y = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.5, 0.4, 0.1]])
    fig = roc_figure(y, probs, ["benign", "malignant", "normal"])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[:2] == ["benign (AUC 1.000)", "malignant (AUC 1.000)"]
    assert texts[2] == "normal: no ROC (no normal case in the reference)"
    fig = roc_figure(np.array([1, 1]), np.array([[0.3, 0.7], [0.4, 0.6]]), ["benign", "malignant"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "malignant: no ROC (every case is malignant)"]


def test_intervals_over_few_folds_stay_in_the_metrics_range_and_counts_get_none(tmp_path):
    """Three folds with a wide spread: the t interval of Dice would start below 0 and AUC's end above 1 (t(0.975, 2)
    = 4.30); both are clipped and marked, a note says why; support and num_cases have no interval; an interval
    inside the range is left as it is."""
    from nnunet_mtl.evaluation.aggregate import aggregate_summaries, metric_range, t_interval
    from nnunet_mtl.evaluation.formatting import format_aggregate_table
    paths = []
    for k, (dice, auc, mcc, support) in enumerate([(0.05, 0.99, -0.9, 10), (0.60, 0.50, 0.2, 14),
                                                   (0.10, 0.97, -0.5, 12)]):
        summary = {"num_cases": support, "segmentation": {"dice": {"mean": dice, "std": 0.1},
                                                          "hd95_px": {"mean": 3.0 + k}},
                   "classification": {"auc": auc, "mcc": mcc, "accuracy": 0.70 + 0.01 * k,
                                      "per_class": {"benign": {"support": support}}}}
        paths.append(tmp_path / f"s{k}.json")
        paths[-1].write_text(json.dumps(summary))
    agg = aggregate_summaries(paths)
    m = agg["metrics"]
    raw_dice = t_interval([0.05, 0.60, 0.10])
    assert raw_dice[0] < 0 and m["segmentation.dice.mean"]["ci95"] == [0.0, pytest.approx(min(1.0, raw_dice[1]))]
    assert m["segmentation.dice.mean"]["ci95_clipped"] is True
    assert m["classification.auc"]["ci95"][1] == 1.0 and m["classification.auc"]["ci95_clipped"]
    assert m["classification.mcc"]["ci95"][0] == -1.0
    accuracy = m["classification.accuracy"]
    assert accuracy["ci95"] == pytest.approx(t_interval([0.70, 0.71, 0.72])) and "ci95_clipped" not in accuracy
    for count in ("num_cases", "classification.per_class.benign.support"):
        assert m[count]["ci95"] is None and m[count]["std"] == pytest.approx(2.0)
    assert any("clipped to it" in n and "4.30" in n for n in agg["notes"])
    assert any("no 95% CI" in n and "num_cases" in n for n in agg["notes"])
    table = format_aggregate_table(agg)
    assert "[0.0000, " in table and "]*" in table and "clipped to the metric's range" in table
    assert metric_range("segmentation.hd95_mm.median") == (0.0, math.inf) and metric_range("foo.bar") is None
