"""NSD, MCC, Brier score, ECE, the reliability diagram and the bootstrap confidence intervals of ``nnunet_mtl
evaluate``: hand-made examples, brute force, scikit-learn, scipy and MONAI (a test-time cross-check only)."""
import csv
import json
import math
import time

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation import segmentation as seg_metrics
from nnunet_mtl.evaluation.classification import (classification_metrics, ece_bin_index,
                                                  expected_calibration_error, per_case_brier, reliability_bins,
                                                  resampled_metrics)
from nnunet_mtl.evaluation.aggregate import aggregate_summaries
from nnunet_mtl.evaluation.bootstrap import bootstrap_intervals
from nnunet_mtl.evaluation.evaluate import check_evaluation_output, evaluate_folder
from nnunet_mtl.evaluation.formatting import format_per_fold_table, format_summary_table
from nnunet_mtl.evaluation.shared import OUTPUT_FILES, SEG_METRICS
from nnunet_mtl.evaluation.segmentation import case_metrics, nsd
from tests.file_helpers import square, write_png

CLASS_LABELS = {"benign": 0, "malignant": 1}


# ------------------------------------------------------------------------------------------------ NSD by hand
def _lines():
    """ref: row 5, columns 2..11 (10 px); pred: row 8, columns 2..16 (15 px). Thin lines are all boundary.

    Every ref pixel is 3 rows from pred; pred pixels in columns 2..11 are 3 from ref, columns 12..16 are
    sqrt(9 + 1), sqrt(9 + 4), sqrt(9 + 9), sqrt(9 + 16) = 5 and sqrt(9 + 25) from ref's end (5, 11).
    """
    ref = np.zeros((12, 20), bool)
    pred = np.zeros((12, 20), bool)
    ref[5, 2:12] = True
    pred[8, 2:17] = True
    return pred, ref


@pytest.mark.parametrize("tol, expected", [(2.9, 0 / 25), (3.0, 20 / 25), (3.5, 21 / 25), (4.0, 22 / 25),
                                           (4.9, 23 / 25), (5.0, 24 / 25), (6.0, 25 / 25)])
def test_nsd_of_two_lines_by_hand(tol, expected):
    pred, ref = _lines()
    assert nsd(pred, ref, tol) == pytest.approx(expected)
    assert nsd(ref, pred, tol) == pytest.approx(expected)  # symmetric


def test_nsd_in_mm_with_anisotropic_spacing_by_hand():
    # rows 0.5 mm, columns 0.25 mm: 3 rows = 1.5 mm; pred's overhang at 1, 2, 3, 4, 5 columns:
    # hypot(1.5, 0.25 k) = 1.521, 1.581, 1.677, 1.803, 1.953 mm
    pred, ref = _lines()
    spacing = (0.5, 0.25)
    for tol, expected in ((1.5, 20 / 25), (1.55, 21 / 25), (1.6, 22 / 25), (1.9, 24 / 25), (2.0, 1.0)):
        assert nsd(pred, ref, tol, spacing) == pytest.approx(expected)
        m = case_metrics(pred.astype(np.uint8), ref.astype(np.uint8), spacing, nsd_tolerance_mm=tol)
        assert m["nsd_mm"] == pytest.approx(expected)
    assert case_metrics(pred, ref, spacing, nsd_tolerance_px=4.0)["nsd_px"] == pytest.approx(22 / 25)


def test_nsd_distance_exactly_at_the_tolerance_counts_despite_rounding():
    # 3 px * 0.1 mm is 0.30000000000000004 in floating point; a boundary exactly 0.3 mm away is within 0.3 mm
    pred, ref = _lines()
    assert 3 * 0.1 > 0.3
    m = case_metrics(pred, ref, (0.1, 0.1), nsd_tolerance_mm=0.3)
    assert m["nsd_mm"] == pytest.approx(20 / 25)
    assert nsd(pred, ref, 0.3, (0.1, 0.1)) == pytest.approx(20 / 25)  # the anisotropic path (own transform) too


def test_nsd_empty_mask_conventions():
    empty = np.zeros((10, 12), np.uint8)
    lesion = empty.copy()
    lesion[2:6, 3:8] = 1
    assert nsd(empty, empty, 2.0) == 1.0
    assert nsd(empty, lesion, 2.0) == 0.0 and nsd(lesion, empty, 2.0) == 0.0
    both = case_metrics(empty, empty, (0.5, 0.5))
    assert (both["nsd_px"], both["nsd_mm"]) == (1.0, 1.0)
    one = case_metrics(empty, lesion, (0.5, 0.5))
    assert (one["nsd_px"], one["nsd_mm"]) == (0.0, 0.0)
    assert math.isnan(case_metrics(lesion, lesion)["nsd_mm"])  # no spacing -> no mm value
    assert case_metrics(lesion, lesion)["nsd_px"] == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        nsd(lesion, lesion, -1.0)


def _brute_boundary(mask):
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _brute_nsd(pred, ref, tol, spacing):
    p = np.argwhere(_brute_boundary(pred)) * np.asarray(spacing)
    r = np.argwhere(_brute_boundary(ref)) * np.asarray(spacing)
    d = cdist(p, r)
    return (np.sum(d.min(axis=1) <= tol) + np.sum(d.min(axis=0) <= tol)) / (len(p) + len(r))


