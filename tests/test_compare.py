"""``nnunet_mtl compare``: the statistics against independent computations (scipy on hand-made pairs, Holm and
McNemar by hand, DeLong against the brute-force U-statistics and the paired bootstrap, the vectorized AUC against
scikit-learn), the case matching and class checks, the patient unit, per-fold folders, and the command end to end."""
import csv
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import stats
from sklearn.metrics import roc_auc_score

from nnunet_mtl.cli.main import main
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import compare as cmp

CLASSES = ("benign", "malignant")


# ------------------------------------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert cmp.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; NaN (no test) stays NaN and does not count in m (m = 2 here)
    out = cmp.holm([0.6, math.nan, 0.2])
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.4)
    assert cmp.holm([0.5, 0.7]) == pytest.approx([1.0, 1.0])
    assert cmp.holm([]).size == 0


# ------------------------------------------------------------------------------------------------ Wilcoxon
def test_zero_method_is_zsplit_and_matches_scipy():
    assert cmp.ZERO_METHOD == "zsplit"
    rng = np.random.default_rng(0)
    # 60 cases, 40 exact ties (Dice 1.0 vs 1.0), B better on most of the rest: the normal approximation
    d = np.concatenate([np.zeros(40), rng.uniform(-0.05, 0.2, 20).round(3)])
    w = cmp.wilcoxon_paired(d)
    ref = stats.wilcoxon(d, zero_method="zsplit", method="asymptotic", correction=False)
    assert w["p"] == pytest.approx(ref.pvalue) and w["statistic"] == pytest.approx(ref.statistic)
    assert w["zero_method"] == "zsplit" and w["n_zero"] == 40 and "normal approximation" in w["method"]
    # the choice matters: dropping the ties ("wilcox", scipy's default) claims much stronger evidence
    dropped = stats.wilcoxon(d, zero_method="wilcox", method="asymptotic").pvalue
    assert dropped < w["p"] / 5


def test_wilcoxon_small_samples_are_exact():
    no_ties = np.array([0.11, -0.02, 0.35, 0.07, 0.21, -0.04, 0.16, 0.09])
    w = cmp.wilcoxon_paired(no_ties)
    assert w["method"] == "exact" and w["p"] == pytest.approx(stats.wilcoxon(no_ties, method="exact").pvalue)
    with_zeros = np.array([0.0, 0.0, 0.1, 0.1, -0.2, 0.3, 0.3, 0.05, 0.0, 0.2])
    w = cmp.wilcoxon_paired(with_zeros)
    perm = stats.wilcoxon(with_zeros, zero_method="zsplit", method=stats.PermutationMethod(n_resamples=np.inf))
    assert w["method"].startswith("exact (all 2^7 sign flips") and w["p"] == pytest.approx(perm.pvalue)
    assert cmp.wilcoxon_paired(np.zeros(9))["p"] == 1.0  # every case ties: no evidence of a difference


# ------------------------------------------------------------------------------------------------ McNemar
def test_mcnemar_exact_by_hand():
    # 30 patients: both right 6, A right / B wrong 9, A wrong / B right 1, both wrong 14
    a = np.array([1] * 6 + [1] * 9 + [0] * 1 + [0] * 14, bool)
    b = np.array([1] * 6 + [0] * 9 + [1] * 1 + [0] * 14, bool)
    m = cmp.mcnemar_exact(a, b)
    # two-sided exact: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024
    assert (m["b"], m["c"]) == (9, 1) and m["p"] == pytest.approx(22 / 1024)
    assert cmp.mcnemar_exact(a, a)["p"] == 1.0


def test_mcnemar_clustered_by_hand():
    a = np.array([1, 1, 0, 1, 1], bool)
    b = np.array([0, 0, 1, 0, 1], bool)
    # one image per cluster: the plain asymptotic McNemar (b - c)^2 / (b + c) = (3 - 1)^2 / 4
    single = cmp.mcnemar_clustered(a, b, np.arange(5))
    assert single["statistic"] == pytest.approx(1.0) and single["p"] == pytest.approx(stats.chi2.sf(1.0, 1))
    # patients {0, 1}, {2}, {3, 4}: d = (2 - 0)/2, (0 - 1)/1, (1 - 0)/2 = 1, -1, 0.5 -> 0.5^2 / 2.25
    m = cmp.mcnemar_clustered(a, b, np.array([0, 0, 1, 2, 2]))
    assert m["statistic"] == pytest.approx(0.25 / 2.25) and m["p"] == pytest.approx(stats.chi2.sf(0.25 / 2.25, 1))


