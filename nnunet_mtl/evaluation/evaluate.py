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

Per-fold prediction folders (written by ``nnunet_mtl predict --per-fold``: ``fold_K/`` per fold's model alone,
``ensemble/`` for all folds together, ``per_fold.json`` saying which is which): :func:`per_fold_layout` recognizes
them, :func:`evaluate_per_fold` evaluates every subfolder into its own ``evaluation/`` and writes
``per_fold_summary.json``::

    {"num_folds": K,
     "folds": {"fold_0": {"folds": [0], "pred_dir", "summary", "num_cases"}, ...},
     "ensemble": {"folds": [0, 1, ...], "pred_dir", "summary", "num_cases"} or null,
     "mean_std_over_folds": <aggregate of the folds' summaries, as above, with the t-based ci95 over folds>,
     "fold_ensemble": {"metrics": {dotted key: value}},   # the ensemble's summary, flattened like the aggregate
     "positive_class": "malignant" or null,   # whose sensitivity / specificity / precision / f1 the rows are
     "definitions": {...}, "notes": [str], "per_fold_json": <per_fold.json> or null, "ref_dir", "pred_dir"}

Every JSON / CSV / PNG written here is written to a temporary file in the same folder and renamed into place
(``os.replace``), so a reader never sees a half-written file and an interrupted run leaves the old file.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nnunet_mtl.dataset.contract import (LESION_LABEL, MASK_COLUMN, SPACING_COLUMNS, kind_of_label_map,
                                         read_cases_csv, read_class_labels, read_json_object)
from nnunet_mtl.atomic import json_safe, save_figure_atomic, write_csv, write_json
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation import segmentation as seg_metrics
from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS, read_class_predictions
from nnunet_mtl.inference.per_fold import (ENSEMBLE_SUBFOLDER, FOLD_SUBFOLDER, PER_FOLD_FILE, fold_subfolder,  # noqa: F401 TEMPORARY re-export
                                          has_masks, per_fold_layout)
from nnunet_mtl.tables import class_index
from nnunet_mtl.tables import read_csv_rows, rows_by_case  # noqa: F401 TEMPORARY: compare.py's import, until it imports tables

SEG_METRICS = ("dice", "iou", "hd95_px", "hd95_mm", "nsd_px", "nsd_mm")
ATTENTION_METRIC = "attention_iou"  # with --attention: IoU of the lesion map P >= 0.5 (Fan et al.'s JSI)
ATTENTION_FOLDER = "attention"      # PRED/attention/CASE.png, written by nnunet_mtl predict --save-attention
ATTENTION_THRESHOLD = 128           # P >= 0.5 on the stored round(255 P)
UNANNOTATED_KINDS = ("box", "none")
OUTPUT_FILES = ("per_case.csv", "summary.json", "confusion_matrix.png", "roc_curve.png", "reliability_diagram.png")
DEFAULT_BOOTSTRAP = 1000
DEFAULT_BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95
BOOTSTRAP_METHODS = ("percentile", "BCa")
_json_safe = json_safe  # TEMPORARY (issue 24 refactor in progress): seeds.py's import, removed when it imports atomic


def check_evaluation_output(output_dir) -> None:
    """Before any work: the output folder can be written, and none of the files it gets is a folder."""
    from nnunet_mtl.outputs import check_output_file, check_output_folder
    out = check_output_folder(output_dir, "evaluation output folder")
    for name in OUTPUT_FILES:
        check_output_file(out / name, "evaluation output")
_MAX_LISTED = 5  # case ids named in a message before it says "and N more"


# ----------------------------------------------------------------------------------------------- small helpers
def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _some(ids: list[str]) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def _nan(x) -> float:
    return math.nan if x is None else float(x)


def summary_stats(values) -> dict | None:
    """mean, population std (ddof=0) and median over cases; None when there are no values."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return None
    return {"mean": float(arr.mean()), "std": float(arr.std()), "median": float(np.median(arr))}


# ----------------------------------------------------------------------------------------------- input reading
def list_png_cases(folder, role: str) -> dict[str, Path]:
    """{case_id: path} of the *.png files directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NnunetMtlError(f"{role} folder {folder} does not exist; expected a folder of CASE_ID.png label maps")
    return {p.name[:-len(".png")]: p for p in sorted(folder.iterdir()) if p.name.endswith(".png") and p.is_file()}


