"""Paired statistics of two runs on the same units: pure functions of numpy arrays (nnunet_mtl compare uses them).

Every difference is **first minus second** (A − B). A unit is an image, or a patient (a cluster of images) where
a function takes ``clusters``: one label per image.

- :func:`paired_bootstrap_ci`: bias-corrected and accelerated (BCa) bootstrap CI of a paired statistic with
  ``scipy.stats.bootstrap``. Resampled are the units (images, or patients as clusters): every resample draws units
  with replacement, and both runs get the same draw, so the pairing is kept (Efron & Tibshirani 1993; cluster
  bootstrap: Field & Welsh 2007). Its statistics: :func:`mean_difference_statistic`,
  :func:`auc_difference_statistic`; :func:`bootstrap_z_test` turns the bootstrap SD into a p-value.
- :func:`wilcoxon_paired`: Wilcoxon (1945) signed-rank test on paired differences with ``zero_method="zsplit"``
  (:data:`ZERO_METHOD`, see below); exact by :func:`signflip_exact_p` for few units with zeros or ties.
- :func:`mcnemar_exact`: McNemar's (1947) test of paired accuracy, exact version: two-sided binomial test
  (``scipy.stats.binomtest``) of the discordant pairs b (A right, B wrong) against c (A wrong, B right), p = 0.5.
- :func:`mcnemar_clustered`: the cluster-adjusted McNemar statistic of Durkalski et al. (2003) for several images
  per patient, χ² = (Σ_k d_k)² / Σ_k d_k² with d_k = (b_k − c_k) / n_k per patient, 1 degree of freedom.
- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) test for two correlated ROC curves (binary), with the
  fast midrank algorithm of Sun & Xu (2014).
- :func:`weighted_auc` / :func:`macro_ovr_auc`: ROC AUC as the (weighted) Mann-Whitney statistic, vectorized over
  bootstrap resamples; equal to ``sklearn.metrics.roc_auc_score`` (with ``sample_weight``), tested.
- :func:`holm`: Holm's (1979) step-down adjustment of a family of p-values.
- :func:`cluster_means` / :func:`renumber_clusters`: one value per cluster, cluster labels as indices.

Why ``zero_method="zsplit"``: segmentations of easy cases often tie exactly (Dice 1.0 vs 1.0, HD95 0 vs 0). The
default ``"wilcox"`` drops those zero differences, so a method that differs on 5 hard cases out of 200 is tested as
if there were 5 cases, which overstates the evidence. ``"zsplit"`` keeps the zeros in the ranking and gives half of
their rank sum to each side: ties are evidence of no difference and pull the statistic to its null value. (Pratt's
``"pratt"`` keeps them in the ranking but then drops their ranks; it is less conservative with many ties.)
See docs/comparison.md.
"""
from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
from scipy import stats

ZERO_METHOD = "zsplit"  # Wilcoxon's treatment of zero differences, and why (written into comparison.json)
ZERO_METHOD_REASON = ("zero differences (exact ties such as Dice 1.0 vs 1.0) stay in the ranking and their ranks are "
                      "split evenly between the positive and the negative side: ties count as evidence of no "
                      "difference instead of being dropped ('wilcox', scipy's default, which overstates the evidence "
                      "when many easy cases tie)")
CONFIDENCE = 0.95             # of every CI
DEFAULT_N_RESAMPLES = 10000   # bootstrap resamples
DEFAULT_SEED = 0              # of the bootstrap's generator
_ZERO = 1e-12          # |difference| below this is an exact tie (the CSV holds 6 decimals)
_WILCOXON_EXACT_MAX = 50          # exact null distribution without zeros or ties up to this many units
_WILCOXON_SIGN_FLIPS_MAX = 16     # with zeros or ties: all 2^n sign flips up to this many units
_BATCH_ELEMENTS = 2_000_000       # resamples x images held at once by the vectorized bootstrap


def holm(pvalues) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m defined p-values sorted, p_(1) <= ... <= p_(m), the adjusted p_(i) is
    max_{j <= i} min(1, (m - j + 1) p_(j)). NaN (a test that could not be done) stays NaN and does not count in m.
    Rejecting where the adjusted p <= alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    defined = ~np.isnan(p)
    values = p[defined]
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * values[order]))
    result = np.empty(m)
    result[order] = adjusted
    out[defined] = result
    return out


def _ties_among(values: np.ndarray) -> bool:
    return np.unique(values).size < values.size