# ------------------------------------------------------------------------------------------------ AUC, DeLong
def _scores(rng, n=60):
    y = rng.integers(0, 2, n)
    latent = y * 1.0 + rng.normal(0, 1, n)
    a = (latent + rng.normal(0, 0.5, n)).round(1)  # rounded: ties inside and across the classes
    b = (latent + rng.normal(0, 1.2, n)).round(1)
    return y, a, b


def _brute_delong(y, a, b):
    """DeLong et al. (1988) by its definition: the kernel psi over all positive-negative pairs, no ranks."""
    pos, neg = y == 1, y == 0
    v10, v01 = [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s = np.cov(np.array(v10)) / pos.sum() + np.cov(np.array(v01)) / neg.sum()
    return np.mean(v10[0]), np.mean(v10[1]), s[0, 0] + s[1, 1] - 2 * s[0, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_brute_force_u_statistics(seed):
    y, a, b = _scores(np.random.default_rng(seed))
    dl = cmp.delong_test(y, a, b)
    auc_a, auc_b, var = _brute_delong(y, a, b)
    assert dl["auc_a"] == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert dl["auc_b"] == pytest.approx(roc_auc_score(y, b)) == pytest.approx(auc_b)
    assert dl["variance"] == pytest.approx(var, rel=1e-10)
    assert dl["p"] == pytest.approx(2 * stats.norm.sf(abs(auc_a - auc_b) / math.sqrt(var)))
    assert dl["ci_low"] < dl["difference"] < dl["ci_high"]


def test_delong_agrees_with_an_independent_paired_bootstrap():
    rng = np.random.default_rng(5)
    y, a, b = _scores(rng, n=120)
    dl = cmp.delong_test(y, a, b)
    diffs = []
    for _ in range(400):  # plain resampling of cases with scikit-learn's AUC
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    se = np.std(diffs, ddof=1)
    assert np.sign(np.mean(diffs)) == np.sign(dl["difference"])
    assert 0.75 < se / dl["se"] < 1.33
    p_boot = 2 * stats.norm.sf(abs(dl["difference"]) / se)
    assert 0.5 < p_boot / dl["p"] < 2 and 0.001 < dl["p"] < 0.5  # a p where the two can disagree
    # and the module's own bootstrap (vectorized AUC, scipy.stats.bootstrap) says the same
    probs = lambda s: np.stack([1 - s / 10, s / 10], axis=1)  # noqa: E731 (any monotone map keeps the AUC)
    ci = cmp.paired_bootstrap_ci(cmp.auc_difference_statistic(y, probs(a), probs(b)), np.arange(len(y)),
                                 n_resamples=1000, seed=0)
    assert ci["estimate"] == pytest.approx(dl["difference"])
    assert 0.75 < ci["se"] / dl["se"] < 1.33 and ci["low"] < dl["difference"] < ci["high"]


def test_delong_degenerate_cases():
    y = np.array([0, 0, 1, 1])
    same = cmp.delong_test(y, [0.1, 0.2, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9])
    assert same["difference"] == 0 and same["p"] == 1.0
    assert math.isnan(cmp.delong_test([0, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.4, 0.9])["p"])  # one negative only


def test_weighted_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = (y + rng.normal(0, 1, 50)).round(1)
    w = rng.integers(0, 4, size=(5, 50))
    ours = cmp.weighted_auc(y, s, w)
    for row, value in zip(w, ours):
        assert value == pytest.approx(roc_auc_score(y, s, sample_weight=row))
    # three classes: the one-vs-rest macro AUC, and a weighted resample equals the repeated cases
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y3]
    p3 /= p3.sum(axis=1, keepdims=True)
    assert cmp.macro_ovr_auc(y3, p3, np.ones(60))[0] == pytest.approx(
        roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    counts = rng.integers(0, 3, 60)
    assert cmp.macro_ovr_auc(y3, p3, counts)[0] == pytest.approx(
        roc_auc_score(np.repeat(y3, counts), np.repeat(p3, counts, axis=0), multi_class="ovr", average="macro"))


# ------------------------------------------------------------------------------------------------ bootstrap
def test_paired_bootstrap_equals_scipys_paired_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.6, 1, 30), rng.uniform(0.5, 1, 30)
    ours = cmp.paired_bootstrap_ci(cmp.mean_difference_statistic(a - b), np.arange(30), n_resamples=999, seed=7)
    ref = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                          n_resamples=999, method="BCa", rng=np.random.default_rng(7))
    assert (ours["low"], ours["high"]) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert ours["method"] == "paired bootstrap over images, BCa"


