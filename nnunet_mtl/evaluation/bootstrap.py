"""Bootstrap confidence intervals of one evaluation's metrics (``summary.json``'s ``confidence_intervals``): cases
resampled with replacement, a patient's images drawn together when cases.csv gives patients (cluster bootstrap),
percentile or BCa intervals (``scipy.stats.bootstrap``). The paired tests between runs are in
:mod:`nnunet_mtl.evaluation.paired_statistics`."""
from __future__ import annotations

import numpy as np

from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation.shared import ATTENTION_METRIC, SEG_METRICS

DEFAULT_BOOTSTRAP = 1000


DEFAULT_BOOTSTRAP_SEED = 0


CONFIDENCE_LEVEL = 0.95


BOOTSTRAP_METHODS = ("percentile", "BCa")


# the headline numbers that get a confidence interval, by their dotted key (as in the aggregate)
CI_SEGMENTATION = tuple(f"segmentation.{m}.mean" for m in SEG_METRICS)


CI_CLASSIFICATION = tuple(f"classification.{m}" for m in cls_metrics.RESAMPLED_METRICS)


CI_POSITIVE_CLASS = tuple(f"classification.{m}" for m in cls_metrics.POSITIVE_CLASS_METRICS)


def ci_definition(n_resamples: int = DEFAULT_BOOTSTRAP, method: str = "percentile") -> str:
    if n_resamples <= 0:
        return "not computed (--bootstrap 0)"
    return (f"{CONFIDENCE_LEVEL:.0%} bootstrap confidence intervals (scipy.stats.bootstrap, method={method!r}, "
            f"{n_resamples} resamples, seeded by --bootstrap-seed) of the mean over cases of each segmentation metric "
            f"(annotated references only) and of every scalar classification metric (with the positive class's "
            f"sensitivity, specificity, precision and F1). Resampling unit (ci_unit): 'patient' when cases.csv shows a "
            f"patient_id with several evaluated images - patients are drawn with replacement and bring all their "
            f"images (cluster bootstrap), a metric then being computed on the images of the drawn patients - else "
            f"'image'. A resample where a metric is undefined (e.g. AUC with one class only) is left out of that "
            f"metric's interval and counted in undefined_resamples")


def _resample_units(unit_of_case: list) -> tuple[np.ndarray, int, str]:
    """(unit index of each case, number of units, "patient" / "image"). Cases without a patient_id are units of
    their own; patients are the unit as soon as one patient has more than one evaluated image."""
    ids = [("patient", p) if p not in (None, "") else ("case", i) for i, p in enumerate(unit_of_case)]
    index = {u: j for j, u in enumerate(dict.fromkeys(ids))}
    codes = np.array([index[u] for u in ids], dtype=int)
    clustered = len(index) < len(ids)
    return (codes, len(index), "patient") if clustered else (np.arange(len(ids)), len(ids), "image")