def _random_shape(rng, shape):
    from scipy.ndimage import gaussian_filter
    field = gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(2, 5))
    return field > np.quantile(field, rng.uniform(0.6, 0.95))


def _random_pairs(seed, count=6):
    """Independent random shapes (low NSD) and a shape against itself shifted and grown a little (NSD near 1)."""
    from scipy.ndimage import binary_dilation
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(rng.integers(24, 56, size=2))
        ref = _random_shape(rng, shape)
        yield _random_shape(rng, shape), ref
        yield binary_dilation(np.roll(ref, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))), ref


@pytest.mark.parametrize("spacing, tol", [((1.0, 1.0), 2.0), ((1.0, 1.0), 1.5), ((0.3, 1.1), 1.7), ((0.1, 0.1), 1.0)])
def test_nsd_matches_brute_force_on_random_shapes(spacing, tol):
    for pred, ref in _random_pairs(int(tol * 10)):
        assert nsd(pred, ref, tol, spacing) == pytest.approx(_brute_nsd(pred, ref, tol * (1 + 1e-9), spacing))


def _monai_nsd(pred, ref, tol, spacing):
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")

    def onehot(mask):
        m = torch.as_tensor(np.asarray(mask, bool))
        return torch.stack([~m, m]).unsqueeze(0).float()  # [B=1, C=2 (background, lesion), H, W]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks
        value = metrics.compute_surface_dice(onehot(pred), onehot(ref), class_thresholds=[tol],
                                             spacing=list(spacing))
    return float(value[0, 0])


@pytest.mark.parametrize("spacing, tol", [((1.0, 1.0), 2.0), ((1.0, 1.0), 1.5), ((1.0, 1.0), 3.0),
                                          ((0.3, 1.1), 1.7), ((0.5, 0.5), 1.0)])
def test_nsd_matches_monai_compute_surface_dice(spacing, tol):
    for pred, ref in _random_pairs(int(tol * 10) + 1):
        assert nsd(pred, ref, tol, spacing) == pytest.approx(_monai_nsd(pred, ref, tol, spacing), abs=1e-6)
    pred, ref = _lines()
    assert nsd(pred, ref, 3.0) == pytest.approx(_monai_nsd(pred, ref, 3.0, (1.0, 1.0)), abs=1e-6)
    # a lesion touching the image border: the border is boundary for both (MONAI pads before its erosion)
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[0:8, 0:9] = True
    b[0:10, 2:12] = True
    assert nsd(a, b, tol, spacing) == pytest.approx(_monai_nsd(a, b, tol, spacing), abs=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.3, 1.1)])
def test_hd95_and_nsd_share_monais_boundaries(spacing):
    """HD95 on the same boundaries and distances as NSD agrees with MONAI's HausdorffDistance(percentile=95)."""
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")

    def onehot(mask):
        m = torch.as_tensor(np.asarray(mask, bool))
        return torch.stack([~m, m]).unsqueeze(0).float()
    import warnings
    for pred, ref in _random_pairs(7, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a deprecation inside MONAI 1.6
            expected = float(metrics.compute_hausdorff_distance(onehot(pred), onehot(ref), percentile=95,
                                                                spacing=list(spacing))[0, 0])
        assert seg_metrics.hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-6)


def test_nsd_empty_conventions_differ_from_monai_only_when_both_are_empty():
    empty = np.zeros((16, 16), bool)
    lesion = empty.copy()
    lesion[4:9, 5:11] = True
    assert math.isnan(_monai_nsd(empty, empty, 2.0, (1.0, 1.0))) and nsd(empty, empty, 2.0) == 1.0
    assert _monai_nsd(empty, lesion, 2.0, (1.0, 1.0)) == 0.0 == nsd(empty, lesion, 2.0)
    assert _monai_nsd(lesion, empty, 2.0, (1.0, 1.0)) == 0.0 == nsd(lesion, empty, 2.0)


def test_nsd_definitions_state_the_tolerances():
    d = seg_metrics.definitions(3.0, 0.5)
    assert "tau = 3 px" in d["nsd_px"] and "tau = 0.5 mm" in d["nsd_mm"] and "Nikolov" in d["nsd_px"]
    assert "both empty -> 1" in d["nsd_px"] and "MONAI: NaN" in d["nsd_px"]
    assert "tau = 2 px" in seg_metrics.DEFINITIONS["nsd_px"] and "tau = 1 mm" in seg_metrics.DEFINITIONS["nsd_mm"]


# ------------------------------------------------------------------------------------------------ MCC, Brier
def test_mcc_by_hand_and_against_sklearn():
    from sklearn.metrics import matthews_corrcoef
    # confusion [[1, 1], [1, 2]]: (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2)
    y_true, y_pred = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(y_true, y_pred, probs, ["benign", "malignant"])
    assert m["mcc"] == pytest.approx(1 / 6)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 50)
    yp = np.where(rng.random(50) < 0.5, y, rng.integers(0, 4, 50))
    m = classification_metrics(y, yp, rng.dirichlet(np.ones(4), 50), list("abcd"))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, yp))
    # undefined (one class predicted) -> 0, as sklearn
    assert classification_metrics([0, 1, 1], [1, 1, 1], np.full((3, 2), 0.5), ["a", "b"])["mcc"] == 0.0


