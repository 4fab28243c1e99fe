"""``nnunet_mtl.evaluation.paired_statistics`` against independent computations: scipy on hand-made pairs, Holm and
McNemar by hand, DeLong against the brute-force U-statistics and an independent paired bootstrap, the vectorized AUC
against scikit-learn, the paired (cluster) bootstrap against scipy's paired bootstrap and a known answer."""
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from nnunet_mtl.evaluation import paired_statistics as ps


# ------------------------------------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert ps.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; NaN (no test) stays NaN and does not count in m (m = 2 here)
    out = ps.holm([0.6, math.nan, 0.2])
    assert out[0] == pytest.approx(0.6) and math.isnan(out[1]) and out[2] == pytest.approx(0.4)
    assert ps.holm([0.5, 0.7]) == pytest.approx([1.0, 1.0])
    assert ps.holm([]).size == 0


# ------------------------------------------------------------------------------------------------ Wilcoxon
def test_zero_method_is_zsplit_and_matches_scipy():
    assert ps.ZERO_METHOD == "zsplit"
    rng = np.random.default_rng(0)
    # 60 cases, 40 exact ties (Dice 1.0 vs 1.0), B better on most of the rest: the normal approximation
    d = np.concatenate([np.zeros(40), rng.uniform(-0.05, 0.2, 20).round(3)])
    w = ps.wilcoxon_paired(d)
    ref = stats.wilcoxon(d, zero_method="zsplit", method="asymptotic", correction=False)
    assert w["p"] == pytest.approx(ref.pvalue) and w["statistic"] == pytest.approx(ref.statistic)
    assert w["zero_method"] == "zsplit" and w["n_zero"] == 40 and "normal approximation" in w["method"]
    # the choice matters: dropping the ties ("wilcox", scipy's default) claims much stronger evidence
    dropped = stats.wilcoxon(d, zero_method="wilcox", method="asymptotic").pvalue
    assert dropped < w["p"] / 5


def test_wilcoxon_small_samples_are_exact():
    no_ties = np.array([0.11, -0.02, 0.35, 0.07, 0.21, -0.04, 0.16, 0.09])
    w = ps.wilcoxon_paired(no_ties)
    assert w["method"] == "exact" and w["p"] == pytest.approx(stats.wilcoxon(no_ties, method="exact").pvalue)
    with_zeros = np.array([0.0, 0.0, 0.1, 0.1, -0.2, 0.3, 0.3, 0.05, 0.0, 0.2])
    w = ps.wilcoxon_paired(with_zeros)
    perm = stats.wilcoxon(with_zeros, zero_method="zsplit", method=stats.PermutationMethod(n_resamples=np.inf))
    assert w["method"].startswith("exact (all 2^7 sign flips") and w["p"] == pytest.approx(perm.pvalue)
    assert ps.wilcoxon_paired(np.zeros(9))["p"] == 1.0  # every case ties: no evidence of a difference


# ------------------------------------------------------------------------------------------------ McNemar
def test_mcnemar_exact_by_hand():
    # 30 patients: both right 6, A right / B wrong 9, A wrong / B right 1, both wrong 14
    a = np.array([1] * 6 + [1] * 9 + [0] * 1 + [0] * 14, bool)
    b = np.array([1] * 6 + [0] * 9 + [1] * 1 + [0] * 14, bool)
    m = ps.mcnemar_exact(a, b)
    # two-sided exact: 2 * P(X <= 1), X ~ Bin(10, 1/2) = 2 * (1 + 10) / 1024
    assert (m["b"], m["c"]) == (9, 1) and m["p"] == pytest.approx(22 / 1024)
    assert ps.mcnemar_exact(a, a)["p"] == 1.0


def test_mcnemar_clustered_by_hand():
    a = np.array([1, 1, 0, 1, 1], bool)
    b = np.array([0, 0, 1, 0, 1], bool)
    # one image per cluster: the plain asymptotic McNemar (b - c)^2 / (b + c) = (3 - 1)^2 / 4
    single = ps.mcnemar_clustered(a, b, np.arange(5))
    assert single["statistic"] == pytest.approx(1.0) and single["p"] == pytest.approx(stats.chi2.sf(1.0, 1))
    # patients {0, 1}, {2}, {3, 4}: d = (2 - 0)/2, (0 - 1)/1, (1 - 0)/2 = 1, -1, 0.5 -> 0.5^2 / 2.25
    m = ps.mcnemar_clustered(a, b, np.array([0, 0, 1, 2, 2]))
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
    dl = ps.delong_test(y, a, b)
    auc_a, auc_b, var = _brute_delong(y, a, b)
    assert dl["auc_a"] == pytest.approx(roc_auc_score(y, a)) == pytest.approx(auc_a)
    assert dl["auc_b"] == pytest.approx(roc_auc_score(y, b)) == pytest.approx(auc_b)
    assert dl["variance"] == pytest.approx(var, rel=1e-10)
    assert dl["p"] == pytest.approx(2 * stats.norm.sf(abs(auc_a - auc_b) / math.sqrt(var)))
    assert dl["ci_low"] < dl["difference"] < dl["ci_high"]
    # plain Python numbers: numpy's would be written as np.float64(...) by repr (comparison.csv's cells did)
    assert all(type(dl[k]) is float for k in ("auc_a", "auc_b", "difference", "se", "z", "p", "ci_low", "ci_high"))