def bootstrap_intervals(seg_values: dict, patient_ids: list, *, classification=None,
                        n_resamples: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_BOOTSTRAP_SEED,
                        method: str = "percentile", ece_bins: int = cls_metrics.DEFAULT_ECE_BINS,
                        positive_class: int | None = None) -> dict:
    """95% confidence intervals of the headline numbers by one (cluster) bootstrap with scipy.stats.bootstrap.

    ``seg_values``: {metric: (N,) per-case values, NaN where undefined (no spacing, unannotated reference)}, the
    metrics of :data:`SEG_METRICS` and optionally :data:`ATTENTION_METRIC`; ``patient_ids``: the patient of each case
    (None: unknown, a unit of its own); ``classification``: None or (case indices into the N cases, y_true, y_pred,
    probabilities); ``positive_class``: the class index whose sensitivity, specificity, precision and F1 get an
    interval too (None: no such headline). scipy draws resamples of the units (patients or images); each resample
    becomes a weight per case (its multiplicity), and every metric is computed for all resamples at once
    (:func:`nnunet_mtl.evaluation.classification.resampled_metrics`, weighted means), so 1000 resamples of a few
    hundred cases take a fraction of a second. Returns the ``confidence_intervals`` block of summary.json plus
    ``notes``.
    """
    from scipy.stats import bootstrap
    codes, num_units, unit = _resample_units(list(patient_ids))
    seg_names = [m for m in SEG_METRICS + (ATTENTION_METRIC,) if m in seg_values]
    keys = [f"segmentation.{m}.mean" for m in seg_names if np.isfinite(seg_values[m]).any()]
    seg = [(seg_values[k.split(".")[1]], np.isfinite(seg_values[k.split(".")[1]])) for k in keys]
    seg = [(np.where(ok, v, 0.0), ok.astype(float)) for v, ok in seg]
    cls_keys = []
    if classification is not None:
        cls_keys = list(CI_CLASSIFICATION) + (list(CI_POSITIVE_CLASS) if positive_class is not None else [])
        keys += cls_keys
    block = {"method": method, "confidence_level": CONFIDENCE_LEVEL, "n_resamples": int(n_resamples),
             "seed": int(seed), "ci_unit": unit, "num_units": int(num_units), "num_cases": int(len(codes)),
             "intervals": {k: None for k in keys}, "undefined_resamples": {}, "notes": []}
    if num_units < 2:
        block["notes"].append(f"no confidence intervals: the bootstrap needs at least two {unit}s, got {num_units}")
        return block
    if not keys:  # e.g. segmentation only, every reference unannotated
        block["notes"].append("no confidence intervals: no metric is defined on these cases")
        return block

    def statistic(units, axis=-1):
        units = np.asarray(units, dtype=int)
        flat = units.reshape(-1, units.shape[-1])
        b = flat.shape[0]
        counts = np.bincount((flat + num_units * np.arange(b)[:, None]).ravel(),
                             minlength=b * num_units).reshape(b, num_units).astype(float)
        w = counts[:, codes]  # (resamples, cases): each case's multiplicity
        rows = []
        with np.errstate(invalid="ignore", divide="ignore"):
            for values, ok in seg:
                rows.append((w @ values) / (w @ ok))
            if classification is not None:
                index, y_true, y_pred, probs = classification
                res = cls_metrics.resampled_metrics(w[:, index], y_true, y_pred, probs, ece_bins, positive_class)
                rows += [res[k.split(".", 1)[1]] for k in cls_keys]
        out = np.stack(rows)
        return out.reshape((len(rows),) + units.shape[:-1])

    batch = max(1, min(int(n_resamples), int(4_000_000 // max(1, len(codes)))))  # bounds the (batch, N) arrays
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's warning on NaN resamples: handled below
        res = bootstrap((np.arange(num_units),), statistic, n_resamples=int(n_resamples), batch=batch,
                        vectorized=True, method=method, confidence_level=CONFIDENCE_LEVEL,
                        rng=np.random.default_rng(int(seed)))
    low, high = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
    dist = np.atleast_2d(res.bootstrap_distribution)
    alpha = (1 - CONFIDENCE_LEVEL) / 2
    for i, key in enumerate(keys):
        undefined = int(np.isnan(dist[i]).sum())
        if undefined:
            block["undefined_resamples"][key] = undefined
            defined = dist[i][~np.isnan(dist[i])]
            if defined.size < 2 or method != "percentile":
                block["notes"].append(f"no confidence interval for {key}: undefined in {undefined} of "
                                      f"{n_resamples} resamples")
                continue
            low[i], high[i] = np.quantile(defined, [alpha, 1 - alpha])
            why = ("no annotated case with a spacing drawn" if key.endswith("_mm.mean") else
                   "no annotated reference drawn" if key.startswith("segmentation.") else
                   "one class only among the drawn cases" if key == "classification.auc" else
                   "no classified case drawn")
            block["notes"].append(f"{key}: undefined in {undefined} of {n_resamples} bootstrap resamples ({why}); "
                                  f"its interval is over the other {defined.size}")
        block["intervals"][key] = [float(low[i]), float(high[i])]
    return block