def test_brier_binary_and_multiclass_by_hand_and_against_sklearn():
    from sklearn.metrics import brier_score_loss
    y_true = [0, 0, 1, 1, 1]
    p1 = np.array([0.1, 0.6, 0.8, 0.7, 0.4])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y_true, probs.argmax(1), probs, ["benign", "malignant"])
    # (0.1^2 + 0.6^2 + 0.2^2 + 0.3^2 + 0.6^2) / 5
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.04 + 0.09 + 0.36) / 5)
    assert m["brier"] == pytest.approx(brier_score_loss(y_true, p1))
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    m3 = classification_metrics([0, 1, 2], [0, 1, 2], three, ["a", "b", "c"])
    # (0.09 + 0.04 + 0.01) + (0.01 + 0.04 + 0.01) + (0.04 + 0.04 + 0.16), over 3 cases
    assert m3["brier"] == pytest.approx((0.14 + 0.06 + 0.24) / 3)
    assert m3["brier"] == pytest.approx(brier_score_loss([0, 1, 2], three, labels=[0, 1, 2]))
    assert per_case_brier([0, 1, 2], three) == pytest.approx([0.14, 0.06, 0.24])


# ------------------------------------------------------------------------------------------------ ECE
# binary, p(malignant) = 0.9, 0.92, 0.3, 0.55, 0.97; reference 1, 0, 0, 1, 1
# top label: confidence 0.9, 0.92, 0.7, 0.55, 0.97, predicted 1, 1, 0, 1, 1, correct 1, 0, 1, 1, 1
# 15 bins of 1/15: 0.9 and 0.92 in (13/15, 14/15]: accuracy 0.5, confidence 0.91 -> 2/5 * 0.41 = 0.164
#                  0.7 in (10/15, 11/15]: 1/5 * 0.3 = 0.06; 0.55 in (8/15, 9/15]: 1/5 * 0.45 = 0.09;
#                  0.97 in (14/15, 1]: 1/5 * 0.03 = 0.006                               ECE = 0.32
# 2 bins: all in (0.5, 1]: accuracy 4/5, confidence 4.04/5 -> ECE 0.008
ECE_Y = [1, 0, 0, 1, 1]
ECE_P1 = np.array([0.9, 0.92, 0.3, 0.55, 0.97])
ECE_PROBS = np.stack([1 - ECE_P1, ECE_P1], axis=1)


def test_ece_by_hand():
    assert expected_calibration_error(ECE_Y, ECE_PROBS) == pytest.approx(0.32)
    assert expected_calibration_error(ECE_Y, ECE_PROBS, n_bins=2) == pytest.approx(0.008)
    table = reliability_bins(ECE_Y, ECE_PROBS)
    assert table["n_bins"] == 15 and sum(table["count"]) == 5
    assert table["count"][13] == 2 and table["accuracy"][13] == pytest.approx(0.5)
    assert table["mean_confidence"][13] == pytest.approx(0.91)
    assert math.isnan(table["accuracy"][0])  # an empty bin
    m = classification_metrics(ECE_Y, ECE_PROBS.argmax(1), ECE_PROBS, ["benign", "malignant"])
    assert m["ece"] == pytest.approx(0.32) and m["reliability"]["ece"] == m["ece"]
    assert classification_metrics(ECE_Y, ECE_PROBS.argmax(1), ECE_PROBS, ["b", "m"], ece_bins=2)["ece"] == \
        pytest.approx(0.008)


def test_ece_bins_are_right_closed():
    assert ece_bin_index([0.0, 0.5, 0.5000001, 1.0], 2).tolist() == [0, 0, 1, 1]
    assert ece_bin_index([1 / 3, 0.34, 2 / 3, 0.99], 3).tolist() == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="bins"):
        ece_bin_index([0.5], 0)


def _ece_loop(y, probs, n_bins):
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for m in range(n_bins):
        lo, hi = m / n_bins, (m + 1) / n_bins
        inside = [i for i in range(len(y)) if (lo < conf[i] <= hi) or (m == 0 and conf[i] == 0)]
        if inside:
            acc = np.mean([pred[i] == y[i] for i in inside])
            total += len(inside) / len(y) * abs(acc - np.mean(conf[inside]))
    return total


@pytest.mark.parametrize("k, n_bins", [(2, 15), (3, 15), (5, 10)])
def test_ece_matches_a_loop_over_bins(k, n_bins):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 80)
    probs = rng.dirichlet(np.ones(k) * 0.5, 80)
    assert expected_calibration_error(y, probs, n_bins) == pytest.approx(_ece_loop(y, probs, n_bins))


