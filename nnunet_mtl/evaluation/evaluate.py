"""Evaluate a folder of predicted masks (and optionally class predictions) against references; aggregate runs.

Inputs
    pred_dir/{case_id}.png and ref_dir/{case_id}.png: uint8 label maps (foreground = label > 0). Only cases present in
    both are evaluated; a reference without prediction is an error unless ``allow_missing``; a prediction without
    reference is ignored with a warning line. Other files in pred_dir (class_predictions.csv, json) are ignored.
    class_predictions.csv: ``case_id, predicted_class, prob_<name>...`` (one column per class, in index order).
    cases.csv: the raw dataset's ``case_id, split, class, patient_id[, spacing_row_mm, spacing_col_mm], ...``, read
    and checked by :mod:`nnunet_mtl.dataset.contract` (zero-padded ids stay as they are); ``class`` gives the
    reference class, the spacings (optional, may be empty) give HD95 in mm.

summary.json (NaN written as null)::

    {
      "num_cases": int,                         # cases evaluated (present in prediction and reference)
      "segmentation": {
        "dice":    {"mean", "std", "median"},   # over cases; std is the population std (ddof=0) of the cases
        "iou":     {"mean", "std", "median"},
        "hd95_px": {"mean", "std", "median"},
        "hd95_mm": {"mean", "std", "median"} or null,   # over cases with a known spacing; null when none has one
        "cases_with_spacing": int,
        "empty_reference_cases": int,           # reference mask empty (Dice/IoU/HD95 follow the empty conventions)
        "empty_prediction_cases": int
      },
      "classification": {                       # null when no class predictions or no reference classes
        "num_cases", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "auc",
        "per_class": {name: {"precision", "recall", "f1", "support", "auc_ovr"}},
        "confusion_matrix": {"labels": [names by index], "matrix": [[rows = reference, columns = predicted]]},
        "notes": [str]
      } or null,
      "definitions": {metric: which definition it uses},
      "missing_predictions": [case_id],         # reference cases without a prediction (only with allow_missing)
      "ignored_predictions": [case_id],         # predictions without a reference
      "notes": [str],
      "inputs": {"pred_dir", "ref_dir", "class_predictions_csv", "cases_csv"}
    }

Aggregate (several folds / runs, :func:`aggregate_summaries`)::

    {"num_runs": n, "runs": [paths], "std": "...",
     "metrics": {"segmentation.dice.mean": {"mean", "std", "n", "values"}, ...}}

Every number of the summaries (flattened to dotted keys; confusion matrices, notes and definitions left out) gets the
mean and the sample std (ddof=1) over the runs where it is defined; a metric defined in fewer than two runs has std
null.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nnunet_mtl.dataset.contract import SPACING_COLUMNS, read_cases_csv, read_class_labels, read_json_object
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation import classification as cls_metrics
from nnunet_mtl.evaluation import segmentation as seg_metrics

SEG_METRICS = ("dice", "iou", "hd95_px", "hd95_mm")
OUTPUT_FILES = ("per_case.csv", "summary.json", "confusion_matrix.png", "roc_curve.png")
_MAX_LISTED = 5  # case ids named in a message before it says "and N more"


# ----------------------------------------------------------------------------------------------- small helpers
def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _some(ids: list[str]) -> str:
    ids = sorted(ids)
    more = f" and {len(ids) - _MAX_LISTED} more" if len(ids) > _MAX_LISTED else ""
    return ", ".join(ids[:_MAX_LISTED]) + more


def _json_safe(obj):
    """NaN / inf -> None, numpy scalars -> Python numbers, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")
    return path


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
    """cases.csv -> {case_id: {"class": str, "spacing": (row_mm, col_mm) or None}}.

    Read and checked by the contract's :func:`read_cases_csv` (ids stay text, so "000123" keeps its zeros; spacings
    are floats); with ``class_labels`` every class must be one of them, without (segmentation only) any name goes.
    """
    cases = read_cases_csv(path, class_labels)
    if all(c in cases.columns for c in SPACING_COLUMNS):
        pairs = zip(*(cases[c] for c in SPACING_COLUMNS))
        spacings = [None if math.isnan(r) or math.isnan(c) else (float(r), float(c)) for r, c in pairs]
    else:
        spacings = [None] * len(cases)
    return {case: {"class": cls, "spacing": sp} for case, cls, sp in zip(cases["case_id"], cases["class"], spacings)}


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


