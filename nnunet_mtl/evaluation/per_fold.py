"""Evaluation of a per-fold prediction folder (its layout: :mod:`nnunet_mtl.inference.per_fold`).

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
"""
from __future__ import annotations

from pathlib import Path

from nnunet_mtl.atomic import json_safe, write_csv, write_json
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.aggregate import AGGREGATE_CI, aggregate_summaries, flatten_metrics
from nnunet_mtl.evaluation.evaluate import check_evaluation_output, check_metric_options, evaluate_folder
from nnunet_mtl.evaluation.formatting import format_number
from nnunet_mtl.evaluation.inputs import check_attention_files, class_names_of, classification_only_csv, list_png_cases
from nnunet_mtl.evaluation.shared import OUTPUT_FILES, some_ids
from nnunet_mtl.inference.class_predictions import CLASS_PREDICTIONS, read_class_predictions
from nnunet_mtl.inference.per_fold import ENSEMBLE_SUBFOLDER, PER_FOLD_FILE

PER_FOLD_SUMMARY = "per_fold_summary.json"


PER_FOLD_SUMMARY_CSV = "per_fold_summary.csv"


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
    class_names = class_names_of(class_labels, "class_labels") if class_labels is not None else None
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
                                     f"{some_ids(missing)}; expected one row per reference case of {ref_dir} (or pass "
                                     f"--allow-missing)")
            continue
        missing = sorted(set(ref_cases) - set(predicted))
        if missing and not allow_missing:
            raise NnunetMtlError(f"{len(missing)} reference case(s) have no prediction in {sub}: {some_ids(missing)}; "
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
        log(f"  {short_summary_line(summary)}; wrote {out}")
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
        "fold_ensemble": None if ensemble_summary is None else {"metrics": flatten_metrics(ensemble_summary)},
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


def short_summary_line(summary: dict) -> str:
    seg = summary.get("segmentation")
    if seg is None and "segmentation" in summary:
        text = f"{summary.get('num_cases')} cases, classification only"
    else:
        dice = ((seg or {}).get("dice") or {}).get("mean")
        text = f"{summary.get('num_cases')} cases, Dice {format_number(dice)}"
    cls = summary.get("classification")
    if cls:
        text += (f", accuracy {format_number(cls.get('accuracy'))}, macro F1 {format_number(cls.get('macro_f1'))}, "
                 f"AUC {format_number(cls.get('auc'))}")
    return text