# ------------------------------------------------------------------------------------------------ resampled metrics
@pytest.mark.parametrize("k", [2, 3, 5])
def test_resampled_metrics_equal_the_metrics_of_the_repeated_cases(k):
    """Weight w = the case taken w times: checked against classification_metrics (sklearn) on repeated rows."""
    rng = np.random.default_rng(10 + k)
    n = 40
    y = rng.integers(0, k, n)
    probs = np.round(rng.dirichlet(np.ones(k), n), 1)  # rounded: tied scores
    probs[:, 0] += 1 - probs.sum(axis=1)
    y_pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    names = [f"c{i}" for i in range(k)]
    weights = np.vstack([np.ones(n), rng.integers(0, 4, (5, n))])
    got = resampled_metrics(weights, y, y_pred, probs)
    for b, w in enumerate(weights):
        rows = np.repeat(np.arange(n), w.astype(int))
        expected = classification_metrics(y[rows], y_pred[rows], probs[rows], names)
        for key in cls_metrics.RESAMPLED_METRICS:
            assert got[key][b] == pytest.approx(expected[key], nan_ok=True), (key, b)


def test_resampled_auc_and_mcc_match_sklearn_sample_weight():
    from sklearn.metrics import matthews_corrcoef, roc_auc_score
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    p1 = np.round(rng.random(60), 1)
    probs = np.stack([1 - p1, p1], axis=1)
    w = rng.integers(0, 5, 60).astype(float)
    got = resampled_metrics(w[None], y, probs.argmax(1), probs)
    assert got["auc"][0] == pytest.approx(roc_auc_score(y, p1, sample_weight=w))
    assert got["mcc"][0] == pytest.approx(matthews_corrcoef(y, probs.argmax(1), sample_weight=w))
    # one class only among the weighted cases: AUC undefined
    only = np.where(y == 1, 1.0, 0.0)
    assert math.isnan(resampled_metrics(only[None], y, probs.argmax(1), probs)["auc"][0])


# ------------------------------------------------------------------------------------------------ bootstrap
def _seg_values(n, rng):
    return {m: rng.random(n) for m in SEG_METRICS}


def test_image_bootstrap_equals_scipy_on_the_per_case_values():
    from scipy.stats import bootstrap
    rng = np.random.default_rng(0)
    seg = _seg_values(40, rng)
    block = bootstrap_intervals(seg, [None] * 40, n_resamples=500, seed=7)
    assert block["ci_unit"] == "image" and block["num_units"] == 40 and block["method"] == "percentile"
    ref = bootstrap((seg["dice"],), np.mean, n_resamples=500, method="percentile", rng=np.random.default_rng(7))
    assert block["intervals"]["segmentation.dice.mean"] == pytest.approx(
        [ref.confidence_interval.low, ref.confidence_interval.high])


def test_patient_bootstrap_resamples_patients_with_all_their_images():
    """Replays scipy's draws of the units (rng.integers(0, U, (B, U))) by hand: a drawn patient brings all its
    images, a metric is computed on the pooled images of the drawn patients."""
    rng = np.random.default_rng(1)
    patients = [f"P{i}" for i in (0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 5, 6, 7, 7, 8, 9)]  # 16 images of 10 patients
    n = len(patients)
    seg = _seg_values(n, rng)
    seg["hd95_mm"][[0, 5]] = np.nan  # two images without a spacing
    y = rng.integers(0, 2, n)
    probs = rng.dirichlet(np.ones(2), n)
    cls = (np.arange(n), y, probs.argmax(1), probs)
    block = bootstrap_intervals(seg, patients, classification=cls, n_resamples=400, seed=3)
    assert block["ci_unit"] == "patient" and block["num_units"] == 10 and block["num_cases"] == n

    unit = np.array([int(p[1:]) for p in patients])  # P0..P9 in order of first appearance
    draws = np.random.default_rng(3).integers(0, 10, (400, 10))
    dice, hd_mm, acc, brier = [], [], [], []
    for row in draws:
        images = np.concatenate([np.flatnonzero(unit == u) for u in row])
        dice.append(seg["dice"][images].mean())
        hd_mm.append(np.nanmean(seg["hd95_mm"][images]))
        acc.append(np.mean(probs[images].argmax(1) == y[images]))
        brier.append(np.mean((probs[images, 1] - y[images]) ** 2))
    for key, values in (("segmentation.dice.mean", dice), ("segmentation.hd95_mm.mean", hd_mm),
                        ("classification.accuracy", acc), ("classification.brier", brier)):
        assert block["intervals"][key] == pytest.approx(np.quantile(values, [0.025, 0.975])), key


def test_bootstrap_is_seeded_and_bca_works():
    rng = np.random.default_rng(2)
    seg = _seg_values(30, rng)
    a = bootstrap_intervals(seg, [None] * 30, n_resamples=300, seed=0)
    b = bootstrap_intervals(seg, [None] * 30, n_resamples=300, seed=0)
    c = bootstrap_intervals(seg, [None] * 30, n_resamples=300, seed=1)
    assert a == b and a["intervals"] != c["intervals"]
    bca = bootstrap_intervals(seg, [None] * 30, n_resamples=300, seed=0, method="BCa")
    low, high = bca["intervals"]["segmentation.dice.mean"]
    assert low < seg["dice"].mean() < high and bca["method"] == "BCa"


