"""Evaluate a folder of predicted masks (and optionally class predictions) against references; aggregate runs.

Inputs
    pred_dir/{case_id}.png and ref_dir/{case_id}.png: uint8 label maps (prediction: foreground = label > 0;
    reference: 0 background, 1 lesion, 2 nnU-Net's ignore label, anything else an error). Only cases present in
    both are evaluated; a reference without prediction is an error unless ``allow_missing``; a prediction without
    reference is ignored with a warning line. Other files in pred_dir (class_predictions.csv, json) are ignored.
    Unannotated references: a reference holding the ignore label (``none``: all 2; ``box``: 2 inside the lesion's
    box, 0 outside; see :mod:`nnunet_mtl.dataset.contract`), or whose case cases.csv marks ``box`` / ``none``, says
    nothing about which pixels are lesion: the case is left out of every segmentation metric (its per_case.csv row
    keeps empty segmentation cells) and kept in classification; summary.json lists it. A cross-validation's
    fold_K/validation against labelsTr meets them; test references are always full.
    pred_dir/attention/{case_id}.png (with ``attention``): the lesion map P that ``nnunet_mtl predict
    --save-attention`` writes (uint8 round(255 P), the image's geometry); attention_iou is the IoU of P >= 0.5
    (pixel >= 128) with the reference lesion: Fan et al.'s JSI of the localization map.
    class_predictions.csv: ``case_id, predicted_class, prob_<name>...`` (one column per class, in index order).
    Classification only: a pred_dir with no CASE.png masks but a class_predictions.csv (what ``nnunet_mtl predict``
    writes for a classification-only model such as nnUNetTrainerClsOnly) is scored on classification alone. The
    evaluated cases are still the reference folder's (the test set the segmentation runs are scored on): each needs
    a row in the CSV (else an error, or ``allow_missing``), a row without reference is ignored with a warning line.
    summary.json then has ``"segmentation": null``, intervals for classification only and a note saying so;
    per_case.csv has no segmentation columns. A pred_dir with neither masks nor class_predictions.csv is an error.
    cases.csv: the raw dataset's ``case_id, split, class, patient_id[, spacing_row_mm, spacing_col_mm], ...``, read
    and checked by :mod:`nnunet_mtl.dataset.contract` (zero-padded ids stay as they are); ``class`` gives the
    reference class, the spacings (optional, may be empty) give HD95 and NSD in mm, ``patient_id`` the bootstrap's
    resampling unit.

summary.json (NaN written as null)::

    {
      "num_cases": int,                         # cases evaluated (present in prediction and reference)
      "segmentation": {                         # null for a classification-only folder (no masks)
        "dice":    {"mean", "std", "median"},   # over cases; std is the population std (ddof=0) of the cases
        "iou":     {"mean", "std", "median"},
        "hd95_px": {"mean", "std", "median"},
        "hd95_mm": {"mean", "std", "median"} or null,   # over cases with a known spacing; null when none has one
        "nsd_px":  {"mean", "std", "median"},   # NSD (Nikolov et al. 2021) at settings.nsd_tolerance_px pixels
        "nsd_mm":  {"mean", "std", "median"} or null,   # at settings.nsd_tolerance_mm mm, cases with a spacing
        "attention_iou": {"mean", "std", "median"} or null,   # only with --attention: IoU of P >= 0.5 (Fan's JSI)
        "cases_with_spacing": int,
        "empty_reference_cases": int,           # reference mask empty (Dice/IoU/HD95 follow the empty conventions)
        "empty_prediction_cases": int,
        "annotated_cases": int,                 # cases in the segmentation metrics (num_cases - unannotated ones)
        "unannotated_cases": int
      },
      "classification": {                       # null when no class predictions or no reference classes
        "num_cases", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
        "weighted_precision", "weighted_recall", "weighted_f1", "auc", "mcc", "brier", "ece",
        "positive_class", "sensitivity", "specificity", "precision", "f1",   # only with a class named malignant
        "per_class": {name: {"precision", "recall", "f1", "support", "auc_ovr", "sensitivity", "specificity"}},
        "confusion_matrix": {"labels": [names by index], "matrix": [[rows = reference, columns = predicted]]},
        "reliability": {"n_bins", "bin_edges", "count", "mean_confidence", "accuracy", "ece"},  # the ECE's bins
        "notes": [str]
      } or null,
      "confidence_intervals": {                 # null with --bootstrap 0
        "method": "percentile", "confidence_level": 0.95, "n_resamples", "seed",
        "ci_unit": "patient" or "image",        # patient: cluster bootstrap, a patient's images drawn together
        "num_units", "num_cases",
        "intervals": {"segmentation.dice.mean": [low, high], ..., "classification.auc": [low, high], ...},
        "undefined_resamples": {key: count}     # resamples where the metric was undefined, left out of its interval
      },
      "settings": {"nsd_tolerance_px", "nsd_tolerance_mm", "ece_bins", "bootstrap_resamples", "bootstrap_seed",
                   "bootstrap_method"},
      "definitions": {metric: which definition it uses},
      "unannotated_references": [{"case_id", "kind", "source"}],   # left out of segmentation (kind box / none;
                                                # source "label map" or "cases.csv")
      "missing_predictions": [case_id],         # reference cases without a prediction (only with allow_missing)
      "ignored_predictions": [case_id],         # predictions without a reference
      "notes": [str],
      "inputs": {"pred_dir", "ref_dir", "class_predictions_csv", "cases_csv", "attention_dir"}
    }

Several runs: :mod:`nnunet_mtl.evaluation.aggregate` (mean ± std and t-based CIs over runs), per-fold prediction
folders: :mod:`nnunet_mtl.evaluation.per_fold`; the printed tables: :mod:`nnunet_mtl.evaluation.formatting`;
the inputs' readers: :mod:`nnunet_mtl.evaluation.inputs`, the bootstrap: :mod:`nnunet_mtl.evaluation.bootstrap`, the
figures: :mod:`nnunet_mtl.evaluation.plots`.

Every JSON / CSV / PNG written here is written to a temporary file in the same folder and renamed into place
(``os.replace``), so a reader never sees a half-written file and an interrupted run leaves the old file.
"""
from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nnunet_mtl.atomic import json_safe, write_csv, write_json
from nnunet_mtl.dataset.contract import LESION_LABEL
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation import segmentation as seg_metrics
from nnunet_mtl.evaluation.bootstrap import (
    BOOTSTRAP_METHODS,
    DEFAULT_BOOTSTRAP,
    DEFAULT_BOOTSTRAP_SEED,
    bootstrap_intervals,
    ci_definition,
)
from nnunet_mtl.evaluation.inputs import (
    CLASSIFICATION_ONLY_DEFINITION,
    check_attention_files,
    class_names_of,
    classification_only_csv,
    classification_only_note,
    fold_validation_cases,
    list_png_cases,
    read_attention_png,
    read_cases_table,
    read_label_png,
    reference_kind,
)
from nnunet_mtl.evaluation.plots import plot_confusion_matrix, plot_reliability_diagram, plot_roc_curve
from nnunet_mtl.evaluation.shared import (
    ATTENTION_FOLDER,
    ATTENTION_METRIC,
    ATTENTION_THRESHOLD,
    OUTPUT_FILES,
    SEG_METRICS,
    some_ids,
    summary_stats,
    warn,
)
from nnunet_mtl.inference.class_predictions import read_class_predictions
from nnunet_mtl.tables import class_index


