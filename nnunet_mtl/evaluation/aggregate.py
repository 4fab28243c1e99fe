"""Several evaluations of the same kind (folds, seeds, runs) summarised: mean, sample std and a t-based 95%
interval of every number.

Aggregate (several folds / runs, :func:`aggregate_summaries`)::

    {"num_runs": n, "runs": [paths], "std": "...", "ci95": "...", "notes": [str],
     "metrics": {"segmentation.dice.mean": {"mean", "std", "n", "values", "ci95": [low, high] or null}, ...}}

Every number of the summaries (flattened to dotted keys; confusion matrices, reliability tables, confidence intervals,
settings, notes and definitions left out) gets the mean and the sample std (ddof=1) over the runs where it is defined;
a metric defined in fewer than two runs has std null. ``ci95`` is the t-based 95% confidence interval of the mean
over the runs, mean ± t_{0.975, n-1} · std / sqrt(n) (scipy.stats.t): with three repeated runs, as Fan et al. report,
the spread of the runs says how far their mean may be from the method's expected result; null with fewer than two
runs and for counts (num_cases, support: a run's size is not an estimate). An interval reaching past the metric's
range (Dice below 0, AUC above 1: over 2-3 folds the t quantile is 4.30 or 12.7) is clipped to it, marked
``"ci95_clipped": true`` and named in a note (:func:`metric_range`). Summaries computed with different NSD
tolerances or ECE bins are refused (their numbers mean different things); summaries from before these settings
existed are accepted.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from nnunet_mtl.atomic import json_safe, write_json
from nnunet_mtl.dataset.contract import read_json_object
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.bootstrap import CONFIDENCE_LEVEL
from nnunet_mtl.evaluation.shared import as_float, some_ids

# not numbers to average over runs: settings, texts, tables, intervals (an interval of a fold is not one of the folds)
_NOT_AGGREGATED = {"definitions", "notes", "confusion_matrix", "inputs", "missing_predictions", "ignored_predictions",
                   "confidence_intervals", "settings", "reliability"}


# settings that change what a metric means: runs computed with different values cannot be averaged
_MUST_AGREE = ("nsd_tolerance_px", "nsd_tolerance_mm", "ece_bins")


# the blocks of a summary: null when not evaluated (no class predictions; no masks), which is no metric
_BLOCKS = ("segmentation", "classification")


def flatten_metrics(obj, prefix="") -> dict[str, float]:
    out = {}
    for key, value in obj.items():
        if key in _NOT_AGGREGATED or (not prefix and key in _BLOCKS and value is None):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = as_float(value)
    return out


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_output_is_not_an_input(output_path, input_paths, overwrite: bool = False) -> None:
    """An aggregate output must be a new file: not one of the inputs (which it would overwrite), not a folder."""
    output_path = Path(output_path)
    for p in input_paths:
        if _same_file(output_path, Path(p)):
            raise NnunetMtlError(f"-o {output_path} is one of the summaries to aggregate; it would be overwritten. "
                                 f"Expected a new file, e.g. -o {output_path.parent / 'cv_summary.json'}")
    if output_path.is_dir():
        raise NnunetMtlError(f"-o {output_path} is a folder; expected the path of the aggregate JSON file, e.g. "
                             f"-o {output_path / 'cv_summary.json'}")
    from nnunet_mtl.outputs import check_output_file
    check_output_file(output_path, "-o", overwrite=overwrite)


AGGREGATE_STD = "sample std (ddof=1) over the runs where the metric is defined"


AGGREGATE_CI = ("t-based 95% confidence interval of the mean over the runs where the metric is defined: mean ± "
                "t_{0.975, n-1} * std / sqrt(n) with the sample std (scipy.stats.t), clipped to the metric's range "
                "(ci95_clipped true when it was); null with fewer than two runs and for counts")


def t_interval(values, confidence: float = CONFIDENCE_LEVEL) -> list[float] | None:
    """The t-based confidence interval of the mean of a few repeated runs, mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)
    (scipy.stats.t's quantile, sample sd): the runs are few (Fan et al. repeat three times), so the normal quantile
    would understate the uncertainty of their mean. None for fewer than two values (no spread to estimate)."""
    from scipy.stats import t
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    half = float(t.ppf((1 + confidence) / 2, values.size - 1)) * sd / math.sqrt(values.size)
    return [mean - half, mean + half]


# The range of each aggregated number, by the last part of its dotted key (a per-case statistic's .mean / .median /
# .std by the metric before it): a t-based interval over 2-3 folds is wide (t(0.975, 2) = 4.30 standard errors)
# and is clipped to it; counts get no interval at all (a fold's number of cases is not an estimate).
_COUNT_KEYS = {"num_cases", "support", "cases_with_spacing", "empty_reference_cases", "empty_prediction_cases",
               "annotated_cases", "unannotated_cases", "num_units", "num_images"}


_UNIT_RANGE = {"dice", "iou", "nsd_px", "nsd_mm", "attention_iou", "accuracy", "balanced_accuracy",
               "macro_precision", "macro_recall", "macro_f1", "weighted_precision", "weighted_recall", "weighted_f1",
               "auc", "auc_ovr", "ece", "sensitivity", "specificity", "precision", "recall", "f1"}


def metric_range(key: str) -> tuple[float, float] | str | None:
    """(low, high) of an aggregated number, "count" for a count (no interval), None when unknown (not clipped)."""
    parts = key.split(".")
    last = parts[-1]
    if last in _COUNT_KEYS:
        return "count"
    if last == "std":
        return (0.0, math.inf)
    name = parts[-2] if last in ("mean", "median") and len(parts) > 1 else last
    if name in _UNIT_RANGE:
        return (0.0, 1.0)
    if name.startswith("hd95"):
        return (0.0, math.inf)
    if name == "mcc":
        return (-1.0, 1.0)
    if name == "brier":
        return (0.0, 2.0)  # the multi-class Brier score: sum over classes of squared errors, mean over cases
    return None


def bounded_t_interval(key: str, values) -> tuple[list[float] | None, bool]:
    """:func:`t_interval` of ``values`` kept inside the metric's range (:func:`metric_range`); no interval for a
    count. Returns (interval, whether it was clipped)."""
    bounds = metric_range(key)
    if bounds == "count":
        return None, False
    ci = t_interval(values)
    if ci is None or bounds is None:
        return ci, False
    clipped = [max(ci[0], bounds[0]), min(ci[1], bounds[1])]
    return clipped, clipped != ci


def aggregate_summaries(summary_paths: list, output_path=None, overwrite: bool = False) -> dict:
    """Mean, sample std (ddof=1) and t-based 95% CI of the mean of every scalar metric over several summary.json
    files (folds / runs)."""
    if not summary_paths:
        raise NnunetMtlError("no summary.json given to aggregate; expected one per fold or run")
    if output_path is not None:
        check_output_is_not_an_input(output_path, summary_paths, overwrite)
    flat, settings, classification_only = [], {}, []
    for p in summary_paths:
        data = read_json_object(p, "a summary.json written by nnunet_mtl evaluate")
        if "segmentation" not in data:
            raise NnunetMtlError(f"{p} has no 'segmentation' block; expected a summary.json from nnunet_mtl evaluate")
        seg = data["segmentation"]
        if not (isinstance(seg, dict) or (seg is None and isinstance(data.get("classification"), dict))):
            raise NnunetMtlError(f"{p} has 'segmentation' {json.dumps(seg)[:40]} without a 'classification' block; "
                                 f"expected a summary.json from nnunet_mtl evaluate (segmentation null only for a "
                                 f"classification-only folder)")
        if seg is None:
            classification_only.append(str(p))
        run_settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
        for name in _MUST_AGREE:  # summaries from before these settings existed have none: nothing to compare
            if name.startswith("nsd_") and seg is None:
                continue  # a classification-only summary has no NSD: its tolerance means nothing
            if name in run_settings:
                first = settings.setdefault(name, (run_settings[name], p))
                if first[0] != run_settings[name]:
                    raise NnunetMtlError(f"{p} was evaluated with {name} {run_settings[name]} but {first[1]} with "
                                         f"{first[0]}; expected summaries computed with the same settings")
        flat.append(flatten_metrics(data))
    keys = list(dict.fromkeys(k for f in flat for k in f))
    metrics, clipped, counts = {}, [], []
    for key in keys:
        values = [f.get(key, math.nan) for f in flat]
        defined = np.array([v for v in values if not math.isnan(v)])
        ci, was_clipped = bounded_t_interval(key, defined)
        metrics[key] = {
            "mean": float(defined.mean()) if defined.size else math.nan,
            "std": float(defined.std(ddof=1)) if defined.size > 1 else math.nan,
            "n": int(defined.size),
            "values": values,
            "ci95": ci,
        }
        if was_clipped:
            metrics[key]["ci95_clipped"] = True
            clipped.append(key)
        if metric_range(key) == "count" and defined.size > 1:
            counts.append(key)
    notes = []
    if clipped:
        n = len(flat)
        from scipy.stats import t
        notes.append(f"{len(clipped)} t-based 95% CI(s) reached past the metric's range and are clipped to it "
                     f"(ci95_clipped): with {n} runs the half-width is t(0.975, {n - 1}) = "
                     f"{float(t.ppf(0.975, n - 1)):.2f} standard errors, so such an interval says little more than "
                     f"the range: {some_ids(clipped)}")
    if counts:
        notes.append(f"counts have a mean and std over the runs but no 95% CI (a run's number of cases is not an "
                     f"estimate): {some_ids(counts)}")
    single = [k for k, m in metrics.items() if m["n"] == 1]
    if len(flat) == 1:
        notes.append("one run only: no standard deviation and no 95% confidence interval")
    elif single:
        notes.append(f"{len(single)} metric(s) defined in one run only have no std and no 95% CI: "
                     f"{some_ids(single)}")
    if classification_only and len(classification_only) == len(flat):
        notes.append("classification only: no masks in any run (segmentation null in every summary)")
    elif classification_only:
        notes.append(f"{len(classification_only)} of {len(flat)} runs are classification only (segmentation null): "
                     f"the segmentation metrics are over the other runs ({some_ids(classification_only)})")
    agg = json_safe({"num_runs": len(flat), "runs": [str(p) for p in summary_paths],
                      "std": AGGREGATE_STD, "ci95": AGGREGATE_CI, "notes": notes,
                      "metrics": metrics})
    if output_path is not None:
        write_json(agg, Path(output_path))
    return agg
