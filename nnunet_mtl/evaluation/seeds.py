"""Several training seeds of one method on the same test set (``nnunet_mtl average-seeds``).

A method's number from one training is one draw: the breast_cpu runs moved a row's AUC by 0.12 between two runs of
one command (docs/results.md). With every row trained once per seed on a fixed split, a reader needs two things,
and this module writes both into one evaluation folder:

- **mean ± std over the seeds** (``per_seed_summary.json``): every scalar of each seed's ``summary.json`` (written
  by ``nnunet_mtl evaluate``), with the sample std (ddof=1) and the t-based 95 % CI of the mean: how much a training
  draw moves the number (:func:`nnunet_mtl.evaluation.aggregate.aggregate_summaries`, as for folds).
- **the seed-averaged per-case values** (``per_case.csv``, ``summary.json``): the input of ``nnunet_mtl compare``.
  Per case, each segmentation metric (Dice, IoU, HD95, ...) is the mean of the seeds' values (NaN-aware: a value
  missing in one seed is averaged over the others), and the class probabilities are the mean of the seeds'
  probabilities, the predicted class their argmax; the Brier score is that of the averaged probabilities.

Why the comparisons test seed-averaged per-case values (rather than each seed's pair separately with Holm): one test
per pair and metric, so nothing is spent on multiplicity; the unit stays the case or the patient, as in every other
comparison; and averaging over seeds removes most of the training draw's noise from each case's value, which is
what made one-run tests claim differences that the next run reversed. What it still cannot see is a difference
that exists in the mean over cases but not across trainings: the mean ± std over the seeds beside each row shows
whether a gap is larger than the seed spread. For segmentation, the mean of the seeds' per-case Dice is the
expected Dice of one training of the method on that case. For classification, the averaged probabilities are the
seeds' ensemble (as nnU-Net averages folds): the tested AUC and accuracy are those of the method's average
prediction, not of one training; the per-seed AUCs are in ``per_seed_summary.json``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nnunet_mtl.errors import NnunetMtlError

SEEDS_SUMMARY = "per_seed_summary.json"
OUTPUT_FILES = ("per_case.csv", "summary.json", SEEDS_SUMMARY)
DEFINITION = ("seed average: per case, each segmentation metric is the mean over the seeds (NaN-aware), the class "
              "probabilities are the mean over the seeds and the predicted class their argmax; the summary's numbers "
              "and bootstrap CIs are those of these averaged per-case values (nnunet_mtl.evaluation.seeds)")


def average_seeds(runs: list, output_dir, *, cases_csv=None, n_resamples: int | None = None,
                  bootstrap_seed: int = 0) -> dict:
    """Write ``per_case.csv`` and ``summary.json`` of the seed average and ``per_seed_summary.json`` (mean ± std
    over the seeds) into ``output_dir``; returns the seed average's summary. ``runs``: evaluated prediction folders
    of the same method, one per seed (as ``nnunet_mtl compare`` reads them); ``cases_csv``: the patients, for the
    bootstrap CIs. Every check runs before anything is written."""
    from nnunet_mtl.evaluation import classification as cls_metrics
    from nnunet_mtl.evaluation.compare import check_classes, check_same_cases, read_per_case, resolve_run
    from nnunet_mtl.atomic import json_safe, write_json
    from nnunet_mtl.evaluation.aggregate import aggregate_summaries
    from nnunet_mtl.evaluation.bootstrap import DEFAULT_BOOTSTRAP, bootstrap_intervals
    from nnunet_mtl.evaluation.evaluate import write_per_case_csv
    from nnunet_mtl.evaluation.inputs import read_cases_table
    from nnunet_mtl.evaluation.shared import ATTENTION_METRIC, SEG_METRICS, summary_stats
    from nnunet_mtl.outputs import check_not_an_input, check_output_file, check_output_folder
    if len(runs) < 2:
        raise NnunetMtlError(f"{len(runs)} run given; expected the evaluated prediction folders of at least two "
                             f"seeds")
    seeds = [read_per_case(resolve_run(r)) for r in runs]
    for a, b in zip(seeds, seeds[1:]):
        if a.segments != b.segments:
            raise NnunetMtlError(f"run {a.given} {'has' if a.segments else 'has no'} segmentation columns but run "
                                 f"{b.given} {'has' if b.segments else 'has no'}; expected seeds of one method")
    summaries = [r.per_case_csv.parent / "summary.json" for r in seeds]
    for s in summaries:
        if not s.is_file():
            raise NnunetMtlError(f"{s} does not exist; expected the summary.json nnunet_mtl evaluate writes beside "
                                 f"per_case.csv")
    cases = check_same_cases(seeds)
    class_names, classified, notes = check_classes(seeds, cases)
    out = check_output_folder(output_dir, "seed average output folder")
    for r in seeds:
        check_not_an_input(out, [r.folder, r.per_case_csv.parent], "seed average output folder")
    for name in OUTPUT_FILES:
        check_output_file(out / name, "seed average output")
    table = read_cases_table(cases_csv) if cases_csv is not None else {}
    over_seeds = aggregate_summaries(summaries)

    # LA-Net's lesion map (evaluate --attention) is averaged like the masks' metrics when every seed has it
    attention = seeds[0].segments and all(ATTENTION_METRIC in next(iter(r.rows.values())) for r in seeds)
    seg_keys = [m for m in SEG_METRICS if all(m in r.metrics for r in seeds)] + ([ATTENTION_METRIC] if attention
                                                                                 else [])

    def value(r, c, m) -> float:
        if m in r.metrics:
            return r.metrics[m][c]
        text = r.rows[c].get(m, "")
        return float(text) if text not in ("", None) else math.nan

    per_case = []
    for c in cases:
        row = {"case_id": c, "reference_mask": seeds[0].rows[c].get("reference_mask", "")}
        for m in seg_keys:
            values = [v for v in (value(r, c, m) for r in seeds) if not math.isnan(v)]
            row[m] = float(np.mean(values)) if values else math.nan
        per_case.append(row)
    classification, y_true, y_pred, probs = None, [], [], None
    if class_names is not None and classified:
        by_case = {r["case_id"]: r for r in per_case}
        probs = np.array([np.mean([r.classified[c][2] for r in seeds], axis=0) for c in classified])
        y_true = [class_names.index(seeds[0].classified[c][0]) for c in classified]
        y_pred = [int(np.argmax(p)) for p in probs]
        for c, t, p, pr, b in zip(classified, y_true, y_pred, probs, cls_metrics.per_case_brier(y_true, probs)):
            by_case[c].update(true_class=class_names[t], predicted_class=class_names[p], brier=float(b),
                              **{f"prob_{n}": float(v) for n, v in zip(class_names, pr)})
        classification = cls_metrics.classification_metrics(y_true, y_pred, probs, class_names)
    segmentation = {m: summary_stats([r[m] for r in per_case]) for m in seg_keys} if seeds[0].segments else None
    settings = dict(seeds[0].summary.get("settings") or {})
    resamples = int(n_resamples if n_resamples is not None else settings.get("bootstrap_resamples",
                                                                             DEFAULT_BOOTSTRAP))
    intervals = None
    if resamples > 0:
        index = {c: i for i, c in enumerate(cases)}
        intervals = bootstrap_intervals(
            {m: np.array([r[m] for r in per_case], dtype=float) for m in seg_keys},
            [(table.get(c) or {}).get("patient_id") for c in cases],
            classification=None if classification is None else
            (np.array([index[c] for c in classified]), np.array(y_true), np.array(y_pred), probs),
            n_resamples=resamples, seed=bootstrap_seed,
            positive_class=None if classification is None else cls_metrics.positive_class_index(class_names))
        notes = notes + intervals.pop("notes")
    summary = json_safe({
        "num_cases": len(cases), "segmentation": segmentation, "classification": classification,
        "confidence_intervals": intervals,
        "settings": {**settings, "bootstrap_resamples": resamples, "bootstrap_seed": int(bootstrap_seed)},
        "definitions": {"seed_average": DEFINITION}, "notes": notes,
        "seeds": {"runs": [str(r.given) for r in seeds], "summaries": [str(s) for s in summaries]},
        "inputs": {"cases_csv": None if cases_csv is None else str(cases_csv)},
    })
    write_per_case_csv(per_case, class_names if classification is not None else None, out / OUTPUT_FILES[0],
                       attention=attention, segmentation=seeds[0].segments)
    write_json(summary, out / OUTPUT_FILES[1])
    write_json({**over_seeds, "seed_average": {"metrics": _flat(summary)}}, out / SEEDS_SUMMARY)
    return summary


def _flat(summary: dict) -> dict:
    from nnunet_mtl.evaluation.aggregate import flatten_metrics
    return flatten_metrics({k: summary[k] for k in ("segmentation", "classification") if summary.get(k) is not None})


def format_seeds_table(path) -> str:
    """The mean ± std over the seeds and the seed average of the headline numbers, as text."""
    from nnunet_mtl.dataset.contract import read_json_object
    data = read_json_object(Path(path), "the per_seed_summary.json written by nnunet_mtl average-seeds")
    metrics, average = data.get("metrics", {}), (data.get("seed_average") or {}).get("metrics", {})
    lines = [f"{'metric':<34} {'mean ± std over seeds':>24} {'seed average':>13}"]
    for key in ("segmentation.dice.mean", "segmentation.iou.mean", "segmentation.hd95_px.mean",
                "classification.accuracy", "classification.balanced_accuracy", "classification.macro_f1",
                "classification.auc"):
        m = metrics.get(key)
        if not m or not isinstance(m.get("mean"), (int, float)) or math.isnan(m["mean"]):
            continue
        spread = f"{m['mean']:.4f} ± {m['std']:.4f}" if isinstance(m.get("std"), (int, float)) and \
            not math.isnan(m["std"]) else f"{m['mean']:.4f}"
        avg = average.get(key)
        lines.append(f"{key:<34} {spread:>24} {'' if avg is None else f'{avg:.4f}':>13}")
    return "\n".join(lines)