def test_bootstrap_notes_undefined_resamples_and_too_few_units():
    y = np.array([0, 1, 1, 1, 1, 1])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    block = bootstrap_intervals(_seg_values(6, np.random.default_rng(0)), [None] * 6,
                                classification=(np.arange(6), y, probs.argmax(1), probs), n_resamples=200, seed=0)
    undefined = block["undefined_resamples"]["classification.auc"]  # resamples without the one benign case
    assert 0 < undefined < 200 and any("classification.auc" in n and "one class only" in n for n in block["notes"])
    assert block["intervals"]["classification.auc"] is not None
    one = bootstrap_intervals(_seg_values(2, np.random.default_rng(0)), ["P1", "P1"], n_resamples=100)
    assert one["intervals"]["segmentation.dice.mean"] is None and "at least two" in one["notes"][0]


def test_bootstrap_of_500_cases_is_fast():
    rng = np.random.default_rng(4)
    n = 500
    seg = _seg_values(n, rng)
    y = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    start = time.perf_counter()
    block = bootstrap_intervals(seg, [f"P{i // 2}" for i in range(n)], classification=(np.arange(n), y,
                                probs.argmax(1), probs), n_resamples=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert block["ci_unit"] == "patient" and all(v is not None for v in block["intervals"].values())
    assert elapsed < 5.0, f"bootstrap of 500 cases x 1000 resamples took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------------ folders, CLI
@pytest.fixture
def patients(tmp_path):
    """Eight images of four patients (two each), spacing 0.1 mm, two classes."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    rows, probs = [], []
    for i in range(8):
        case = f"case{i}"
        write_png(ref / f"{case}.png", square(6, 6, 12))
        write_png(pred / f"{case}.png", square(6, 6 + i % 4, 12))  # shifted by 0..3 columns
        cls = "malignant" if i % 3 else "benign"
        p = 0.2 + 0.1 * i
        rows.append([case, "test", cls, f"P{i // 2}", "0.1", "0.1"])
        probs.append([case, "malignant" if p > 0.5 else "benign", f"{1 - p:.6f}", f"{p:.6f}"])
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id", "spacing_row_mm", "spacing_col_mm"])
        w.writerows(rows)
    with open(pred / "class_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
        w.writerows(probs)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "X", "class_labels": CLASS_LABELS}))
    return tmp_path


def _evaluate(root, out="eval", **kw):
    return evaluate_folder(root / "pred", root / "ref", class_predictions_csv=root / "pred" / "class_predictions.csv",
                           cases_csv=root / "cases.csv", class_labels=CLASS_LABELS, output_dir=root / out, **kw)


def test_evaluate_folder_reports_the_new_metrics_with_intervals(patients):
    summary = _evaluate(patients)
    seg, cls, ci = summary["segmentation"], summary["classification"], summary["confidence_intervals"]
    # 12x12 squares shifted by k columns: every boundary pixel is within k px of the other boundary
    # -> NSD@2px is 1 for k <= 2; k = 3: hand-count via nsd()
    shifted3 = nsd(square(6, 9, 12), square(6, 6, 12), 2.0)
    assert seg["nsd_px"]["mean"] == pytest.approx((1 + 1 + 1 + shifted3) / 4)
    assert seg["nsd_mm"]["mean"] == pytest.approx(1.0)  # 3 px * 0.1 mm = 0.3 mm, within 1 mm
    assert {"mcc", "brier", "ece"} <= set(cls)
    assert ci["ci_unit"] == "patient" and ci["num_units"] == 4 and ci["num_cases"] == 8
    assert ci["n_resamples"] == 1000 and ci["seed"] == 0
    for key in ("segmentation.dice.mean", "segmentation.nsd_px.mean", "segmentation.hd95_mm.mean",
                "classification.accuracy", "classification.mcc", "classification.brier", "classification.ece"):
        low, high = ci["intervals"][key]
        assert low <= high
    low, high = ci["intervals"]["segmentation.dice.mean"]
    assert low <= seg["dice"]["mean"] <= high
    assert summary["settings"] == {"nsd_tolerance_px": 2.0, "nsd_tolerance_mm": 1.0, "ece_bins": 15,
                                   "bootstrap_resamples": 1000, "bootstrap_seed": 0, "bootstrap_method": "percentile"}
    defs = summary["definitions"]
    assert "tau = 2 px" in defs["nsd_px"] and "tau = 1 mm" in defs["nsd_mm"]
    for key, cite in (("mcc", "Matthews 1975"), ("brier", "Brier 1950"), ("ece", "Guo et al. 2017"),
                      ("ece", "15 equal-width bins"), ("confidence_intervals", "patient")):
        assert cite in defs[key]
    out = patients / "eval"
    assert (out / "reliability_diagram.png").stat().st_size > 0
    with open(out / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"nsd_px", "nsd_mm", "brier"} <= set(rows[0])
    assert float(rows[1]["brier"]) == pytest.approx((0.3 - 1) ** 2)  # case1: malignant, p = 0.3
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["confidence_intervals"] == ci
    table = format_summary_table(summary)
    dice_line = next(line for line in table.splitlines() if line.strip().startswith("Dice"))
    assert f"[{ci['intervals']['segmentation.dice.mean'][0]:.4f}, " in dice_line
    for label in ("NSD@2px", "NSD@1mm", "MCC", "Brier score", "ECE (15 bins)", "95% CI",
                  "resamples of patients (4 patients, 8 images)"):
        assert label in table


def test_options_change_tolerances_bins_and_bootstrap(patients):
    summary = _evaluate(patients, nsd_tolerance_px=3.0, nsd_tolerance_mm=0.15, ece_bins=5, bootstrap=0)
    assert summary["segmentation"]["nsd_px"]["mean"] == pytest.approx(1.0)  # every shift <= 3 px
    shifted = [nsd(square(6, 6 + k, 12), square(6, 6, 12), 0.15, (0.1, 0.1)) for k in range(4)]
    assert summary["segmentation"]["nsd_mm"]["mean"] == pytest.approx(np.mean(shifted))
    assert summary["confidence_intervals"] is None and summary["classification"]["reliability"]["n_bins"] == 5
    assert "tau = 3 px" in summary["definitions"]["nsd_px"] and "5 equal-width" in summary["definitions"]["ece"]
    table = format_summary_table(summary)
    assert "NSD@3px" in table and "NSD@0.15mm" in table and "CI" not in table


def test_image_unit_when_every_patient_has_one_image(patients):
    path = patients / "cases.csv"
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0]] + [line.replace(f",P{i // 2},", f",P{i},")
                                           for i, line in enumerate(text[1:])]) + "\n")
    ci = _evaluate(patients, bootstrap=200)["confidence_intervals"]
    assert ci["ci_unit"] == "image" and ci["num_units"] == 8 and ci["n_resamples"] == 200


@pytest.mark.parametrize("kw, needle", [
    ({"nsd_tolerance_mm": -1.0}, "--nsd-tolerance -1.0"), ({"nsd_tolerance_px": math.inf}, "--nsd-tolerance-px"),
    ({"ece_bins": 0}, "--ece-bins 0"), ({"bootstrap": -5}, "--bootstrap -5"), ({"bootstrap_seed": -1}, "seed"),
    ({"bootstrap_method": "basic"}, "bootstrap method 'basic'"),
])
def test_bad_options_are_one_line_before_any_work(patients, kw, needle):
    with pytest.raises(NnunetMtlError, match=needle) as info:
        _evaluate(patients, **kw)
    assert "\n" not in str(info.value) and not (patients / "eval").exists()


def test_reliability_diagram_is_an_output_file(patients):
    assert "reliability_diagram.png" in OUTPUT_FILES
    (patients / "eval" / "reliability_diagram.png").mkdir(parents=True)
    with pytest.raises(NnunetMtlError, match="reliability_diagram.png"):
        check_evaluation_output(patients / "eval")
    (patients / "eval" / "reliability_diagram.png").rmdir()
    _evaluate(patients, bootstrap=0)
    assert (patients / "eval" / "reliability_diagram.png").is_file()
    # segmentation only afterwards: the stale diagram is removed with the other plots
    evaluate_folder(patients / "pred", patients / "ref", output_dir=patients / "eval", bootstrap=0)
    assert not (patients / "eval" / "reliability_diagram.png").exists()


def test_aggregate_keeps_working_and_refuses_mixed_tolerances(patients):
    _evaluate(patients, "e1", bootstrap=100)
    _evaluate(patients, "e2", bootstrap=100, bootstrap_seed=1)
    s1, s2 = patients / "e1" / "summary.json", patients / "e2" / "summary.json"
    agg = aggregate_summaries([s1, s2])
    assert agg["metrics"]["segmentation.nsd_px.mean"]["n"] == 2 and "classification.ece" in agg["metrics"]
    assert not any(k.startswith(("confidence_intervals", "settings")) or "reliability" in k for k in agg["metrics"])
    old = json.loads(s1.read_text())
    for key in ("settings", "confidence_intervals"):
        del old[key]
    (patients / "old.json").write_text(json.dumps(old))  # a summary from before the new metrics
    assert aggregate_summaries([patients / "old.json", s2])["num_runs"] == 2
    _evaluate(patients, "e3", bootstrap=0, nsd_tolerance_mm=2.0)
    with pytest.raises(NnunetMtlError, match="nsd_tolerance_mm 2.0") as info:
        aggregate_summaries([s1, patients / "e3" / "summary.json"])
    assert "\n" not in str(info.value) and str(s1) in str(info.value)


def test_per_fold_table_shows_the_new_rows():
    metric = {"mean": 0.5, "std": 0.1, "n": 2, "values": [0.4, 0.6]}
    keys = ("num_cases", "segmentation.dice.mean", "segmentation.nsd_px.mean", "segmentation.nsd_mm.mean",
            "classification.mcc", "classification.brier", "classification.ece")
    result = {"num_folds": 2, "folds": {"fold_0": {}, "fold_1": {}}, "pred_dir": "p",
              "mean_std_over_folds": {"metrics": {k: metric for k in keys}}, "fold_ensemble": None,
              "settings": {"nsd_tolerance_px": 2.0, "nsd_tolerance_mm": 1.0}}
    table = format_per_fold_table(result)
    for label in ("NSD@2px", "NSD@1mm", "MCC", "Brier score", "ECE"):
        assert label in table


def test_cli_options_reach_the_summary(patients, capsys):
    argv = ["evaluate", "-pred", str(patients / "pred"), "-ref", str(patients / "ref"), "--cases",
            str(patients / "cases.csv"), "--class-labels", str(patients / "dataset.json")]
    assert main(argv + ["--nsd-tolerance", "0.25", "--nsd-tolerance-px", "1", "--ece-bins", "10",
                        "--bootstrap", "200", "--bootstrap-seed", "5"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((patients / "pred" / "evaluation" / "summary.json").read_text())
    assert summary["settings"] == {"nsd_tolerance_px": 1.0, "nsd_tolerance_mm": 0.25, "ece_bins": 10,
                                   "bootstrap_resamples": 200, "bootstrap_seed": 5, "bootstrap_method": "percentile"}
    assert "NSD@1px" in out and "NSD@0.25mm" in out and "ECE (10 bins)" in out and "200 resamples" in out
    assert "reliability_diagram.png" in out
    for bad, needle in ((["--bootstrap", "-1"], "--bootstrap -1"), (["--nsd-tolerance", "nan"], "--nsd-tolerance")):
        assert main(argv + bad) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err
    assert main(["evaluate", "--aggregate", str(patients / "pred" / "evaluation" / "summary.json"),
                 "--bootstrap", "10"]) == 2
    assert "--aggregate" in capsys.readouterr().err


def test_cli_defaults_match_the_package():
    from nnunet_mtl.cli import evaluate as cli
    from nnunet_mtl.evaluation import bootstrap as ev
    assert cli.DEFAULT_NSD_TOLERANCE_MM == seg_metrics.DEFAULT_NSD_TOLERANCE_MM
    assert cli.DEFAULT_NSD_TOLERANCE_PX == seg_metrics.DEFAULT_NSD_TOLERANCE_PX
    assert cli.DEFAULT_ECE_BINS == cls_metrics.DEFAULT_ECE_BINS
    assert (cli.DEFAULT_BOOTSTRAP, cli.DEFAULT_BOOTSTRAP_SEED) == (ev.DEFAULT_BOOTSTRAP, ev.DEFAULT_BOOTSTRAP_SEED)


def test_the_evaluation_never_imports_monai():
    """MONAI is a test-time cross-check: the evaluation package must run without it."""
    from pathlib import Path

    import nnunet_mtl.evaluation
    root = Path(nnunet_mtl.evaluation.__file__).parent
    offenders = [p.name for p in root.glob("*.py") if "import monai" in p.read_text() or "from monai" in p.read_text()]
    assert offenders == []


# ------------------------------------------------------------------------------------------------ positive class
@pytest.mark.parametrize("names, seed", [(["benign", "malignant"], 0), (["Malignant", "benign"], 1),
                                         (["benign", "malignant", "normal"], 2)])
def test_positive_class_metrics_match_sklearn(names, seed):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
    k = len(names)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, 60)
    y_pred = np.where(rng.random(60) < 0.6, y, rng.integers(0, k, 60))
    probs = rng.dirichlet(np.ones(k), 60)
    m = classification_metrics(y, y_pred, probs, names)
    pos = [n.lower() for n in names].index("malignant")
    assert m["positive_class"] == names[pos] and cls_metrics.positive_class_index(names) == pos
    truth, guess = (y == pos).astype(int), (y_pred == pos).astype(int)
    p, r, f, _ = precision_recall_fscore_support(truth, guess, average="binary", pos_label=1, zero_division=0)
    tn, fp, fn, tp = confusion_matrix(truth, guess, labels=[0, 1]).ravel()
    assert (m["precision"], m["sensitivity"], m["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    for c, name in enumerate(names):  # every class one-vs-rest
        t_c, g_c = (y == c).astype(int), (y_pred == c).astype(int)
        tn, fp, fn, tp = confusion_matrix(t_c, g_c, labels=[0, 1]).ravel()
        assert m["per_class"][name]["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["per_class"][name]["sensitivity"] == pytest.approx(tp / (tp + fn)) == m["per_class"][name]["recall"]
    # the same under weights, as the bootstrap computes them
    weights = np.vstack([np.ones(60), rng.integers(0, 3, (3, 60))])
    got = resampled_metrics(weights, y, y_pred, probs, positive_class=pos)
    for b, w in enumerate(weights):
        rows = np.repeat(np.arange(60), w.astype(int))
        expected = classification_metrics(y[rows], y_pred[rows], probs[rows], names)
        for key in cls_metrics.POSITIVE_CLASS_METRICS:
            assert got[key][b] == pytest.approx(expected[key]), (key, b)


def test_positive_class_by_hand_and_zero_denominators():
    # reference malignant, malignant, benign, benign; predicted malignant, benign, benign, benign:
    # TP 1, FN 1, TN 2, FP 0 -> sensitivity 1/2, specificity 1, precision 1, F1 2/3
    m = classification_metrics([1, 1, 0, 0], [1, 0, 0, 0], np.full((4, 2), 0.5), ["benign", "malignant"])
    assert (m["sensitivity"], m["specificity"], m["precision"], m["f1"]) == pytest.approx((0.5, 1.0, 1.0, 2 / 3))
    # nothing predicted malignant, no malignant reference: every ratio 0 / 0 -> 0 (zero_division=0)
    m = classification_metrics([0, 0], [0, 0], np.full((2, 2), 0.5), ["benign", "malignant"])
    assert (m["sensitivity"], m["precision"], m["f1"], m["specificity"]) == (0.0, 0.0, 0.0, 1.0)
    # no class named malignant: no headline keys, and no intervals for them
    m = classification_metrics([0, 1, 2], [0, 1, 1], np.full((3, 3), 1 / 3), ["TR1", "TR2", "TR3"])
    assert not {"positive_class", "sensitivity", "specificity", "precision", "f1"} & set(m)
    assert cls_metrics.positive_class_index(["TR1", "TR2"]) is None
    assert "malignant" in cls_metrics.DEFINITIONS["positive_class_metrics"]


def test_positive_class_metrics_get_intervals_and_rows(patients):
    summary = _evaluate(patients, bootstrap=200)
    cls, ci = summary["classification"], summary["confidence_intervals"]["intervals"]
    assert cls["positive_class"] == "malignant"
    for key in ("sensitivity", "specificity", "precision", "f1"):
        low, high = ci[f"classification.{key}"]
        assert low <= cls[key] <= high
    table = format_summary_table(summary)
    for label in ("sensitivity (malignant)", "specificity (malignant)", "precision (malignant)", "F1 (malignant)",
                  "specificity"):
        assert label in table
    on_disk = json.loads((patients / "eval" / "summary.json").read_text())
    assert on_disk["classification"]["sensitivity"] == pytest.approx(cls["sensitivity"])
    agg = aggregate_summaries([patients / "eval" / "summary.json"] * 2)
    assert agg["metrics"]["classification.specificity"]["mean"] == pytest.approx(cls["specificity"])


# ------------------------------------------------------------------------------------------------ t-based CI over runs
def test_t_interval_matches_scipy():
    from scipy import stats

    from nnunet_mtl.evaluation.aggregate import t_interval
    values = [0.81, 0.86, 0.78]
    mean, sem = np.mean(values), np.std(values, ddof=1) / math.sqrt(3)
    assert t_interval(values) == pytest.approx(list(stats.t.interval(0.95, 2, loc=mean, scale=sem)))
    # by hand: t_{0.975, 2} = 4.302652729...
    assert t_interval(values)[1] == pytest.approx(mean + 4.302652729911275 * sem)
    assert t_interval([0.5]) is None and t_interval([]) is None
    assert t_interval([0.7, 0.7, 0.7]) == pytest.approx([0.7, 0.7])  # no spread, no width


def test_aggregate_reports_the_t_interval(tmp_path, capsys):
    from scipy import stats
    paths = []
    for i, (dice, auc) in enumerate(((0.8, 0.9), (0.6, None), (0.7, None))):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps({"num_cases": 10, "segmentation": {"dice": {"mean": dice}},
                                         "classification": {"auc": auc}}))
    agg = aggregate_summaries(paths, output_path=tmp_path / "agg.json")
    dice = agg["metrics"]["segmentation.dice.mean"]
    assert dice["ci95"] == pytest.approx(list(stats.t.interval(0.95, 2, loc=0.7, scale=0.1 / math.sqrt(3))))
    assert agg["metrics"]["classification.auc"]["ci95"] is None  # defined in one run only
    assert "t_{0.975, n-1}" in agg["ci95"] and any("one run only" in n for n in agg["notes"])
    assert json.loads((tmp_path / "agg.json").read_text())["metrics"]["segmentation.dice.mean"]["ci95"] == \
        pytest.approx(dice["ci95"])
    capsys.readouterr()
    assert main(["evaluate", "--aggregate", *map(str, paths)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "segmentation.dice.mean" in line)
    assert f"[{dice['ci95'][0]:.4f}, {dice['ci95'][1]:.4f}]" in line and "95% CI (t)" in out
    assert main(["evaluate", "--aggregate", str(paths[0])]) == 0
    assert "one run only: no standard deviation and no 95% confidence interval" in capsys.readouterr().out


def test_per_fold_table_shows_the_t_interval_and_the_positive_class():
    metric = {"mean": 0.5, "std": 0.1, "n": 3, "values": [0.4, 0.5, 0.6], "ci95": [0.2516, 0.7484]}
    keys = ("num_cases", "segmentation.dice.mean", "segmentation.attention_iou.mean", "classification.sensitivity",
            "classification.specificity", "classification.precision", "classification.f1")
    result = {"num_folds": 3, "folds": {"fold_0": {}, "fold_1": {}, "fold_2": {}}, "pred_dir": "p",
              "mean_std_over_folds": {"metrics": {k: metric for k in keys}}, "fold_ensemble": None,
              "positive_class": "malignant"}
    table = format_per_fold_table(result)
    dice = next(line for line in table.splitlines() if line.strip().startswith("Dice"))
    assert "[0.2516, 0.7484]" in dice and "95% CI (t)" in table
    for label in ("attention IoU", "sensitivity", "specificity", "precision", "F1",
                  "malignant as the positive class", "t(0.975, 2)"):
        assert label in table