def test_cluster_bootstrap_resamples_patients():
    rng = np.random.default_rng(2)
    d = rng.normal(0.02, 0.1, 20)
    one_each = cmp.paired_bootstrap_ci(cmp.mean_difference_statistic(d), np.arange(20), n_resamples=500, seed=4)
    # every patient imaged twice, identically: drawing patients gives exactly the one-image-per-patient interval
    twice = np.repeat(d, 2)
    patients = np.repeat(np.arange(20), 2)
    clustered = cmp.paired_bootstrap_ci(cmp.mean_difference_statistic(twice), patients, n_resamples=500, seed=4)
    assert (clustered["low"], clustered["high"]) == pytest.approx((one_each["low"], one_each["high"]))
    assert clustered["n_units"] == 20 and "over patients" in clustered["method"]
    # treating the 40 images as independent would claim a CI about sqrt(2) narrower
    naive = cmp.paired_bootstrap_ci(cmp.mean_difference_statistic(twice), np.arange(40), n_resamples=500, seed=4)
    assert (naive["high"] - naive["low"]) < 0.85 * (clustered["high"] - clustered["low"])


def test_bootstrap_of_identical_runs_is_a_point():
    ci = cmp.paired_bootstrap_ci(cmp.mean_difference_statistic(np.zeros(12)), np.arange(12), n_resamples=200, seed=0)
    assert (ci["low"], ci["high"]) == (0.0, 0.0) and "same value" in ci["method"]


# ------------------------------------------------------------------------------------------------ runs
def _write_run(folder, rows, classes=CLASSES, settings=None):
    """A prediction folder with evaluation/per_case.csv (evaluate's columns) and a summary.json."""
    ev = folder / "evaluation"
    ev.mkdir(parents=True)
    fields = ["case_id", "dice", "iou", "hd95_px", "hd95_mm", "true_class", "predicted_class"]
    fields += [f"prob_{c}" for c in classes or ()]
    with open(ev / "per_case.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (ev / "summary.json").write_text(json.dumps({"segmentation": {}, "settings": settings or {},
                                                 "inputs": {"ref_dir": "/data/ref"}}))
    return folder


def _rows(rng, n, quality, classes=CLASSES):
    out = []
    for i in range(n):
        dice = float(np.clip(quality + rng.normal(0, 0.08), 0, 1)) if i % 3 else 1.0  # every third case: perfect
        true = classes[i % len(classes)]
        p = rng.dirichlet(np.ones(len(classes)))
        p = 0.4 * p + 0.6 * np.eye(len(classes))[i % len(classes)] * (quality > 0.8 or i % 4 != 0)
        p /= p.sum()
        out.append({"case_id": f"{i:04d}", "dice": f"{dice:.6f}", "iou": f"{dice / (2 - dice):.6f}",
                    "hd95_px": f"{(1 - dice) * 20:.6f}", "hd95_mm": "" if i == 0 else f"{(1 - dice) * 2:.6f}",
                    "true_class": true, "predicted_class": classes[int(np.argmax(p))],
                    **{f"prob_{c}": f"{v:.6f}" for c, v in zip(classes, p)}})
    return out


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    _write_run(tmp_path / "unet", _rows(rng, 24, 0.75))
    _write_run(tmp_path / "mtl", _rows(rng, 24, 0.85))
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id"])
        for i in range(24):
            w.writerow([f"{i:04d}", "test", CLASSES[i % 2], f"P{i // 2:02d}"])  # two images per patient
    return tmp_path