def check_evaluation_output(output_dir) -> None:
    """Before any work: the output folder can be written, and none of the files it gets is a folder."""
    from nnunet_mtl.outputs import check_output_file, check_output_folder
    out = check_output_folder(output_dir, "evaluation output folder")
    for name in OUTPUT_FILES:
        check_output_file(out / name, "evaluation output")


# ----------------------------------------------------------------------------------------------- small helpers


# ----------------------------------------------------------------------------------------------- per case


def _evaluate_case(task: tuple) -> dict:
    """Worker: read one prediction / reference pair (and the stored lesion map) and compute its segmentation
    metrics; an unannotated reference gets NaN for every one of them (left out of the means)."""
    case, pred_path, ref_path, spacing, tol_px, tol_mm, table_kind, attention_path = task
    pred, ref = read_label_png(Path(pred_path)), read_label_png(Path(ref_path))
    if pred.shape != ref.shape:
        raise NnunetMtlError(f"case {case}: prediction {pred_path} has shape {pred.shape} but reference {ref_path} "
                             f"has {ref.shape}; expected the same size")
    kind, source = reference_kind(ref, ref_path, table_kind)
    attention = read_attention_png(Path(attention_path), ref.shape) if attention_path is not None else None
    if kind != "full":
        row = {m: math.nan for m in SEG_METRICS}
        row.update(ref_empty=False, pred_empty=not bool(pred.any()))
    else:
        row = seg_metrics.case_metrics(pred, ref, spacing, nsd_tolerance_px=tol_px, nsd_tolerance_mm=tol_mm)
    row = {"case_id": case, **row, "reference_mask": kind, "reference_mask_source": source}
    if attention is not None:
        row[ATTENTION_METRIC] = (math.nan if kind != "full" else
                                 seg_metrics.dice_iou(attention >= ATTENTION_THRESHOLD, ref == LESION_LABEL)[1])
    return row


