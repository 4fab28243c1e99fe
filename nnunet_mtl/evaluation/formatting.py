"""The tables ``nnunet_mtl evaluate`` prints: one summary, an aggregate over runs, a per-fold folder."""
from __future__ import annotations

import math

from nnunet_mtl.evaluation.bootstrap import CONFIDENCE_LEVEL
from nnunet_mtl.evaluation.shared import ATTENTION_METRIC


def format_number(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def _tol(v) -> str:
    return "?" if v is None else f"{v:g}"


def _seg_rows(settings: dict) -> tuple:
    return (("dice", "Dice"), ("iou", "IoU"), ("hd95_px", "HD95 [px]"), ("hd95_mm", "HD95 [mm]"),
            ("nsd_px", f"NSD@{_tol(settings.get('nsd_tolerance_px'))}px"),
            ("nsd_mm", f"NSD@{_tol(settings.get('nsd_tolerance_mm'))}mm"), (ATTENTION_METRIC, "attention IoU"))


_CLS_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
             ("macro_precision", "macro precision"), ("macro_recall", "macro recall"), ("macro_f1", "macro F1"),
             ("weighted_precision", "weighted precision"), ("weighted_recall", "weighted recall"),
             ("weighted_f1", "weighted F1"), ("auc", "AUC"), ("mcc", "MCC"), ("brier", "Brier score"),
             ("ece", "ECE"))


# the positive class's headline numbers (a class named malignant), labelled with the class's name
_POSITIVE_ROWS = (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("precision", "precision"),
                  ("f1", "F1"))


def _ci(intervals: dict, key: str, digits: int = 4) -> str:
    ci = intervals.get(key)
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{format_number(ci[0], digits)}, {format_number(ci[1], digits)}]"


def format_summary_table(summary: dict) -> str:
    """Fixed-width text: segmentation (mean ± std, median, 95% CI of the mean over cases), classification (value
    and 95% CI), confusion matrix. A classification-only summary (segmentation null) says so in one line instead
    of the segmentation block."""
    seg = summary.get("segmentation") or {}
    settings = summary.get("settings") or {}
    ci_block = summary.get("confidence_intervals") or {}
    intervals = ci_block.get("intervals") or {}
    ci_head = f"{ci_block.get('confidence_level', CONFIDENCE_LEVEL):.0%} CI" if ci_block else ""
    if summary.get("segmentation") is None and "segmentation" in summary:
        lines = ["Segmentation: not evaluated (classification only: no masks in the prediction folder)"]
        return "\n".join(lines + _classification_lines(summary, settings, ci_block, intervals, ci_head))
    unannotated = summary.get("unannotated_references") or []
    heading = (f"Segmentation ({seg.get('annotated_cases', '?')} of {summary.get('num_cases', '?')} cases: "
               f"{len(unannotated)} unannotated reference(s) left out)" if unannotated else
               f"Segmentation ({summary.get('num_cases', '?')} cases)")
    lines = [heading,
             f"  {'metric':<14}{'mean ± std':>20}{'median':>10}  {ci_head + ' of the mean' if ci_head else ''}"]
    for key, label in _seg_rows(settings):
        if key not in seg:
            continue  # a summary from before the metric existed, or attention IoU not asked for
        stats = seg.get(key)
        if stats is None:
            why = ("n/a (no spacing)" if key.endswith("_mm") and seg.get("annotated_cases", 1) else
                   "n/a (unannotated)" if not seg.get("annotated_cases", 1) else "n/a")
            lines.append(f"  {label:<14}{why:>20}")
            continue
        lines.append(f"  {label:<14}{format_number(stats['mean']) + ' ± ' + format_number(stats['std']):>20}"
                     f"{format_number(stats['median']):>10}  {_ci(intervals, f'segmentation.{key}.mean')}".rstrip())
    lines.append(f"  empty reference: {seg.get('empty_reference_cases', 0)}   empty prediction: "
                 f"{seg.get('empty_prediction_cases', 0)}   with spacing: {seg.get('cases_with_spacing', 0)}")
    return "\n".join(lines + _classification_lines(summary, settings, ci_block, intervals, ci_head))