CLASSIFICATION_ONLY_DEFINITION = (
    "a prediction folder with no CASE.png masks but a class_predictions.csv (nnunet_mtl predict of a "
    "classification-only model, e.g. nnUNetTrainerClsOnly, whose decoder is never run) is scored on classification "
    "only, over the reference folder's cases (the test set the segmentation runs are scored on): segmentation is "
    "null, confidence intervals are those of the classification metrics, per_case.csv has no segmentation columns")


def classification_only_note(pred_dir) -> str:
    return (f"classification only: no masks in {pred_dir} (a classification-only model); segmentation not "
            f"evaluated")


def classification_only_csv(pred_dir, class_predictions_csv=None, cases_csv=None, attention: bool = False) -> Path:
    """The class predictions of a prediction folder without masks (a classification-only model): the given CSV, else
    PRED/class_predictions.csv. One line naming the folder and what was expected when it has neither masks nor
    class predictions, when the reference classes are not given, or with ``attention`` (no masks to score)."""
    pred_dir = Path(pred_dir)
    path = Path(class_predictions_csv) if class_predictions_csv is not None else pred_dir / CLASS_PREDICTIONS
    if class_predictions_csv is None and not path.is_file():
        if any(pred_dir.glob("class_predictions_part*.csv")):
            raise NnunetMtlError(f"prediction folder {pred_dir} has no CASE_ID.png masks and no {CLASS_PREDICTIONS}, "
                                 f"only class_predictions_part*.csv (from -num_parts); expected {CLASS_PREDICTIONS} "
                                 f"(merge the parts, or pass one with --classes)")
        raise NnunetMtlError(f"prediction folder {pred_dir} has no CASE_ID.png masks and no {CLASS_PREDICTIONS}; "
                             f"expected the masks and / or the {CLASS_PREDICTIONS} that nnunet_mtl predict writes")
    if cases_csv is None:
        raise NnunetMtlError(f"prediction folder {pred_dir} has no masks, only class predictions {path} (a "
                             f"classification-only model); expected the reference classes: pass --cases or -d")
    if attention:
        raise NnunetMtlError(f"--attention: prediction folder {pred_dir} has no masks, only class predictions (a "
                             f"classification-only model); expected masks and lesion maps to score (leave "
                             f"--attention out)")
    return path