def test_image_unit_table(runs):
    result = cmp.compare([runs / "unet", runs / "mtl"], n_resamples=200)
    rows = {r["metric"]: r for r in result["rows"]}
    assert list(rows) == ["dice", "iou", "hd95_px", "hd95_mm", "accuracy", "auc"]
    assert result["settings"]["unit"] == "image" and "no case table" in result["settings"]["unit_text"]
    dice_a = [float(r["dice"]) for r in _read(runs / "unet")]
    dice_b = [float(r["dice"]) for r in _read(runs / "mtl")]
    assert rows["dice"]["mean_a"] == pytest.approx(np.mean(dice_a))
    assert rows["dice"]["difference"] == pytest.approx(np.mean(dice_a) - np.mean(dice_b))
    assert rows["dice"]["p"] == pytest.approx(
        stats.wilcoxon(np.subtract(dice_a, dice_b), zero_method="zsplit", method="asymptotic").pvalue)
    assert rows["hd95_mm"]["n_images"] == 23 and "23 of 24" in rows["hd95_mm"]["note"]  # case 0000 has no spacing
    assert rows["auc"]["test_short"] == "DeLong" and rows["accuracy"]["test_short"] == "McNemar exact"
    assert [r["p_holm"] for r in result["rows"]] == pytest.approx(list(cmp.holm([r["p"] for r in result["rows"]])))
    table = cmp.format_table(result)
    assert "unit: image (24 images; no case table" in table and "p Holm" in table and "zsplit" in table


def _read(run):
    with open(run / "evaluation" / "per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_patient_unit(runs):
    result = cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "cases.csv", n_resamples=200)
    assert result["settings"]["unit"] == "patient"
    assert result["settings"]["unit_text"].startswith("unit: patient (12 patients, 24 images")
    rows = {r["metric"]: r for r in result["rows"]}
    d = np.array([float(x["dice"]) for x in _read(runs / "unet")]) - [float(x["dice"]) for x in _read(runs / "mtl")]
    per_patient = d.reshape(12, 2).mean(axis=1)  # cases 2k, 2k+1 are patient k
    assert rows["dice"]["p"] == pytest.approx(cmp.wilcoxon_paired(per_patient)["p"])
    assert rows["dice"]["n_units"] == 12 and rows["dice"]["difference"] == pytest.approx(d.mean())
    assert rows["accuracy"]["test_short"] == "McNemar (clustered)" and rows["auc"]["test_short"] == "bootstrap"
    assert "over patients" in rows["dice"]["ci_method"]
    # one image per patient: the unit stays the image, and says why
    lines = (runs / "cases.csv").read_text().splitlines()
    (runs / "single.csv").write_text("\n".join([lines[0]] + [ln.replace(",P", ",Q" + ln[:4]) for ln in lines[1:]]))
    single = cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "single.csv", n_resamples=200)
    assert single["settings"]["unit_text"].startswith("unit: image (24 images, one per patient")