def _class_index(value: str, names: list[str], what: str) -> int:
    """A class given by name, or by its index written as digits."""
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise NnunetMtlError(f"{what} is {value!r}; expected one of {', '.join(names)}")


def read_class_predictions(path, class_names: list[str] | None) -> tuple[list[str], dict[str, tuple[int, np.ndarray]]]:
    """class_predictions.csv -> (class names, {case_id: (predicted index, probabilities in index order)}).

    Without ``class_names`` the classes are the prob_<name> columns in file order (the predictor writes them by
    index). An empty predicted_class falls back to the arg max of the probabilities.
    """
    path = Path(path)
    if not path.is_file():
        raise NnunetMtlError(f"class predictions {path} do not exist; expected the class_predictions.csv written by "
                             f"nnunet_mtl predict")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    prob_cols = [c for c in fields if c.startswith("prob_")]
    if "case_id" not in fields or not prob_cols:
        raise NnunetMtlError(f"{path} has columns {', '.join(fields) or 'none'}; expected case_id, predicted_class, "
                             f"prob_<class>...")
    if class_names is None:
        class_names = [c[len("prob_"):] for c in prob_cols]
        if len(class_names) < 2:
            raise NnunetMtlError(f"{path} has one prob_ column; expected one per class (at least two)")
    elif sorted(prob_cols) != sorted(f"prob_{n}" for n in class_names):
        raise NnunetMtlError(f"{path} has probability columns {', '.join(prob_cols)}; expected "
                             f"{', '.join('prob_' + n for n in class_names)} (from class_labels)")
    out = {}
    for row in rows:
        case = row.get("case_id", "")
        if not case:
            continue
        if case in out:
            raise NnunetMtlError(f"{path} lists case {case} more than once; expected one row per case")
        try:
            probs = np.array([float(row[f"prob_{n}"]) for n in class_names])
        except ValueError:
            raise NnunetMtlError(f"{path}: case {case} has a probability that is not a number; expected floats "
                                 f"in prob_ columns") from None
        if not np.all(np.isfinite(probs)):
            raise NnunetMtlError(f"{path}: case {case} has a non-finite probability; expected finite floats")
        predicted = row.get("predicted_class", "")
        index = (int(np.argmax(probs)) if predicted == "" else
                 _class_index(predicted, class_names, f"{path}: predicted_class of case {case}"))
        out[case] = (index, probs)
    return class_names, out


# ----------------------------------------------------------------------------------------------- per case
def _evaluate_case(task: tuple) -> dict:
    """Worker: read one prediction / reference pair and compute its segmentation metrics."""
    case, pred_path, ref_path, spacing = task
    pred, ref = read_label_png(Path(pred_path)), read_label_png(Path(ref_path))
    if pred.shape != ref.shape:
        raise NnunetMtlError(f"case {case}: prediction {pred_path} has shape {pred.shape} but reference {ref_path} "
                             f"has {ref.shape}; expected the same size")
    return {"case_id": case, **seg_metrics.case_metrics(pred, ref, spacing)}


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
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_evaluate_case, tasks, chunksize=chunk):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