def signflip_exact_p(differences, zero_method: str = ZERO_METHOD) -> float:
    """Two-sided p of the signed-rank statistic over all 2^k sign flips of the k nonzero differences (exact with
    zeros and ties, where the tabulated null distribution is not): 2 min(P(T >= t), P(T <= t)), capped at 1.

    The ranks are midranks of |d|, with the zeros ranked too for "zsplit" and "pratt" (their share of the statistic
    does not change under the flips) and removed first for "wilcox". Agrees with ``scipy.stats.wilcoxon(...,
    method=PermutationMethod(n_resamples=inf))``, enumerated here in one vectorized step.
    """
    d = np.asarray(differences, dtype=float)
    if zero_method == "wilcox":
        d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    nonzero = d != 0
    r, k = ranks[nonzero], int(np.count_nonzero(nonzero))
    if k == 0:
        return 1.0
    observed = r[d[nonzero] > 0].sum()
    flips = (np.arange(2 ** k)[:, None] >> np.arange(k)) & 1
    null = flips @ r
    tol = 1e-9 * max(1.0, abs(observed))
    return float(min(1.0, 2 * min(np.mean(null >= observed - tol), np.mean(null <= observed + tol))))


def wilcoxon_paired(differences, zero_method: str = ZERO_METHOD) -> dict:
    """Wilcoxon (1945) signed-rank test, two-sided, of paired differences (one per unit).

    ``zero_method`` defaults to :data:`ZERO_METHOD` ("zsplit"; see the module docstring). The p-value: the exact
    null distribution for at most 50 units without zeros or tied |differences|; with zeros or ties, all 2^k sign
    flips of the k nonzero differences for at most 16 units (:func:`signflip_exact_p`, exact too); otherwise the
    normal approximation with the tie correction and no continuity correction (``scipy.stats.wilcoxon``). All
    differences zero: p = 1 (no evidence of a difference).
    Returns {"statistic", "p", "method", "n", "n_zero", "zero_method"}.
    """
    d = np.asarray(differences, dtype=float)
    d = np.where(np.abs(d) < _ZERO, 0.0, d)
    n, n_zero = int(d.size), int(np.count_nonzero(d == 0))
    out = {"n": n, "n_zero": n_zero, "zero_method": zero_method}
    if n == 0:
        return {**out, "statistic": math.nan, "p": math.nan, "method": "no units"}
    if n_zero == n:
        return {**out, "statistic": math.nan, "p": 1.0, "method": "all differences zero"}
    ties = n_zero > 0 or _ties_among(np.abs(d[d != 0]))
    if n <= _WILCOXON_EXACT_MAX and not ties:
        method, name = "exact", "exact"
    elif n <= _WILCOXON_SIGN_FLIPS_MAX:
        res = stats.wilcoxon(d, zero_method=zero_method, correction=False, method="asymptotic")
        k = n - n_zero
        return {**out, "statistic": float(res.statistic), "p": signflip_exact_p(d, zero_method),
                "method": f"exact (all 2^{k} sign flips)"}
    else:
        method, name = "asymptotic", "normal approximation, tie-corrected"
    res = stats.wilcoxon(d, zero_method=zero_method, correction=False, alternative="two-sided", method=method)
    return {**out, "statistic": float(res.statistic), "p": float(min(1.0, res.pvalue)), "method": name}


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's (1947) test of two paired accuracies, exact version.

    b = cases A got right and B wrong, c = the reverse; under H0 b ~ Binomial(b + c, 1/2), two-sided
    ``scipy.stats.binomtest``. No discordant pair: p = 1. Returns {"b", "c", "p"}.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "p": p}