def read_label_png(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as e:  # PIL raises several types for unreadable files
        raise NnunetMtlError(f"cannot read {path} as a PNG label map ({e.__class__.__name__}: {e})") from None
    if arr.ndim != 2:
        raise NnunetMtlError(f"{path} has shape {arr.shape}; expected a single-channel 2D label map")
    return arr


def read_cases_table(path, class_labels: dict | None = None) -> dict[str, dict]:
    """cases.csv -> {case_id: {"class": str, "spacing": (row_mm, col_mm) or None, "patient_id": str[, "mask": kind]}}.

    Read and checked by the contract's :func:`read_cases_csv` (ids stay text, so "000123" keeps its zeros; spacings
    are floats); with ``class_labels`` every class must be one of them, without (segmentation only) any name goes.
    ``mask`` (full / box / none, how the case's label map is annotated) only when cases.csv has that column: a box or
    none case has no reference for the segmentation metrics.
    """
    cases = read_cases_csv(path, class_labels)
    if all(c in cases.columns for c in SPACING_COLUMNS):
        pairs = zip(*(cases[c] for c in SPACING_COLUMNS))
        spacings = [None if math.isnan(r) or math.isnan(c) else (float(r), float(c)) for r, c in pairs]
    else:
        spacings = [None] * len(cases)
    table = {case: {"class": cls, "spacing": sp, "patient_id": patient}
             for case, cls, sp, patient in zip(cases["case_id"], cases["class"], spacings, cases["patient_id"])}
    if MASK_COLUMN in cases.columns:
        for case, kind in zip(cases["case_id"], cases[MASK_COLUMN]):
            table[case]["mask"] = kind
    return table


def load_class_labels(path) -> dict[str, int]:
    """class_labels of a dataset.json, checked by the contract; a JSON file holding just {name: index} works too."""
    data = read_json_object(path)
    if "class_labels" not in data and data and all(type(v) is int for v in data.values()):
        data = {"class_labels": data}  # the bare mapping
    return read_class_labels(data, source=str(path))


def _class_names(class_labels: dict, source: str) -> list[str]:
    try:
        return cls_metrics.ordered_class_names(class_labels)
    except ValueError as e:
        raise NnunetMtlError(f"{source}: {e}") from None


# ----------------------------------------------------------------------------------------------- per case
def reference_kind(ref: np.ndarray, ref_path, table_kind: str | None = None) -> tuple[str, str]:
    """(mask kind, where it was read) of a reference label map: ``box`` / ``none`` when the map holds the ignore
    label (the label map says so), else the kind cases.csv gives (``table_kind``), else ``full``. The map is checked
    by the contract's :func:`~nnunet_mtl.dataset.contract.kind_of_label_map`: values other than 0 / 1 / 2, lesion
    and ignore pixels together, or an ignore region that is no box are one line naming the file. A 2 is never read as
    lesion."""
    kind = kind_of_label_map(ref, f"reference {ref_path}")
    if kind != "full":
        return kind, "label map"
    if table_kind in UNANNOTATED_KINDS:
        return table_kind, "cases.csv"
    return "full", "label map"


def read_attention_png(path: Path, shape: tuple) -> np.ndarray:
    """A stored lesion map (uint8 round(255 P), one channel) of the reference's ``shape``; one line naming the file
    otherwise."""
    att = read_label_png(path)
    if att.dtype != np.uint8:
        raise NnunetMtlError(f"{path} has pixel type {att.dtype}; expected the uint8 round(255 P) that nnunet_mtl "
                             f"predict --save-attention writes")
    if att.shape != shape:
        raise NnunetMtlError(f"{path} has shape {att.shape} but its reference has {shape}; expected the lesion map in "
                             f"the image's geometry (nnunet_mtl predict --save-attention)")
    return att


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
            f"classification: {_some([e['case_id'] for e in unannotated])}")


def check_attention_files(pred_dir, cases: list[str]) -> dict[str, Path]:
    """{case: PRED/attention/CASE.png} for every evaluated case, before any metric is computed; one line naming the
    folder and some missing cases otherwise."""
    folder = Path(pred_dir) / ATTENTION_FOLDER
    if not folder.is_dir():
        raise NnunetMtlError(f"--attention: {folder} does not exist; expected the lesion maps that nnunet_mtl predict "
                             f"--save-attention writes (a model whose head returns an attention map)")
    found = list_png_cases(folder, "attention")
    missing = [c for c in cases if c not in found]
    if missing:
        raise NnunetMtlError(f"--attention: {len(missing)} predicted case(s) have no lesion map in {folder}: "
                             f"{_some(missing)}; expected CASE.png for every predicted case (predict again with "
                             f"--save-attention)")
    return {c: found[c] for c in cases}