def _classification_lines(summary: dict, settings: dict, ci_block: dict, intervals: dict, ci_head: str) -> list:
    """The summary table's classification block, the bootstrap line and the notes."""
    lines = []
    cls = summary.get("classification")
    if cls:
        positive = cls.get("positive_class")
        rows = list(_CLS_ROWS) + ([(k, f"{label} ({positive})") for k, label in _POSITIVE_ROWS] if positive else [])
        label_width = max(20, *(len(label) + 2 for _k, label in rows))
        lines += ["", f"Classification ({cls.get('num_cases', '?')} cases)",
                  f"  {'metric':<{label_width}}{'value':>10}  {ci_head}".rstrip()]
        for key, label in rows:
            if key not in cls:
                continue
            if key == "auc" and len(cls["per_class"]) != 2:
                label = "AUC (OvR macro)"
            if key == "ece":
                label = f"ECE ({(cls.get('reliability') or {}).get('n_bins', settings.get('ece_bins', '?'))} bins)"
            lines.append(f"  {label:<{label_width}}{format_number(cls.get(key)):>10}  "
                         f"{_ci(intervals, f'classification.{key}')}".rstrip())
        width = max(10, *(len(n) + 2 for n in cls["per_class"]))
        lines += ["", f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'specificity':>12}{'F1':>10}{'support':>9}"
                      f"{'AUC ovr':>9}   (one-vs-rest; recall = sensitivity)"]
        for name, m in cls["per_class"].items():
            lines.append(f"  {name:<{width}}{format_number(m['precision']):>10}{format_number(m['recall']):>10}"
                         f"{format_number(m.get('specificity')):>12}{format_number(m['f1']):>10}{m['support']:>9}"
                         f"{format_number(m.get('auc_ovr'), 3):>9}")
        cm = cls["confusion_matrix"]
        col = max(8, *(len(n) + 2 for n in cm["labels"]))
        lines += ["", "  Confusion matrix (rows = reference, columns = predicted)",
                  "  " + " " * width + "".join(f"{n:>{col}}" for n in cm["labels"])]
        for name, row in zip(cm["labels"], cm["matrix"]):
            lines.append(f"  {name:<{width}}" + "".join(f"{v:>{col}}" for v in row))
        for note in cls.get("notes") or []:
            lines.append(f"  note: {note}")
    else:
        lines += ["", "Classification: not evaluated"]
    if ci_block:
        unit = ci_block.get("ci_unit", "image")
        per_unit = (f"{ci_block.get('num_units')} patients, {ci_block.get('num_cases')} images" if unit == "patient"
                    else f"{ci_block.get('num_units')} images")
        lines += ["", f"{ci_head}: {ci_block.get('method')} bootstrap, {ci_block.get('n_resamples')} resamples of "
                      f"{unit}s ({per_unit}), seed {ci_block.get('seed')}"]
    for note in summary.get("notes") or []:
        lines.append(f"note: {note}")
    return lines


def _t_ci(m: dict, digits: int = 4) -> str:
    ci = m.get("ci95")
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"[{format_number(ci[0], digits)}, {format_number(ci[1], digits)}]" + ("*" if m.get("ci95_clipped") else "")


def format_aggregate_table(agg: dict) -> str:
    """Every aggregated metric as mean ± std over runs, the t-based 95% CI of the mean, and the number of runs
    where it is defined."""
    metrics = agg.get("metrics", {})
    width = max([len("metric")] + [len(k) for k in metrics]) + 2
    lines = [f"Aggregate over {agg.get('num_runs', '?')} runs (mean ± sample std over runs; 95% CI of the mean: "
             f"t-based, mean ± t(0.975, n-1)·std/√n)",
             f"  {'metric':<{width}}{'mean ± std':>24}  {'95% CI (t)':<22}{'runs':>5}"]
    for key, m in metrics.items():
        mean_std = format_number(m['mean']) + ' ± ' + format_number(m['std'])
        lines.append(f"  {key:<{width}}{mean_std:>24}  {_t_ci(m):<22}{m['n']:>5}")
    if any(m.get("ci95_clipped") for m in metrics.values()):
        lines.append("* clipped to the metric's range (see the note)")
    for note in agg.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