def mcnemar_clustered(correct_a, correct_b, clusters) -> dict:
    """Cluster-adjusted McNemar test of Durkalski, Palesch, Lipsitz & Rust (2003), for several images per patient.

    Per cluster k with n_k images: d_k = (b_k − c_k) / n_k, the mean over its images of (A right) − (B right).
    χ² = (Σ_k d_k)² / Σ_k d_k², referred to χ² with 1 degree of freedom. With one image per cluster it is the
    ordinary (asymptotic, uncorrected) McNemar statistic (b − c)² / (b + c). No discordant pair: p = 1.
    Returns {"b", "c", "statistic", "p"}.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    clusters = np.asarray(clusters)
    d = cluster_means(a.astype(float) - b_.astype(float), clusters)
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    denominator = float(np.sum(d ** 2))
    if denominator == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p": 1.0}
    chi2 = float(np.sum(d)) ** 2 / denominator
    return {"b": b, "c": c, "statistic": chi2, "p": float(stats.chi2.sf(chi2, df=1))}


def _delong_components(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and the structural components of DeLong et al. (1988), by the midranks of Sun & Xu (2014).

    ``scores``: (k, n), one row per classifier. For a positive case i, V10_i = (number of negatives scored below it
    + half the ties) / n_neg = (rank among all − rank among the positives) / n_neg; for a negative case j,
    V01_j = 1 − (rank among all − rank among the negatives) / n_pos. AUC_r = mean of V10 = mean of V01.
    """
    y = np.asarray(y_true).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    t_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)  # midranks
    v10 = (t_all[:, :m] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (t_all[:, m:] - stats.rankdata(neg, axis=1)) / m
    return v10.mean(axis=1), v10, v01


def delong_test(y_true, score_a, score_b, confidence: float = CONFIDENCE) -> dict:
    """DeLong, DeLong & Clarke-Pearson (1988) test for the difference of two correlated (paired) ROC AUCs.

    ``y_true``: 0/1 per case (1 = positive); ``score_a`` / ``score_b``: each classifier's score of the positive class
    on the same cases. The covariance of the two AUCs is S10 / m + S01 / n, with S10 and S01 the sample covariances
    (ddof=1) of the structural components over the m positives and the n negatives; z = (AUC_A − AUC_B) / sqrt(var),
    two-sided normal p-value, CI = difference ± z_(1+confidence)/2 · se. Computed with the midrank algorithm of
    Sun & Xu (2014), O(n log n). Undefined (NaN) with fewer than two positives or negatives; a zero variance gives
    p = 1 when the AUCs are equal (identical rankings, or both perfect).
    Returns {"auc_a", "auc_b", "difference", "variance", "se", "z", "p", "ci_low", "ci_high", "n_pos", "n_neg"}.
    """
    y = np.asarray(y_true).astype(int)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    out = {"n_pos": n_pos, "n_neg": n_neg}
    nan = dict.fromkeys(("auc_a", "auc_b", "difference", "variance", "se", "z", "p", "ci_low", "ci_high"), math.nan)
    if n_pos < 2 or n_neg < 2:
        return {**nan, **out}
    aucs, v10, v01 = _delong_components(y, np.stack([score_a, score_b]))
    s = np.cov(v10) / n_pos + np.cov(v01) / n_neg
    contrast = np.array([1.0, -1.0])
    variance = float(max(contrast @ s @ contrast, 0.0))
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(variance)
    half = stats.norm.ppf(0.5 + confidence / 2) * se
    if se > 0:
        z = diff / se
        p = float(2 * stats.norm.sf(abs(z)))
    else:
        z, p = (0.0, 1.0) if abs(diff) < _ZERO else (math.nan, math.nan)
    return {**out, "auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "difference": diff, "variance": variance,
            "se": se, "z": float(z), "p": p, "ci_low": float(diff - half), "ci_high": float(diff + half)}


def weighted_auc(y_binary, score, weights) -> np.ndarray:
    """ROC AUC of ``score`` for the 0/1 labels ``y_binary`` under case weights, one AUC per row of ``weights``.

    AUC = Σ_{i pos, j neg} w_i w_j [s_i > s_j + ½ (s_i = s_j)] / (Σ_pos w · Σ_neg w), the Mann-Whitney form; with a
    bootstrap resample's counts as weights it is the AUC of that resample (each drawn case repeated). O(n) per row
    after one sort. ``weights``: (R, n) or (n,); NaN where one side has no weight. Equals
    ``sklearn.metrics.roc_auc_score(y, score, sample_weight=w)``.
    """
    y = np.asarray(y_binary).astype(bool)
    score = np.asarray(score, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(score, kind="stable")
    sorted_scores = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # groups of tied scores
    w_pos = np.add.reduceat((w * y)[:, order], starts, axis=1)
    w_neg = np.add.reduceat((w * ~y)[:, order], starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    numerator = np.sum(w_pos * (below + 0.5 * w_neg), axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def macro_ovr_auc(y_true, probs, weights) -> np.ndarray:
    """The AUC of nnunet_mtl evaluate, per row of ``weights``: binary -> AUC of class index 1; more classes -> the
    one-vs-rest macro AUC, the mean over the classes with both sides present of AUC(class k vs rest, prob_k)
    (``roc_auc_score(multi_class="ovr", average="macro")`` when every class is present)."""
    y = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 2:
        return weighted_auc(y == 1, probs[:, 1], weights)
    per_class = np.stack([weighted_auc(y == k, probs[:, k], weights) for k in range(probs.shape[1])], axis=-1)
    defined = ~np.isnan(per_class)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined.any(axis=-1), np.nansum(per_class, axis=-1) / defined.sum(axis=-1), np.nan)


def cluster_means(values, clusters) -> np.ndarray:
    """The mean of ``values`` within each cluster, by cluster index 0..C-1 (clusters without values left out)."""
    values, clusters = np.asarray(values, dtype=float), np.asarray(clusters, dtype=int)
    sums = np.bincount(clusters, weights=values)
    counts = np.bincount(clusters)
    return sums[counts > 0] / counts[counts > 0]


def renumber_clusters(clusters) -> np.ndarray:
    """Cluster labels (one per image, any sortable values such as patient ids) as indices 0..C-1, numbered in
    order of first appearance; the input of :func:`cluster_means`. E.g. ``["P7", "P2", "P7"]`` -> ``[0, 1, 0]``."""
    _, first, inverse = np.unique(np.asarray(clusters), return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.reshape(-1)]


def _bootstrap_kwargs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"rng": rng} if "rng" in inspect.signature(stats.bootstrap).parameters else {"random_state": rng}


def paired_bootstrap_ci(statistic, clusters, *, n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED,
                        confidence: float = CONFIDENCE) -> dict:
    """Paired (cluster) bootstrap CI of ``statistic`` with ``scipy.stats.bootstrap``, BCa method.

    ``clusters``: one label per image (its patient; ``np.arange(n)`` for images as units). ``statistic(W)`` maps
    image weights W of shape (R, n_images) to R values; a resample draws C clusters with replacement and gives each
    image the number of times its cluster was drawn, so both runs see the same resample (paired) and a patient's
    images stay together (cluster bootstrap). The BCa acceleration comes from the leave-one-cluster-out jackknife.
    When BCa is undefined (e.g. every resample gives the same value) the percentile interval of the finite
    resamples is used and said in "method".
    Returns {"estimate", "low", "high", "method", "se" (sd of the bootstrap values), "n_units", "distribution"}.
    """
    labels = renumber_clusters(clusters)
    n_images = labels.size
    n_clusters = int(labels.max()) + 1 if n_images else 0
    estimate = float(statistic(np.ones((1, n_images)))[0]) if n_images else math.nan
    result = {"estimate": estimate, "n_units": n_clusters, "low": math.nan, "high": math.nan, "se": math.nan,
              "method": "", "distribution": np.array([])}
    if n_clusters < 2:
        return {**result, "method": "undefined (fewer than two units)"}

    def from_indices(idx, axis=-1):
        idx = np.asarray(idx)
        shape = idx.shape[:-1]
        idx = idx.reshape(-1, idx.shape[-1])
        rows = idx.shape[0]
        flat = (np.arange(rows)[:, None] * n_clusters + idx).ravel()
        counts = np.bincount(flat, minlength=rows * n_clusters).reshape(rows, n_clusters)
        return np.asarray(statistic(counts[:, labels].astype(float))).reshape(shape)

    batch = int(max(1, min(n_resamples, _BATCH_ELEMENTS // max(n_images, n_clusters))))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = stats.bootstrap((np.arange(n_clusters),), from_indices, n_resamples=int(n_resamples), batch=batch,
                              vectorized=True, confidence_level=confidence, method="BCa", **_bootstrap_kwargs(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    finite = dist[np.isfinite(dist)]
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    unit = "patients" if n_clusters < n_images else "images"
    method = f"paired bootstrap over {unit}, BCa"
    if finite.size and np.all(finite == finite[0]):
        low = high = float(finite[0])
        method = f"paired bootstrap over {unit} (every resample gives the same value)"
    elif not (math.isfinite(low) and math.isfinite(high)) and finite.size:
        alpha = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(finite, [alpha, 1 - alpha]))
        method = f"paired bootstrap over {unit}, percentile (BCa undefined)"
    se = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    return {**result, "low": low, "high": high, "method": method, "se": se, "distribution": dist}


def bootstrap_z_test(estimate: float, se: float) -> float:
    """Two-sided p of H0 "difference = 0" from a bootstrap standard error: 2 Φ(−|estimate| / se) (the bootstrap test
    of pROC's roc.test, Robin et al. 2011). se = 0: p = 1 when the estimate is 0, else undefined."""
    if not (math.isfinite(estimate) and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 1.0 if abs(estimate) < _ZERO else math.nan
    return float(2 * stats.norm.sf(abs(estimate) / se))


def mean_difference_statistic(differences):
    """statistic(W) for :func:`paired_bootstrap_ci`: the weighted mean of the per-image differences."""
    d = np.asarray(differences, dtype=float)
    return lambda w: (w @ d) / w.sum(axis=1)


def auc_difference_statistic(y_true, probs_a, probs_b):
    """statistic(W) for :func:`paired_bootstrap_ci`: AUC(A) − AUC(B) (:func:`macro_ovr_auc`) of the resample."""
    return lambda w: macro_ovr_auc(y_true, probs_a, w) - macro_ovr_auc(y_true, probs_b, w)