# ----------------------------------------------------------------------------------------------- evaluate_folder
def evaluate_folder(pred_dir, ref_dir, *, class_predictions_csv=None, cases_csv=None, class_labels=None,
                    output_dir=None, num_processes: int = 1, allow_missing: bool = False) -> dict:
    """Evaluate predicted masks (and class predictions) against references; return the summary dict.

    With ``output_dir`` also writes per_case.csv, summary.json and, when classification is evaluated,
    confusion_matrix.png and roc_curve.png. See the module docstring for the summary layout and rules.
    Classification needs both ``class_predictions_csv`` and ``cases_csv`` (for the reference classes).
    """
    pred_cases = list_png_cases(pred_dir, "prediction")
    ref_cases = list_png_cases(ref_dir, "reference")
    if not ref_cases:
        raise NnunetMtlError(f"reference folder {ref_dir} has no .png files; expected CASE_ID.png label maps")
    notes = []
    missing = sorted(set(ref_cases) - set(pred_cases))
    ignored = sorted(set(pred_cases) - set(ref_cases))
    if missing and not allow_missing:
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
        raise NnunetMtlError(f"no case of {ref_dir} has a prediction in {pred_dir}; expected matching CASE_ID.png names")

    class_names = _class_names(class_labels, "class_labels") if class_labels is not None else None
    table = read_cases_table(cases_csv, class_labels) if cases_csv is not None else {}
    tasks = [(c, str(pred_cases[c]), str(ref_cases[c]), (table.get(c) or {}).get("spacing")) for c in cases]
    per_case = _run_cases(tasks, int(num_processes))

    with_spacing = [r for r in per_case if not math.isnan(r["hd95_mm"])]
    segmentation = {m: summary_stats([r[m] for r in per_case]) for m in SEG_METRICS}
    segmentation.update({
        "cases_with_spacing": len(with_spacing),
        "empty_reference_cases": sum(r["ref_empty"] for r in per_case),
        "empty_prediction_cases": sum(r["pred_empty"] for r in per_case),
    })
    if cases_csv is not None and len(with_spacing) < len(per_case):
        notes.append(f"hd95_mm over {len(with_spacing)} of {len(per_case)} cases (the others have no spacing in "
                     f"{cases_csv})")

    # ---- classification
    classification = None
    for r in per_case:
        r.update(true_class="", predicted_class="")
    if class_predictions_csv is not None:
        if cases_csv is None:
            raise NnunetMtlError(f"class predictions {class_predictions_csv} need the reference classes; pass the "
                                 f"raw dataset's cases.csv (--cases or -d)")
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
        by_case = {r["case_id"]: r for r in per_case}
        y_true, y_pred, probs = [], [], []
        for c in cls_cases:
            t = _class_index(table[c]["class"], class_names, f"{cases_csv}: class of case {c}")
            p, pr = predictions[c]
            y_true.append(t)
            y_pred.append(p)
            probs.append(pr)
            by_case[c].update(true_class=class_names[t], predicted_class=class_names[p],
                              **{f"prob_{n}": float(v) for n, v in zip(class_names, pr)})
        if cls_cases:
            classification = cls_metrics.classification_metrics(y_true, y_pred, np.array(probs), class_names)
        else:
            notes.append("classification not evaluated: no case has both a class prediction and a reference class")
    elif table:
        for r in per_case:
            r["true_class"] = (table.get(r["case_id"]) or {}).get("class", "")

    definitions = {**seg_metrics.DEFINITIONS, **cls_metrics.DEFINITIONS,
                   "mean_std_median": "over cases; std = population std (ddof=0)"}
    summary = {
        "num_cases": len(per_case),
        "segmentation": segmentation,
        "classification": classification,
        "definitions": definitions,
        "missing_predictions": missing,
        "ignored_predictions": ignored,
        "notes": notes,
        "inputs": {"pred_dir": str(pred_dir), "ref_dir": str(ref_dir),
                   "class_predictions_csv": None if class_predictions_csv is None else str(class_predictions_csv),
                   "cases_csv": None if cases_csv is None else str(cases_csv)},
    }
    summary = _json_safe(summary)  # the returned dict equals what summary.json holds
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_per_case_csv(per_case, class_names if classification else None, out / OUTPUT_FILES[0])
        write_json(summary, out / OUTPUT_FILES[1])
        for stale in OUTPUT_FILES[2:]:
            (out / stale).unlink(missing_ok=True)  # plots of an earlier run with classification would mislead
        if classification is not None:
            plot_confusion_matrix(classification, out / OUTPUT_FILES[2])
            plot_roc_curve(y_true, np.array(probs), class_names, out / OUTPUT_FILES[3])
    return summary


def written_files(output_dir) -> list[Path]:
    """The files evaluate_folder wrote into ``output_dir`` (plots only when classification was evaluated)."""
    return [Path(output_dir) / n for n in OUTPUT_FILES if (Path(output_dir) / n).is_file()]


def write_per_case_csv(per_case: list[dict], class_names: list[str] | None, path: Path) -> Path:
    """One row per case; empty cell = not available (no spacing, no class prediction)."""
    fields = ["case_id", *SEG_METRICS, "true_class", "predicted_class"]
    fields += [f"prob_{n}" for n in (class_names or [])]

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6f}"
        return v
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in per_case:
            writer.writerow({k: fmt(r.get(k, "")) for k in fields})
    return path


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
    fig.savefig(path)
    return path