def fold_validation_cases(pred_dir) -> tuple[list[str], str] | None:
    """The validation cases of a training fold's ``validation/`` folder (nnU-Net's
    ``nnUNet_results/DatasetNNN_X/TRAINER__PLANS__CONF/fold_K/validation``) and where they were read: fold K's
    ``val`` list of ``nnUNet_preprocessed/DatasetNNN_X/splits_final.json``, or, without it, the cases nnU-Net's own
    ``validation/summary.json`` scored. The same for nnU-Net's merged cross-validation folder
    (``TRAINER__PLANS__CONF/crossval_results_folds_0_1_2``, of accumulate_cv_results and
    nnUNetv2_find_best_configuration): the union of those folds' val lists. None for any other folder. A fold's
    validation holds a third or a fifth of the training cases: it is evaluated against those, not against every
    reference in labelsTr."""
    pred = Path(pred_dir).resolve()
    fold = FOLD_SUBFOLDER.fullmatch(pred.parent.name)
    merged = _CROSSVAL_FOLDER.fullmatch(pred.name)
    if merged is not None and "__" in pred.parent.name:  # nnU-Net's accumulate_cv_results: the folds' validations
        ks, dataset = [int(k) for k in merged.group(1).split("_")], pred.parent.parent.name
    elif pred.name == "validation" and fold is not None and "__" in pred.parent.parent.name:
        ks, dataset = [int(fold.group(1))], pred.parent.parent.parent.name
    else:
        return None
    root = os.environ.get("nnUNet_preprocessed")
    split = Path(root) / dataset / "splits_final.json" if root else None
    if split is not None and split.is_file():
        from nnunet_mtl.dataset.splits import read_splits
        folds = read_splits(split)
        if all(k < len(folds) for k in ks):
            what = f"fold {ks[0]}'s val list" if len(ks) == 1 else f"the val lists of folds {', '.join(map(str, ks))}"
            return [str(c) for k in ks for c in folds[k]["val"]], f"{what} in {split}"
    summary = pred / "summary.json"
    if summary.is_file():
        try:
            per_case = json.loads(summary.read_text()).get("metric_per_case") or []
            cases = [Path(str(r["reference_file"])).name.rsplit(".", 1)[0] for r in per_case]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if cases:
            return cases, f"the cases nnU-Net's {summary} scored"
    return None


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
                                 f"{ref_dir}: {_some(outside)}; expected the training dataset's labelsTr")
        ref_cases = {c: ref_cases[c] for c in cases}
        notes.append(f"{pred_dir} is a training fold's validation: evaluated against its {len(cases)} validation "
                     f"cases ({source})")
    class_names = _class_names(class_labels, "class_labels") if class_labels is not None else None
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
                                 f"{class_predictions_csv}: {_some(missing)}; expected one row per reference case of "
                                 f"{ref_dir} (or pass --allow-missing)")
        raise NnunetMtlError(f"{len(missing)} reference case(s) have no prediction in {pred_dir}: {_some(missing)}; "
                             f"expected CASE_ID.png for every reference (or pass --allow-missing)")
    if missing:
        notes.append(f"{len(missing)} reference case(s) without prediction left out: {_some(missing)}")
        _warn(notes[-1])
    if ignored:
        notes.append(f"{len(ignored)} prediction(s) without reference ignored: {_some(ignored)}")
        _warn(notes[-1])
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
                raise NnunetMtlError(f"{len(ids)} evaluated case(s) have no {what} in {where}: {_some(ids)}; "
                                     f"expected one row per case (or pass --allow-missing)")
            if ids:
                notes.append(f"{len(ids)} case(s) without {what} left out of classification: {_some(ids)}")
                _warn(notes[-1])
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
            _warn(notes[-1])
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


# ----------------------------------------------------------------------------------------------- bootstrap
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


# ----------------------------------------------------------------------------------------------- plots
def _figure(width=5.0, height=4.5):
    # Figure + Agg canvas directly: no pyplot global state, works without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(classification: dict, path: Path) -> Path:
    labels = classification["confusion_matrix"]["labels"]
    matrix = np.array(classification["confusion_matrix"]["matrix"])
    fig = _figure(1.5 + 1.0 * len(labels), 1.2 + 1.0 * len(labels))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if top and matrix[i, j] > top / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def plot_roc_curve(y_true, probs: np.ndarray, class_names: list[str], path: Path) -> Path:
    """roc_curve.png: :func:`roc_figure`, written atomically."""
    return save_figure_atomic(roc_figure(y_true, probs, class_names), path)