def test_case_table_without_a_compared_case(runs):
    lines = (runs / "cases.csv").read_text().splitlines()
    (runs / "short.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(NnunetMtlError, match="case 0023 of the runs is not in .*short.csv"):
        cmp.compare([runs / "unet", runs / "mtl"], cases_csv=runs / "short.csv", n_resamples=200)


def test_mismatched_cases_name_the_case_and_the_run(runs):
    rows = _read(runs / "mtl")
    (runs / "mtl" / "evaluation" / "per_case.csv").write_text(
        ",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows if r["case_id"] != "0007"))
    with pytest.raises(NnunetMtlError) as info:
        cmp.compare([runs / "unet", runs / "mtl"], runs / "out", n_resamples=200)
    message = str(info.value)
    assert "case 0007" in message and str(runs / "mtl") in message and "\n" not in message
    assert not (runs / "out").exists()
    with pytest.raises(NnunetMtlError, match=f"case 0007 of run {runs / 'unet'} is missing in run"):
        cmp.compare([runs / "mtl", runs / "unet"], n_resamples=200)


def test_class_columns_and_reference_classes_must_agree(runs, tmp_path):
    rng = np.random.default_rng(1)
    _write_run(tmp_path / "other", _rows(rng, 24, 0.8, classes=("TR1", "TR2")), classes=("TR1", "TR2"))
    with pytest.raises(NnunetMtlError, match="has class columns prob_TR1, prob_TR2 but run .* has prob_benign"):
        cmp.compare([runs / "unet", tmp_path / "other"], n_resamples=200)
    rows = _read(runs / "mtl")
    rows[3]["true_class"] = "malignant" if rows[3]["true_class"] == "benign" else "benign"
    (runs / "mtl" / "evaluation" / "per_case.csv").write_text(
        ",".join(rows[0]) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    with pytest.raises(NnunetMtlError, match="case 0003 has reference class"):
        cmp.compare([runs / "unet", runs / "mtl"], n_resamples=200)


def test_segmentation_only_run_is_compared_without_classification(runs, tmp_path):
    rows = _rows(np.random.default_rng(4), 24, 0.8)
    _write_run(tmp_path / "seg", rows, classes=None)
    result = cmp.compare([runs / "unet", tmp_path / "seg"], n_resamples=200)
    assert [r["metric"] for r in result["rows"]] == ["dice", "iou", "hd95_px", "hd95_mm"]
    assert any("classification not compared" in n for n in result["notes"])


def test_nsd_tolerances_must_agree(tmp_path):
    rng = np.random.default_rng(0)
    for name, tol in (("a", 2.0), ("b", 3.0)):
        rows = _rows(rng, 10, 0.8)
        for r in rows:
            r["nsd_px"] = r["dice"]
        folder = _write_run(tmp_path / name, rows, settings={"nsd_tolerance_px": tol})
        text = (folder / "evaluation" / "per_case.csv").read_text().splitlines()
        (folder / "evaluation" / "per_case.csv").write_text(
            "\n".join([text[0] + ",nsd_px"] + [ln + "," + r["dice"] for ln, r in zip(text[1:], rows)]) + "\n")
    with pytest.raises(NnunetMtlError, match="nsd_tolerance_px 3.0 but run .* with 2.0"):
        cmp.compare([tmp_path / "a", tmp_path / "b"], n_resamples=200)


def test_three_classes_and_all_pairs(tmp_path):
    rng = np.random.default_rng(2)
    three = ("TR2", "TR3", "TR4")
    for name, q in (("a", 0.7), ("b", 0.8), ("c", 0.9)):
        _write_run(tmp_path / name, _rows(rng, 18, q, classes=three), classes=three)
    runs = [tmp_path / n for n in "abc"]
    first = cmp.compare(runs, n_resamples=200)
    assert list(dict.fromkeys(r["pair"] for r in first["rows"])) == ["A vs B", "A vs C"]
    result = cmp.compare(runs, all_pairs=True, n_resamples=200)
    assert list(dict.fromkeys(r["pair"] for r in result["rows"])) == ["A vs B", "A vs C", "B vs C"]
    auc = [r for r in result["rows"] if r["metric"] == "auc"][0]
    assert auc["test_short"] == "bootstrap" and auc["label"] == "AUC (OvR macro)" and 0 <= auc["p"] <= 1
    assert result["settings"]["n_pvalues"] == len(result["rows"])


def test_per_fold_folder_compares_its_ensemble(runs, tmp_path):
    rng = np.random.default_rng(3)
    pf = tmp_path / "perfold"
    for sub, q in (("fold_0", 0.7), ("fold_1", 0.75), ("ensemble", 0.9)):
        _write_run(pf / sub, _rows(rng, 24, q))
    (pf / "per_fold.json").write_text(json.dumps({"subfolders": {"fold_0": {"folds": [0]}, "fold_1": {"folds": [1]},
                                                                 "ensemble": {"folds": [0, 1]}}}))
    result = cmp.compare([runs / "unet", pf, pf / "fold_1"], n_resamples=200)
    assert result["runs"][1]["folder"] == str(pf / "ensemble") and result["runs"][2]["folder"] == str(pf / "fold_1")
    assert "comparing its ensemble/" in result["runs"][1]["note"]
    assert "comparing its ensemble/" in cmp.format_table(result)


# ------------------------------------------------------------------------------------------------ command
def _png(path, top, size=10):
    m = np.zeros((32, 32), np.uint8)
    m[top:top + size, 8:8 + size] = 1
    Image.fromarray(m).save(path)


@pytest.fixture(scope="module")
def evaluated_template(tmp_path_factory):
    """Two runs written like predict and evaluated by evaluate_folder itself: the real per_case.csv columns."""
    from nnunet_mtl.evaluation.evaluate import evaluate_folder
    tmp_path = tmp_path_factory.mktemp("evaluated")
    ref = tmp_path / "ref"
    ref.mkdir()
    cases = [f"{i:03d}" for i in range(8)]
    with open(tmp_path / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "split", "class", "patient_id", "spacing_row_mm", "spacing_col_mm"])
        w.writerows([c, "test", CLASSES[i % 2], f"P{i // 2}", "0.5", "0.5"] for i, c in enumerate(cases))
    for c in cases:
        _png(ref / f"{c}.png", 8)
    for name, shifts, p1 in (("a", [0, 2, 0, 3, 1, 0, 2, 0], [.2, .6, .3, .9, .4, .7, .1, .8]),
                             ("b", [0, 0, 0, 1, 0, 0, 0, 0], [.1, .8, .2, .9, .3, .7, .2, .9])):
        run = tmp_path / name
        run.mkdir()
        for c, s in zip(cases, shifts):
            _png(run / f"{c}.png", 8 + s)
        with open(run / "class_predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "predicted_class", "prob_benign", "prob_malignant"])
            w.writerows([c, CLASSES[p > 0.5], 1 - p, p] for c, p in zip(cases, p1))
        evaluate_folder(run, ref, class_predictions_csv=run / "class_predictions.csv", cases_csv=tmp_path / "cases.csv",
                        class_labels={"benign": 0, "malignant": 1}, output_dir=run / "evaluation")
    return tmp_path


@pytest.fixture
def evaluated(evaluated_template, tmp_path):
    shutil.copytree(evaluated_template, tmp_path / "w")
    return tmp_path / "w"


def test_cli_end_to_end(evaluated, capsys):
    out = evaluated / "cmp"
    code = main(["compare", str(evaluated / "a"), str(evaluated / "b"), "--cases", str(evaluated / "cases.csv"),
                 "-o", str(out), "--n-resamples", "300", "--seed", "3"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "unit: patient (4 patients, 8 images" in printed
    assert "Dice" in printed and "Wilcoxon" in printed and "McNemar (clustered)" in printed and "p Holm" in printed
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["metric"] == "dice" and rows[0]["run_a"] == str(evaluated / "a")
    assert [float(r["p_holm"]) for r in rows] == pytest.approx(list(cmp.holm([float(r["p"]) for r in rows])))
    saved = json.loads((out / "comparison.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    settings = saved["settings"]
    assert (settings["zero_method"], settings["n_resamples"], settings["seed"], settings["unit"]) == \
        ("zsplit", 300, 3, "patient")
    assert "Wilcoxon" in settings["tests"]["dice"] and "Durkalski" in settings["tests"]["accuracy"]
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    # the same command again gives the same numbers (seeded)
    first = (out / "comparison.csv").read_text()
    assert main(["compare", str(evaluated / "a"), str(evaluated / "b"), "--cases", str(evaluated / "cases.csv"),
                 "-o", str(out), "--n-resamples", "300", "--seed", "3"]) == 0
    assert (out / "comparison.csv").read_text() == first


def _snapshot(root):
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("setup, needle", [
    (lambda w: [str(w / "a"), str(w / "ref")], "has no evaluation/per_case.csv; run `nnunet_mtl evaluate -pred"),
    (lambda w: [str(w / "a"), str(w / "nope")], "nope does not exist"),
    (lambda w: [str(w / "a"), str(w / "a")], "are the same"),
    (lambda w: [str(w / "a"), str(w / "b"), "-o", str(w / "cases.csv")], "cases.csv is a file"),
    (lambda w: [str(w / "a"), str(w / "b"), "-o", str(w / "b")], "is one of the inputs"),
    (lambda w: [str(w / "a"), str(w / "b"), "--n-resamples", "10"], "--n-resamples 10 is too few"),
    (lambda w: [str(w / "a"), str(w / "b"), "--cases", str(w / "none.csv")], "none.csv does not exist"),
    (lambda w: ((w / "b" / "evaluation" / "per_case.csv").write_text("case_id,dice\n000,1\n"),
                [str(w / "a"), str(w / "b")])[1], "lacks column(s) iou, hd95_px"),
    (lambda w: ((w / "b" / "evaluation" / "per_case.csv").write_text(
        (w / "b" / "evaluation" / "per_case.csv").read_text().replace("\n003,", "\n003x,")),
                [str(w / "a"), str(w / "b")])[1], "case 003 of run"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(evaluated, capsys, monkeypatch, setup, needle):
    monkeypatch.chdir(evaluated)
    argv = ["compare", *setup(evaluated)]
    before = _snapshot(evaluated)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nnunet_mtl compare: error: ") and needle in err, err
    assert _snapshot(evaluated) == before  # not even ./comparison


def test_run_names_are_the_shortest_distinct_folder_suffixes():
    """comparison.png names each pair by its runs' folders (issue: 'A vs B' told a reader nothing)."""
    from nnunet_mtl.evaluation.compare import run_names
    assert run_names(["/w/predictions/mtl/ddti_test/evaluation", "/w/predictions/rlar/ddti_test/evaluation"]) == [
        "mtl/ddti_test", "rlar/ddti_test"]
    assert run_names(["/a/x/fold_0", "/a/y/fold_1"]) == ["fold_0", "fold_1"]
    assert run_names(["/a/run", "/b/run"]) == ["a/run", "b/run"]