def _run_cases(tasks: list[tuple], num_processes: int) -> list[dict]:
    from tqdm import tqdm
    # disable=None: a bar on a terminal, none in logs and pipes
    bar = tqdm(total=len(tasks), desc="evaluating", unit="case", disable=None, file=sys.stderr)
    results = []
    try:
        if num_processes <= 1 or len(tasks) < 2:
            for task in tasks:
                results.append(_evaluate_case(task))
                bar.update()
        else:
            workers = min(num_processes, len(tasks), os.cpu_count() or 1)
            chunk = max(1, len(tasks) // (workers * 8))
            from nnunet_mtl.processes import children_die_with_this_process
            children_die_with_this_process()  # a killed evaluate leaves no worker behind
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_evaluate_case, tasks, chunksize=chunk):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


# ----------------------------------------------------------------------------------------------- evaluate_folder
def check_metric_options(*, nsd_tolerance_px=seg_metrics.DEFAULT_NSD_TOLERANCE_PX,
                         nsd_tolerance_mm=seg_metrics.DEFAULT_NSD_TOLERANCE_MM,
                         ece_bins=cls_metrics.DEFAULT_ECE_BINS, bootstrap=DEFAULT_BOOTSTRAP,
                         bootstrap_seed=DEFAULT_BOOTSTRAP_SEED, bootstrap_method="percentile") -> None:
    """The metric settings (named by their evaluate options) are usable; one line naming the bad one otherwise."""
    for value, option, unit in ((nsd_tolerance_px, "--nsd-tolerance-px", "pixels"),
                                (nsd_tolerance_mm, "--nsd-tolerance", "mm")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise NnunetMtlError(f"{option} {value!r} is not a usable NSD tolerance; expected a finite number >= 0 "
                                 f"of {unit}")
    for value, option, low in ((ece_bins, "--ece-bins", 1), (bootstrap, "--bootstrap", 0), (bootstrap_seed,
                               "--bootstrap-seed", 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise NnunetMtlError(f"{option} {value!r} is not an integer >= {low}"
                                 + ("; expected the number of resamples (0: no confidence intervals)"
                                    if option == "--bootstrap" else ""))
    if bootstrap_method not in BOOTSTRAP_METHODS:
        raise NnunetMtlError(f"bootstrap method {bootstrap_method!r} is not one of {', '.join(BOOTSTRAP_METHODS)}")


UNANNOTATED_DEFINITION = (
    "a reference label map holding nnU-Net's ignore label 2 (none: all 2; box: 2 inside the lesion's bounding box, 0 "
    "outside), or whose case cases.csv marks box / none, does not say which pixels are lesion: the case is left out "
    "of every segmentation metric (Dice, IoU, HD95, NSD, attention_iou; empty cells in per_case.csv) and kept in the "
    "classification metrics; listed in unannotated_references")
ATTENTION_DEFINITION = (
    "Fan et al.'s JSI of the localization map: IoU of P >= 0.5 (stored pixel >= 128) with the reference lesion "
    "(label 1), where P is the lesion-aware head's attention map, predicted at the bottleneck's resolution and "
    "upsampled (bilinear per tile, averaged over mirrors, tiles and folds, back in the image's geometry) by nnunet_mtl "
    "predict --save-attention into PRED/attention/CASE.png; empty conventions as iou; unannotated references left out")


def unannotated_note(unannotated: list[dict], attention: bool = False) -> str:
    """The note line on unannotated references: how many, of which kinds, some ids, and what was done with them."""
    kinds = {}
    for entry in unannotated:
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    metrics = "Dice, IoU, HD95, NSD" + (", attention IoU" if attention else "")
    return (f"{len(unannotated)} unannotated reference(s) ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}; "
            f"ignore label in the label map or box / none in cases.csv) left out of {metrics}, kept in "
            f"classification: {some_ids([e['case_id'] for e in unannotated])}")


def evaluate_folder(pred_dir, ref_dir, *, class_predictions_csv=None, cases_csv=None, class_labels=None,
                    output_dir=None, num_processes: int = 1, allow_missing: bool = False,
                    nsd_tolerance_px: float = seg_metrics.DEFAULT_NSD_TOLERANCE_PX,
                    nsd_tolerance_mm: float = seg_metrics.DEFAULT_NSD_TOLERANCE_MM,
                    ece_bins: int = cls_metrics.DEFAULT_ECE_BINS, bootstrap: int = DEFAULT_BOOTSTRAP,
                    bootstrap_seed: int = DEFAULT_BOOTSTRAP_SEED, bootstrap_method: str = "percentile",
                    attention: bool = False) -> dict:
    """Evaluate predicted masks (and class predictions) against references; return the summary dict.

    With ``output_dir`` also writes per_case.csv, summary.json and, when classification is evaluated,
    confusion_matrix.png, roc_curve.png and reliability_diagram.png. See the module docstring for the summary
    layout and rules. Classification needs both ``class_predictions_csv`` and ``cases_csv`` (for the reference
    classes). ``nsd_tolerance_px`` / ``nsd_tolerance_mm``: the NSD tolerances; ``ece_bins``: the ECE's bins;
    ``bootstrap``: resamples of the 95% confidence intervals (0: none), drawn with ``bootstrap_seed``;
    ``attention``: also score the lesion maps in ``pred_dir/attention`` (attention_iou), each evaluated case must
    have one. Unannotated references (ignore label, or box / none in cases.csv) are left out of every segmentation
    metric and kept in classification. A ``pred_dir`` without masks is classification only (see the module
    docstring): its class predictions are ``class_predictions_csv`` or else ``pred_dir/class_predictions.csv``.
    """
    check_metric_options(nsd_tolerance_px=nsd_tolerance_px, nsd_tolerance_mm=nsd_tolerance_mm, ece_bins=ece_bins,
                         bootstrap=bootstrap, bootstrap_seed=bootstrap_seed, bootstrap_method=bootstrap_method)
    pred_cases = list_png_cases(pred_dir, "prediction")
    ref_cases = list_png_cases(ref_dir, "reference")
    if not ref_cases:
        raise NnunetMtlError(f"reference folder {ref_dir} has no .png files; expected CASE_ID.png label maps")
    notes = []
    own = fold_validation_cases(pred_dir)
    if own is not None:  # a training fold's validation: its own cases, not every reference of labelsTr
        cases, source = own
        outside = sorted(set(cases) - set(ref_cases))
        if outside:
            raise NnunetMtlError(f"{len(outside)} validation case(s) of {pred_dir} ({source}) have no reference in "
                                 f"{ref_dir}: {some_ids(outside)}; expected the training dataset's labelsTr")
        ref_cases = {c: ref_cases[c] for c in cases}
        notes.append(f"{pred_dir} is a training fold's validation: evaluated against its {len(cases)} validation "
                     f"cases ({source})")
    class_names = class_names_of(class_labels, "class_labels") if class_labels is not None else None
    classification_only = not pred_cases
    predictions = None
    if classification_only:  # no masks: the predicted cases are the rows of the class predictions
        class_predictions_csv = classification_only_csv(pred_dir, class_predictions_csv, cases_csv, attention)
        notes.append(classification_only_note(pred_dir))
        if class_names is None:
            notes.append("class_labels not given: classes taken from the prob_ columns in file order")
        class_names, predictions = read_class_predictions(class_predictions_csv, class_names)
        pred_cases = dict.fromkeys(predictions)
    missing = sorted(set(ref_cases) - set(pred_cases))
    ignored = sorted(set(pred_cases) - set(ref_cases))
    if missing and not allow_missing:
        if classification_only:
            raise NnunetMtlError(f"{len(missing)} reference case(s) have no class prediction in "
                                 f"{class_predictions_csv}: {some_ids(missing)}; expected one row per reference "
                                 f"case of {ref_dir} (or pass --allow-missing)")
        raise NnunetMtlError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {some_ids(missing)}; "
                             f"expected CASE_ID.png for every reference (or pass --allow-missing)")
    if missing:
        notes.append(f"{len(missing)} reference case(s) without prediction left out: {some_ids(missing)}")
        warn(notes[-1])
    if ignored:
        notes.append(f"{len(ignored)} prediction(s) without reference ignored: {some_ids(ignored)}")
        warn(notes[-1])
    cases = sorted(set(ref_cases) & set(pred_cases))
    if not cases:
        if classification_only:
            raise NnunetMtlError(f"no case of {ref_dir} has a class prediction in {class_predictions_csv}; expected "
                                 f"rows whose case_id names the references' CASE_ID.png")
        raise NnunetMtlError(f"no case of {ref_dir} has a prediction in {pred_dir}; expected matching CASE_ID.png "
                             f"names")

    table = read_cases_table(cases_csv, class_labels) if cases_csv is not None else {}
    attention_files = check_attention_files(pred_dir, cases) if attention else {}
    if output_dir is not None:
        check_evaluation_output(output_dir)
    # everything the inputs alone can tell is checked before the per-case work: the class predictions, and that
    # every evaluated case has them and a reference class (a cases.csv of another dataset fails here)
    cls_cases = []
    if class_predictions_csv is not None:
        if cases_csv is None:
            raise NnunetMtlError(f"class predictions {class_predictions_csv} need the reference classes; pass the "
                                 f"raw dataset's cases.csv (--cases or -d)")
        if predictions is None:
            if class_names is None:
                notes.append("class_labels not given: classes taken from the prob_ columns in file order")
            class_names, predictions = read_class_predictions(class_predictions_csv, class_names)
        no_row = [c for c in cases if c not in predictions]
        no_truth = [c for c in cases if c not in table]
        for what, ids, where in (("class prediction", no_row, class_predictions_csv),
                                 ("reference class", no_truth, cases_csv)):
            if ids and not allow_missing:
                raise NnunetMtlError(f"{len(ids)} evaluated case(s) have no {what} in {where}: {some_ids(ids)}; "
                                     f"expected one row per case (or pass --allow-missing)")
            if ids:
                notes.append(f"{len(ids)} case(s) without {what} left out of classification: {some_ids(ids)}")
                warn(notes[-1])
        cls_cases = [c for c in cases if c in predictions and c in table]
        if classification_only and not cls_cases:
            raise NnunetMtlError(f"no evaluated case has a reference class in {cases_csv}; expected the case table of "
                                 f"the dataset of {ref_dir} (classification only: nothing else to evaluate)")
        true_index = {c: class_index(table[c]["class"], class_names, f"{cases_csv}: class of case {c}")
                      for c in cls_cases}

    seg_keys = () if classification_only else SEG_METRICS + ((ATTENTION_METRIC,) if attention else ())
    segmentation, unannotated = None, []
    if classification_only:  # no per-case segmentation work: one row per evaluated case for the class columns
        per_case = [{"case_id": c} for c in cases]
    else:
        tasks = [(c, str(pred_cases[c]), str(ref_cases[c]), (table.get(c) or {}).get("spacing"),
                  float(nsd_tolerance_px), float(nsd_tolerance_mm), (table.get(c) or {}).get("mask"),
                  str(attention_files[c]) if attention else None) for c in cases]
        per_case = _run_cases(tasks, int(num_processes))
        annotated = [r for r in per_case if r["reference_mask"] == "full"]
        unannotated = [{"case_id": r["case_id"], "kind": r["reference_mask"], "source": r["reference_mask_source"]}
                       for r in per_case if r["reference_mask"] != "full"]
        with_spacing = [r for r in annotated if not math.isnan(r["hd95_mm"])]
        segmentation = {m: summary_stats([r[m] for r in per_case]) for m in seg_keys}
        segmentation.update({
            "cases_with_spacing": len(with_spacing),
            "empty_reference_cases": sum(r["ref_empty"] for r in annotated),
            "empty_prediction_cases": sum(r["pred_empty"] for r in annotated),
            "annotated_cases": len(annotated),
            "unannotated_cases": len(unannotated),
        })
        if unannotated:
            notes.append(unannotated_note(unannotated, attention))
            warn(notes[-1])
        if cases_csv is not None and len(with_spacing) < len(annotated):
            notes.append(f"hd95_mm and nsd_mm over {len(with_spacing)} of {len(annotated)} annotated cases (the "
                         f"others have no spacing in {cases_csv})")

    # ---- classification
    classification = None
    for r in per_case:
        r.update(true_class="", predicted_class="")
    y_true, y_pred, probs = [], [], np.zeros((0, len(class_names or [])))
    if class_predictions_csv is not None:
        by_case = {r["case_id"]: r for r in per_case}
        probs = []
        for c in cls_cases:
            t = true_index[c]
            p, pr = predictions[c]
            y_true.append(t)
            y_pred.append(p)
            probs.append(pr)
            by_case[c].update(true_class=class_names[t], predicted_class=class_names[p],
                              **{f"prob_{n}": float(v) for n, v in zip(class_names, pr)})
        probs = np.array(probs).reshape(len(cls_cases), len(class_names))
        if cls_cases:
            classification = cls_metrics.classification_metrics(y_true, y_pred, probs, class_names, ece_bins)
            for c, b in zip(cls_cases, cls_metrics.per_case_brier(y_true, probs)):
                by_case[c]["brier"] = float(b)
        else:
            notes.append("classification not evaluated: no case has both a class prediction and a reference class")
    elif table:
        for r in per_case:
            r["true_class"] = (table.get(r["case_id"]) or {}).get("class", "")

    # ---- confidence intervals
    intervals = None
    if bootstrap > 0:
        case_index = {r["case_id"]: i for i, r in enumerate(per_case)}
        intervals = bootstrap_intervals(
            {m: np.array([r[m] for r in per_case], dtype=float) for m in seg_keys},
            [((table.get(r["case_id"]) or {}).get("patient_id")) for r in per_case],
            classification=None if classification is None else
            (np.array([case_index[c] for c in cls_cases]), np.array(y_true), np.array(y_pred), probs),
            n_resamples=bootstrap, seed=bootstrap_seed, method=bootstrap_method, ece_bins=ece_bins,
            positive_class=None if classification is None else cls_metrics.positive_class_index(class_names))
        notes += intervals.pop("notes")

    if classification_only:
        definitions = {**cls_metrics.definitions(ece_bins),
                       "confidence_intervals": ci_definition(bootstrap, bootstrap_method),
                       "classification_only": CLASSIFICATION_ONLY_DEFINITION}
    else:
        definitions = {**seg_metrics.definitions(nsd_tolerance_px, nsd_tolerance_mm),
                       **cls_metrics.definitions(ece_bins),
                       "mean_std_median": "over cases; std = population std (ddof=0)",
                       "confidence_intervals": ci_definition(bootstrap, bootstrap_method),
                       "unannotated_references": UNANNOTATED_DEFINITION}
    if attention:
        definitions[ATTENTION_METRIC] = ATTENTION_DEFINITION
    summary = {
        "num_cases": len(per_case),
        "segmentation": segmentation,
        "classification": classification,
        "confidence_intervals": intervals,
        "settings": {"nsd_tolerance_px": float(nsd_tolerance_px), "nsd_tolerance_mm": float(nsd_tolerance_mm),
                     "ece_bins": int(ece_bins), "bootstrap_resamples": int(bootstrap),
                     "bootstrap_seed": int(bootstrap_seed), "bootstrap_method": bootstrap_method},
        "definitions": definitions,
        "unannotated_references": unannotated,
        "missing_predictions": missing,
        "ignored_predictions": ignored,
        "notes": notes,
        "inputs": {"pred_dir": str(pred_dir), "ref_dir": str(ref_dir),
                   "class_predictions_csv": None if class_predictions_csv is None else str(class_predictions_csv),
                   "cases_csv": None if cases_csv is None else str(cases_csv),
                   "attention_dir": str(Path(pred_dir) / ATTENTION_FOLDER) if attention else None},
    }
    summary = json_safe(summary)  # the returned dict equals what summary.json holds
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_per_case_csv(per_case, class_names if classification else None, out / OUTPUT_FILES[0],
                           attention=attention, segmentation=not classification_only)
        write_json(summary, out / OUTPUT_FILES[1])
        for stale in OUTPUT_FILES[2:]:
            (out / stale).unlink(missing_ok=True)  # plots of an earlier run with classification would mislead
        if classification is not None:
            plot_confusion_matrix(classification, out / OUTPUT_FILES[2])
            plot_roc_curve(y_true, probs, class_names, out / OUTPUT_FILES[3])
            plot_reliability_diagram(y_true, probs, class_names, classification["reliability"], out / OUTPUT_FILES[4])
    return summary


def written_files(output_dir) -> list[Path]:
    """The files evaluate_folder wrote into ``output_dir`` (plots only when classification was evaluated)."""
    return [Path(output_dir) / n for n in OUTPUT_FILES if (Path(output_dir) / n).is_file()]


def write_per_case_csv(per_case: list[dict], class_names: list[str] | None, path: Path,
                       attention: bool = False, segmentation: bool = True) -> Path:
    """One row per case; empty cell = not available (no spacing, unannotated reference, no class prediction).
    ``reference_mask`` says how the reference is annotated (full, box, none): box / none rows have empty
    segmentation cells. Without ``segmentation`` (a classification-only folder) there are no segmentation columns
    (nor ``reference_mask``): case_id, true_class, predicted_class, prob_<class>..., brier."""
    seg_fields = [*SEG_METRICS, *((ATTENTION_METRIC,) if attention else ()), "reference_mask"] if segmentation else []
    fields = ["case_id", *seg_fields, "true_class", "predicted_class"]
    fields += [f"prob_{n}" for n in (class_names or [])] + (["brier"] if class_names else [])

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6f}"
        return v
    return write_csv([{k: fmt(r.get(k, "")) for k in fields} for r in per_case], fields, path)