_PER_FOLD_ROWS = (("num_cases", "cases"),
                  ("segmentation.dice.mean", "Dice"), ("segmentation.iou.mean", "IoU"),
                  ("segmentation.hd95_px.mean", "HD95 [px]"), ("segmentation.hd95_mm.mean", "HD95 [mm]"),
                  ("segmentation.nsd_px.mean", "NSD [px tol.]"), ("segmentation.nsd_mm.mean", "NSD [mm tol.]"),
                  ("segmentation.attention_iou.mean", "attention IoU"),
                  ("classification.accuracy", "accuracy"), ("classification.balanced_accuracy", "balanced accuracy"),
                  ("classification.macro_precision", "macro precision"),
                  ("classification.macro_recall", "macro recall"), ("classification.macro_f1", "macro F1"),
                  ("classification.weighted_precision", "weighted precision"),
                  ("classification.weighted_recall", "weighted recall"),
                  ("classification.weighted_f1", "weighted F1"), ("classification.auc", "AUC"),
                  ("classification.mcc", "MCC"), ("classification.brier", "Brier score"),
                  ("classification.ece", "ECE"),
                  ("classification.sensitivity", "sensitivity"), ("classification.specificity", "specificity"),
                  ("classification.precision", "precision"), ("classification.f1", "F1"))


def format_per_fold_table(result: dict) -> str:
    """The folds' mean ± std next to the fold ensemble (and each fold's own value), one metric per row."""
    k = result.get("num_folds", 0)
    metrics = result["mean_std_over_folds"]["metrics"]
    ensemble = (result.get("fold_ensemble") or {}).get("metrics")
    names = list(result.get("folds") or {})
    head_mean, head_ci, head_ens = f"mean ± std over {k} folds", "95% CI (t)", "fold ensemble"
    w_mean, w_ens, w_fold = max(len(head_mean), 21) + 2, len(head_ens) + 4, max(9, *(len(n) + 2 for n in names))
    w_ci = 22
    ens_folds = (result.get("ensemble") or {}).get("folds")
    lines = [f"Per-fold evaluation of {result.get('pred_dir')}: {k} folds"
             + (f" + the ensemble of folds {', '.join(map(str, ens_folds))}" if ens_folds else
                " + the fold ensemble" if ensemble is not None else " (no ensemble/ subfolder)"),
             f"  {'metric':<20}{head_mean:>{w_mean}}  {head_ci:<{w_ci}}{head_ens:>{w_ens}}"
             + "".join(f"{n:>{w_fold}}" for n in names)]
    settings = result.get("settings") or {}
    labels = {"segmentation.nsd_px.mean": f"NSD@{_tol(settings.get('nsd_tolerance_px'))}px",
              "segmentation.nsd_mm.mean": f"NSD@{_tol(settings.get('nsd_tolerance_mm'))}mm"}
    for key, label in _PER_FOLD_ROWS:
        label = labels.get(key, label) if settings else label
        m = metrics.get(key)
        if m is None or (m["n"] == 0 and (ensemble or {}).get(key) is None):
            continue  # not evaluated (no classification, no spacing)
        digits = 0 if key == "num_cases" else 4
        mean_std = (format_number(m["mean"], digits) if key == "num_cases" and m["std"] in (0, None)
                    else f"{format_number(m['mean'], digits)} ± {format_number(m['std'], digits)}")
        ens = "n/a" if ensemble is None else format_number(ensemble.get(key), digits)
        folds = "".join(f"{format_number(v, digits):>{w_fold}}" for v in m["values"])
        ci = "" if key == "num_cases" else _t_ci(m)
        lines.append(f"  {label:<20}{mean_std:>{w_mean}}  {ci:<{w_ci}}{ens:>{w_ens}}{folds}")
    lines += ["", f"  mean ± std over {k} folds: each fold's model alone, sample std (ddof=1) over the folds",
              "      (what Salama et al. 2026 report; see docs/evaluation.md)",
              f"  95% CI (t): of the mean over the folds, mean ± t(0.975, {max(k - 1, 0)})·std/√{k}"
              + (" (none with one fold)" if k < 2 else ""),
              "  fold ensemble: the folds' softmax averaged, one prediction (what -f K1 K2 ... writes)"]
    if any(key.startswith("segmentation.") for key in metrics):
        lines.append("  Dice / IoU / HD95 / NSD: the mean over the cases of each prediction")
    else:
        lines.append("  segmentation: not evaluated (classification only: no masks in the subfolders)")
    if result.get("positive_class"):
        lines.append(f"  sensitivity / specificity / precision / F1: {result['positive_class']} as the positive class")
    for note in result.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)