def test_delong_agrees_with_an_independent_paired_bootstrap():
    rng = np.random.default_rng(5)
    y, a, b = _scores(rng, n=120)
    dl = ps.delong_test(y, a, b)
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
    ci = ps.paired_bootstrap_ci(ps.auc_difference_statistic(y, probs(a), probs(b)), np.arange(len(y)),
                                 n_resamples=1000, seed=0)
    assert ci["estimate"] == pytest.approx(dl["difference"])
    assert 0.75 < ci["se"] / dl["se"] < 1.33 and ci["low"] < dl["difference"] < ci["high"]


def test_delong_degenerate_cases():
    y = np.array([0, 0, 1, 1])
    same = ps.delong_test(y, [0.1, 0.2, 0.8, 0.9], [0.1, 0.2, 0.8, 0.9])
    assert same["difference"] == 0 and same["p"] == 1.0
    assert math.isnan(ps.delong_test([0, 1, 1], [0.1, 0.5, 0.9], [0.2, 0.4, 0.9])["p"])  # one negative only


def test_weighted_auc_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    s = (y + rng.normal(0, 1, 50)).round(1)
    w = rng.integers(0, 4, size=(5, 50))
    ours = ps.weighted_auc(y, s, w)
    for row, value in zip(w, ours):
        assert value == pytest.approx(roc_auc_score(y, s, sample_weight=row))
    # three classes: the one-vs-rest macro AUC, and a weighted resample equals the repeated cases
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y3]
    p3 /= p3.sum(axis=1, keepdims=True)
    assert ps.macro_ovr_auc(y3, p3, np.ones(60))[0] == pytest.approx(
        roc_auc_score(y3, p3, multi_class="ovr", average="macro"))
    counts = rng.integers(0, 3, 60)
    assert ps.macro_ovr_auc(y3, p3, counts)[0] == pytest.approx(
        roc_auc_score(np.repeat(y3, counts), np.repeat(p3, counts, axis=0), multi_class="ovr", average="macro"))


# ------------------------------------------------------------------------------------------------ bootstrap
def test_paired_bootstrap_equals_scipys_paired_bootstrap():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.6, 1, 30), rng.uniform(0.5, 1, 30)
    ours = ps.paired_bootstrap_ci(ps.mean_difference_statistic(a - b), np.arange(30), n_resamples=999, seed=7)
    ref = stats.bootstrap((a, b), lambda x, y, axis=-1: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                          n_resamples=999, method="BCa", rng=np.random.default_rng(7))
    assert (ours["low"], ours["high"]) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert ours["method"] == "paired bootstrap over images, BCa"


def test_cluster_bootstrap_resamples_patients():
    rng = np.random.default_rng(2)
    d = rng.normal(0.02, 0.1, 20)
    one_each = ps.paired_bootstrap_ci(ps.mean_difference_statistic(d), np.arange(20), n_resamples=500, seed=4)
    # every patient imaged twice, identically: drawing patients gives exactly the one-image-per-patient interval
    twice = np.repeat(d, 2)
    patients = np.repeat(np.arange(20), 2)
    clustered = ps.paired_bootstrap_ci(ps.mean_difference_statistic(twice), patients, n_resamples=500, seed=4)
    assert (clustered["low"], clustered["high"]) == pytest.approx((one_each["low"], one_each["high"]))
    assert clustered["n_units"] == 20 and "over patients" in clustered["method"]
    # treating the 40 images as independent would claim a CI about sqrt(2) narrower
    naive = ps.paired_bootstrap_ci(ps.mean_difference_statistic(twice), np.arange(40), n_resamples=500, seed=4)
    assert (naive["high"] - naive["low"]) < 0.85 * (clustered["high"] - clustered["low"])


def test_bootstrap_of_identical_runs_is_a_point():
    ci = ps.paired_bootstrap_ci(ps.mean_difference_statistic(np.zeros(12)), np.arange(12), n_resamples=200, seed=0)
    assert (ci["low"], ci["high"]) == (0.0, 0.0) and "same value" in ci["method"]


# ------------------------------------------------------------------------------------------------ clusters
def test_clusters_are_numbered_by_first_appearance_and_averaged():
    labels = ps.renumber_clusters(["P7", "P2", "P7", "P9", "P2"])
    assert labels.tolist() == [0, 1, 0, 2, 1]
    assert ps.cluster_means([1.0, 0.0, 0.5, 0.2, 1.0], labels) == pytest.approx([0.75, 0.5, 0.2])


def test_the_module_is_pure():
    """Functions of arrays only: nothing of nnunet_mtl is imported (but its errors, if ever needed)."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(ps))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [m for m in imported if m and m.startswith("nnunet_mtl") and m != "nnunet_mtl.errors"] == []