def roc_figure(y_true, probs: np.ndarray, class_names: list[str]):
    """Binary: the ROC of class index 1; more classes: one one-vs-rest ROC per class with both sides present, and
    for each other class a legend line that says why it has none."""
    from sklearn.metrics import roc_auc_score, roc_curve
    y_true = np.asarray(y_true)
    fig = _figure()
    ax = fig.add_subplot()
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    drawn = 0
    for c in classes:
        y = (y_true == c).astype(int)
        if y.min() == y.max():
            # said in the legend: a class missing from the plot is not a class the model got right
            why = f"no {class_names[c]} case in the reference" if y.max() == 0 else f"every case is {class_names[c]}"
            ax.plot([], [], " ", label=f"{class_names[c]}: no ROC ({why})")
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc_score(y, probs[:, c]):.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" if len(class_names) == 2 else "ROC, one-vs-rest")
    ax.legend(loc="lower right")
    if not drawn:
        ax.text(0.5, 0.5, "undefined: one class only in the reference", ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_reliability_diagram(y_true, probs: np.ndarray, class_names: list[str], reliability: dict,
                             path: Path) -> Path:
    """Top-label reliability diagram (the ECE's bins: accuracy vs mean confidence, with the number of cases per
    bin below); for two classes also the positive class's calibration curve (sklearn ``calibration_curve``)."""
    edges = np.asarray(reliability["bin_edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    count = np.asarray(reliability["count"])
    acc = np.asarray(reliability["accuracy"], dtype=float)
    conf = np.asarray(reliability["mean_confidence"], dtype=float)
    binary = len(class_names) == 2
    fig = _figure(9.5 if binary else 5.0, 5.5)
    grid = fig.add_gridspec(2, 2 if binary else 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0, 0])
    filled = count > 0
    ax.bar(edges[:-1][filled], acc[filled], width=width[filled], align="edge", color="tab:blue", alpha=0.7,
           edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar(edges[:-1][filled], np.abs(conf - acc)[filled], bottom=np.minimum(conf, acc)[filled],
           width=width[filled], align="edge", fill=False, hatch="//", edgecolor="tab:red", linewidth=0.5,
           label="gap |accuracy - confidence|")
    ax.plot(centers[filled], conf[filled], linestyle="none", marker="_", markersize=12, color="tab:red",
            label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"top-label reliability, ECE {reliability['ece']:.3f} ({reliability['n_bins']} bins)")
    ax.legend(loc="upper left")
    hist = fig.add_subplot(grid[1, 0], sharex=ax)
    hist.bar(centers, count, width=width, color="grey", edgecolor="black", linewidth=0.5)
    hist.set_xlabel("confidence (max probability)")
    hist.set_ylabel("cases")
    from matplotlib.ticker import MaxNLocator
    hist.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    if binary:
        from sklearn.calibration import calibration_curve
        y = (np.asarray(y_true) == 1).astype(int)
        p1 = np.clip(probs[:, 1], 0.0, 1.0)
        ax2 = fig.add_subplot(grid[0, 1])
        ax2.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        if y.min() != y.max():
            frac, mean_p = calibration_curve(y, p1, n_bins=reliability["n_bins"], strategy="uniform")
            ax2.plot(mean_p, frac, marker="o", label=class_names[1])
            ax2.legend(loc="upper left")
        else:
            ax2.text(0.5, 0.5, "undefined: one class only in the reference", ha="center", va="center")
        ax2.set_xlim(0, 1)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel(f"fraction {class_names[1]}")
        ax2.set_title(f"calibration of prob_{class_names[1]}")
        hist2 = fig.add_subplot(grid[1, 1], sharex=ax2)
        hist2.hist(p1, bins=edges, color="grey", edgecolor="black", linewidth=0.5)
        hist2.set_xlabel(f"prob_{class_names[1]}")
        hist2.set_ylabel("cases")
        hist2.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    fig.tight_layout()
    return save_figure_atomic(fig, path)


# ----------------------------------------------------------------------------------------------- aggregation
# not numbers to average over runs: settings, texts, tables, intervals (an interval of a fold is not one of the folds)
_NOT_AGGREGATED = {"definitions", "notes", "confusion_matrix", "inputs", "missing_predictions", "ignored_predictions",
                   "confidence_intervals", "settings", "reliability"}
# settings that change what a metric means: runs computed with different values cannot be averaged
_MUST_AGREE = ("nsd_tolerance_px", "nsd_tolerance_mm", "ece_bins")


# the blocks of a summary: null when not evaluated (no class predictions; no masks), which is no metric
_BLOCKS = ("segmentation", "classification")


def _flatten(obj, prefix="") -> dict[str, float]:
    out = {}
    for key, value in obj.items():
        if key in _NOT_AGGREGATED or (not prefix and key in _BLOCKS and value is None):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = _nan(value)
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
        flat.append(_flatten(data))
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
                     f"the range: {_some(clipped)}")
    if counts:
        notes.append(f"counts have a mean and std over the runs but no 95% CI (a run's number of cases is not an "
                     f"estimate): {_some(counts)}")
    single = [k for k, m in metrics.items() if m["n"] == 1]
    if len(flat) == 1:
        notes.append("one run only: no standard deviation and no 95% confidence interval")
    elif single:
        notes.append(f"{len(single)} metric(s) defined in one run only have no std and no 95% CI: "
                     f"{_some(single)}")
    if classification_only and len(classification_only) == len(flat):
        notes.append("classification only: no masks in any run (segmentation null in every summary)")
    elif classification_only:
        notes.append(f"{len(classification_only)} of {len(flat)} runs are classification only (segmentation null): "
                     f"the segmentation metrics are over the other runs ({_some(classification_only)})")
    agg = json_safe({"num_runs": len(flat), "runs": [str(p) for p in summary_paths],
                      "std": AGGREGATE_STD, "ci95": AGGREGATE_CI, "notes": notes,
                      "metrics": metrics})
    if output_path is not None:
        write_json(agg, Path(output_path))
    return agg


# ----------------------------------------------------------------------------------------------- per-fold folders
PER_FOLD_SUMMARY = "per_fold_summary.json"
PER_FOLD_SUMMARY_CSV = "per_fold_summary.csv"
_CROSSVAL_FOLDER = re.compile(r"crossval_results_folds_(\d+(?:_\d+)*)")  # nnU-Net's folds_tuple_to_string
PER_FOLD_DEFINITIONS = {
    "mean_std_over_folds": "each fold's model alone on the same test cases, one summary per fold; mean and sample "
                           "std (ddof=1) over the folds of each number (e.g. of the folds' mean Dice, of their macro "
                           "F1). The cross-validation spread the thyroid paper (Salama et al. 2026) reports",
    "fold_ensemble": "all folds together, one prediction (nnU-Net's fold ensemble: segmentation and class softmax "
                     "averaged over the folds), what nnunet_mtl predict -f 0 1 2 writes; a single number, no std",
}


def evaluate_per_fold(pred_dir, ref_dir, layout: dict, *, cases_csv=None, class_labels=None, output_dir=None,
                      num_processes: int = 1, allow_missing: bool = False, log=print, attention: bool = False,
                      **metric_options) -> dict:
    """Evaluate every subfolder of a per-fold folder (see :func:`per_fold_layout`) and aggregate the folds.

    Each subfolder is evaluated by :func:`evaluate_folder` into ``SUB/evaluation/`` (or ``output_dir/SUB/`` when
    ``output_dir`` is given) with its own class_predictions.csv; the folds' summaries are aggregated by
    :func:`aggregate_summaries` (mean ± sample std over folds) and, next to them, the ensemble's numbers are kept
    as they are. per_fold_summary.json (and .csv) go into ``pred_dir/evaluation/`` (or ``output_dir``).
    Everything that can be checked is checked before the first file is written. ``metric_options`` (NSD
    tolerances, ECE bins, bootstrap) and ``attention`` (every subfolder's own ``attention/`` lesion maps) go to every
    subfolder's :func:`evaluate_folder`.
    """
    check_metric_options(**metric_options)
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    subfolders = list(layout["folds"]) + ([layout["ensemble"]] if layout.get("ensemble") else [])
    notes = list(layout.get("notes") or [])
    source = PER_FOLD_FILE if layout.get("info") is not None else "the fold_K folder names"
    ref_cases = list_png_cases(ref_dir, "reference")
    if not ref_cases:
        raise NnunetMtlError(f"reference folder {ref_dir} has no .png files; expected CASE_ID.png label maps")
    for name, _folds in subfolders:
        if not (pred_dir / name).is_dir():
            raise NnunetMtlError(f"{pred_dir / name} (listed in {pred_dir / PER_FOLD_FILE}) does not exist; expected "
                                 f"the per-fold prediction to have finished (rerun it with --continue_prediction)")
    class_csvs = {}
    class_names = _class_names(class_labels, "class_labels") if class_labels is not None else None
    for name, _folds in subfolders:
        sub = pred_dir / name
        predicted = list_png_cases(sub, "prediction")
        csv_path = sub / CLASS_PREDICTIONS
        if not predicted:  # classification only: the rows of its class_predictions.csv are its predictions
            class_csvs[name] = classification_only_csv(sub, None, cases_csv, attention)
            rows = read_class_predictions(class_csvs[name], class_names)[1]
            missing = sorted(set(ref_cases) - set(rows))
            if missing and not allow_missing:
                raise NnunetMtlError(f"{len(missing)} reference case(s) have no class prediction in {csv_path}: "
                                     f"{_some(missing)}; expected one row per reference case of {ref_dir} (or pass "
                                     f"--allow-missing)")
            continue
        missing = sorted(set(ref_cases) - set(predicted))
        if missing and not allow_missing:
            raise NnunetMtlError(f"{len(missing)} reference case(s) have no prediction in {sub}: {_some(missing)}; "
                                 f"expected CASE_ID.png for every reference (or pass --allow-missing)")
        if attention:
            check_attention_files(sub, sorted(set(ref_cases) & set(predicted)))
        if csv_path.is_file() and cases_csv is not None:
            class_csvs[name] = csv_path
        elif csv_path.is_file():
            notes.append(f"{csv_path} not evaluated: the reference classes need --cases or -d")
        elif any(sub.glob("class_predictions_part*.csv")):
            notes.append(f"{sub} has class_predictions_part*.csv (from -num_parts) but no class_predictions.csv: "
                         f"classification not evaluated there (merge the parts into class_predictions.csv)")
    if cases_csv is not None and class_csvs and len(class_csvs) < len(subfolders):
        without = [n for n, _ in subfolders if n not in class_csvs]
        notes.append(f"no class_predictions.csv in {', '.join(without)}: classification over fewer subfolders")

    out_root = Path(output_dir) if output_dir is not None else pred_dir / "evaluation"
    summary_path = out_root / PER_FOLD_SUMMARY
    from nnunet_mtl.outputs import check_output_file
    for name, _ in subfolders:  # every output checked before the first subfolder is evaluated
        check_evaluation_output((Path(output_dir) / name) if output_dir is not None else pred_dir / name / "evaluation")
    for path in (summary_path, out_root / PER_FOLD_SUMMARY_CSV):
        check_output_file(path, "per-fold summary")
    for stale in (summary_path, out_root / PER_FOLD_SUMMARY_CSV):
        stale.unlink(missing_ok=True)  # it exists again only when every subfolder was evaluated
    entries, fold_summaries, ensemble_summary, ensemble_entry, settings = {}, [], None, None, None
    positive_class = None
    num_folds = len(layout["folds"])
    for i, (name, folds) in enumerate(subfolders):
        sub = pred_dir / name
        out = (Path(output_dir) / name) if output_dir is not None else sub / "evaluation"
        is_ensemble = name == ENSEMBLE_SUBFOLDER
        what = (f"ensemble of folds {', '.join(map(str, folds))}" if is_ensemble and folds else
                "fold ensemble" if is_ensemble else f"fold {folds[0]}'s model alone")
        log(f"{'ensemble' if is_ensemble else f'fold {i + 1}/{num_folds}'}: evaluating {sub} ({what})")
        summary = evaluate_folder(sub, ref_dir, class_predictions_csv=class_csvs.get(name), cases_csv=cases_csv,
                                  class_labels=class_labels, output_dir=out, num_processes=num_processes,
                                  allow_missing=allow_missing, attention=attention, **metric_options)
        settings = summary.get("settings")
        positive_class = positive_class or (summary.get("classification") or {}).get("positive_class")
        entry = {"folds": folds, "pred_dir": str(sub), "summary": str(out / OUTPUT_FILES[1]),
                 "num_cases": summary["num_cases"]}
        if is_ensemble:
            ensemble_summary, ensemble_entry = summary, entry
        else:
            entries[name] = entry
            fold_summaries.append(out / OUTPUT_FILES[1])
        log(f"  {_short_line(summary)}; wrote {out}")
    counts = sorted({e["num_cases"] for e in entries.values()})
    if len(counts) > 1:
        notes.append(f"the folds were evaluated on different numbers of cases ({', '.join(map(str, counts))})")
    if num_folds < 2:
        notes.append("one fold only: no standard deviation over folds")
    aggregate = aggregate_summaries(fold_summaries)
    result = {
        "num_folds": num_folds,
        "folds": entries,
        "ensemble": ensemble_entry if ensemble_summary is not None else None,
        "mean_std_over_folds": aggregate,
        "fold_ensemble": None if ensemble_summary is None else {"metrics": _flatten(ensemble_summary)},
        "definitions": {**PER_FOLD_DEFINITIONS, "ci95": AGGREGATE_CI},
        "settings": settings,
        "positive_class": positive_class,
        "notes": notes,
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "subfolders_from": source,
        "per_fold_json": layout.get("info"),
    }
    result = json_safe(result)
    write_json(result, summary_path)
    rows = []
    ensemble_metrics = (result["fold_ensemble"] or {}).get("metrics", {})
    for key, m in result["mean_std_over_folds"]["metrics"].items():
        ci = m.get("ci95") or [None, None]
        row = {"metric": key, "mean_over_folds": m["mean"], "std_over_folds": m["std"], "folds_defined": m["n"],
               "fold_ensemble": ensemble_metrics.get(key), "ci95_low_over_folds": ci[0],
               "ci95_high_over_folds": ci[1]}
        row.update({name: v for name, v in zip(entries, m["values"])})
        rows.append({k: "" if v is None else v for k, v in row.items()})
    fields = ["metric", "mean_over_folds", "std_over_folds", "folds_defined", "fold_ensemble", *entries,
              "ci95_low_over_folds", "ci95_high_over_folds"]
    write_csv(rows, fields, out_root / PER_FOLD_SUMMARY_CSV)
    return result


def _short_line(summary: dict) -> str:
    seg = summary.get("segmentation")
    if seg is None and "segmentation" in summary:
        text = f"{summary.get('num_cases')} cases, classification only"
    else:
        dice = ((seg or {}).get("dice") or {}).get("mean")
        text = f"{summary.get('num_cases')} cases, Dice {_num(dice)}"
    cls = summary.get("classification")
    if cls:
        text += (f", accuracy {_num(cls.get('accuracy'))}, macro F1 {_num(cls.get('macro_f1'))}, "
                 f"AUC {_num(cls.get('auc'))}")
    return text


# ----------------------------------------------------------------------------------------------- tables
def _num(v, digits=4) -> str:
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
    return f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]"


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
        lines.append(f"  {label:<14}{_num(stats['mean']) + ' ± ' + _num(stats['std']):>20}"
                     f"{_num(stats['median']):>10}  {_ci(intervals, f'segmentation.{key}.mean')}".rstrip())
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
            lines.append(f"  {label:<{label_width}}{_num(cls.get(key)):>10}  "
                         f"{_ci(intervals, f'classification.{key}')}".rstrip())
        width = max(10, *(len(n) + 2 for n in cls["per_class"]))
        lines += ["", f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'specificity':>12}{'F1':>10}{'support':>9}"
                      f"{'AUC ovr':>9}   (one-vs-rest; recall = sensitivity)"]
        for name, m in cls["per_class"].items():
            lines.append(f"  {name:<{width}}{_num(m['precision']):>10}{_num(m['recall']):>10}"
                         f"{_num(m.get('specificity')):>12}{_num(m['f1']):>10}{m['support']:>9}"
                         f"{_num(m.get('auc_ovr'), 3):>9}")
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
    return f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]" + ("*" if m.get("ci95_clipped") else "")


def format_aggregate_table(agg: dict) -> str:
    """Every aggregated metric as mean ± std over runs, the t-based 95% CI of the mean, and the number of runs
    where it is defined."""
    metrics = agg.get("metrics", {})
    width = max([len("metric")] + [len(k) for k in metrics]) + 2
    lines = [f"Aggregate over {agg.get('num_runs', '?')} runs (mean ± sample std over runs; 95% CI of the mean: "
             f"t-based, mean ± t(0.975, n-1)·std/√n)",
             f"  {'metric':<{width}}{'mean ± std':>24}  {'95% CI (t)':<22}{'runs':>5}"]
    for key, m in metrics.items():
        lines.append(f"  {key:<{width}}{_num(m['mean']) + ' ± ' + _num(m['std']):>24}  {_t_ci(m):<22}{m['n']:>5}")
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
        mean_std = (_num(m["mean"], digits) if key == "num_cases" and m["std"] in (0, None)
                    else f"{_num(m['mean'], digits)} ± {_num(m['std'], digits)}")
        ens = "n/a" if ensemble is None else _num(ensemble.get(key), digits)
        folds = "".join(f"{_num(v, digits):>{w_fold}}" for v in m["values"])
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