def plot_roc_curve(y_true, probs: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Binary: the ROC of class index 1; more classes: one one-vs-rest ROC per class with both sides present."""
    from sklearn.metrics import roc_auc_score, roc_curve
    y_true = np.asarray(y_true)
    fig = _figure()
    ax = fig.add_subplot()
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    drawn = 0
    for c in classes:
        y = (y_true == c).astype(int)
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {roc_auc_score(y, probs[:, c]):.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC" if len(class_names) == 2 else "ROC, one-vs-rest")
    if drawn:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined: one class only in the reference", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------------- aggregation
_NOT_AGGREGATED = {"definitions", "notes", "confusion_matrix", "inputs", "missing_predictions", "ignored_predictions"}


def _flatten(obj, prefix="") -> dict[str, float]:
    out = {}
    for key, value in obj.items():
        if key in _NOT_AGGREGATED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = _nan(value)
    return out


def aggregate_summaries(summary_paths: list, output_path=None) -> dict:
    """Mean and sample std (ddof=1) of every scalar metric over several summary.json files (folds / runs)."""
    if not summary_paths:
        raise NnunetMtlError("no summary.json given to aggregate; expected one per fold or run")
    flat = []
    for p in summary_paths:
        data = read_json_object(p, "a summary.json written by nnunet_mtl evaluate")
        if "segmentation" not in data:
            raise NnunetMtlError(f"{p} has no 'segmentation' block; expected a summary.json from nnunet_mtl evaluate")
        flat.append(_flatten(data))
    keys = list(dict.fromkeys(k for f in flat for k in f))
    metrics = {}
    for key in keys:
        values = [f.get(key, math.nan) for f in flat]
        defined = np.array([v for v in values if not math.isnan(v)])
        metrics[key] = {
            "mean": float(defined.mean()) if defined.size else math.nan,
            "std": float(defined.std(ddof=1)) if defined.size > 1 else math.nan,
            "n": int(defined.size),
            "values": values,
        }
    agg = _json_safe({"num_runs": len(flat), "runs": [str(p) for p in summary_paths],
                      "std": "sample std (ddof=1) over the runs where the metric is defined",
                      "metrics": metrics})
    if output_path is not None:
        write_json(agg, Path(output_path))
    return agg


# ----------------------------------------------------------------------------------------------- tables
def _num(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


_SEG_ROWS = (("dice", "Dice"), ("iou", "IoU"), ("hd95_px", "HD95 [px]"), ("hd95_mm", "HD95 [mm]"))


def format_summary_table(summary: dict) -> str:
    """Fixed-width text: segmentation (mean ± std, median over cases), classification, confusion matrix."""
    seg = summary.get("segmentation") or {}
    lines = [f"Segmentation ({summary.get('num_cases', '?')} cases)",
             f"  {'metric':<12}{'mean ± std':>22}{'median':>12}"]
    for key, label in _SEG_ROWS:
        stats = seg.get(key)
        if stats is None:
            lines.append(f"  {label:<12}{'n/a (no spacing)' if key == 'hd95_mm' else 'n/a':>22}")
            continue
        lines.append(f"  {label:<12}{_num(stats['mean']) + ' ± ' + _num(stats['std']):>22}{_num(stats['median']):>12}")
    lines.append(f"  empty reference: {seg.get('empty_reference_cases', 0)}   empty prediction: "
                 f"{seg.get('empty_prediction_cases', 0)}   with spacing: {seg.get('cases_with_spacing', 0)}")
    cls = summary.get("classification")
    if cls:
        lines += ["", f"Classification ({cls.get('num_cases', '?')} cases)", f"  {'metric':<20}{'value':>10}"]
        for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
                           ("macro_precision", "macro precision"), ("macro_recall", "macro recall"),
                           ("macro_f1", "macro F1"),
                           ("auc", "AUC" if len(cls["per_class"]) == 2 else "AUC (OvR macro)")):
            lines.append(f"  {label:<20}{_num(cls.get(key)):>10}")
        width = max(10, *(len(n) + 2 for n in cls["per_class"]))
        lines += ["", f"  {'class':<{width}}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}{'AUC ovr':>9}"]
        for name, m in cls["per_class"].items():
            lines.append(f"  {name:<{width}}{_num(m['precision']):>10}{_num(m['recall']):>10}{_num(m['f1']):>10}"
                         f"{m['support']:>9}{_num(m.get('auc_ovr'), 3):>9}")
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
    for note in summary.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_aggregate_table(agg: dict) -> str:
    """Every aggregated metric as mean ± std over runs, with the number of runs where it is defined."""
    metrics = agg.get("metrics", {})
    width = max([len("metric")] + [len(k) for k in metrics]) + 2
    lines = [f"Aggregate over {agg.get('num_runs', '?')} runs (mean ± sample std over runs)",
             f"  {'metric':<{width}}{'mean ± std':>24}{'runs':>6}"]
    for key, m in metrics.items():
        lines.append(f"  {key:<{width}}{_num(m['mean']) + ' ± ' + _num(m['std']):>24}{m['n']:>6}")
    return "\n".join(lines)
