"""Paired comparison of prediction runs on the same cases (``nnunet_mtl compare``).

Each run is a prediction folder evaluated by ``nnunet_mtl evaluate``; what is compared is its
``evaluation/per_case.csv`` (``case_id, dice, iou, hd95_px, hd95_mm, true_class, predicted_class, prob_<class>...``;
a classification-only run, evaluated from class predictions without masks, has no segmentation columns). Only the
metrics both runs of a pair have are compared: a classification-only run against a multitask run on classification
alone, with a note.
Every difference is **first run minus second run** (A − B), case by case: Dice, IoU and HD95 per case, accuracy as
the per-case 0/1 "predicted class = reference class", and the AUC of the whole set.

The statistics (the paired bootstrap, Wilcoxon with ``zero_method="zsplit"`` and why, McNemar, DeLong, the
vectorized AUC, Holm) are pure functions of arrays in :mod:`nnunet_mtl.evaluation.paired_statistics`; this module
reads and checks the runs, chooses the unit and the test per metric, and writes the table.

Unit of analysis: with a case table (``cases.csv``: ``case_id, ..., patient_id``) in which some patient has several
of the compared images, the unit is the **patient**: the bootstrap draws patients (all their images together), the
Wilcoxon test and the clustered McNemar use one value per patient (the mean of the patient's per-image differences),
and the AUC difference is tested by the patient bootstrap (DeLong assumes independent cases). The reported means
and differences stay the per-image means, the numbers ``nnunet_mtl evaluate`` reports. Otherwise the unit is the
image. See docs/comparison.md.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.paired_statistics import (CONFIDENCE, DEFAULT_N_RESAMPLES, DEFAULT_SEED, ZERO_METHOD,
                                                     ZERO_METHOD_REASON, auc_difference_statistic, bootstrap_z_test,
                                                     cluster_means, delong_test, holm, macro_ovr_auc,
                                                     mcnemar_clustered, mcnemar_exact, mean_difference_statistic,
                                                     paired_bootstrap_ci, renumber_clusters, wilcoxon_paired)

MIN_N_RESAMPLES = 100  # the fewest bootstrap resamples compare accepts (--n-resamples)
OUTPUT_FILES = ("comparison.csv", "comparison.json", "comparison.png")

REQUIRED_COLUMNS = ("case_id", "dice", "iou", "hd95_px")
SEGMENTATION_COLUMNS = REQUIRED_COLUMNS[1:]  # absent all together in a classification-only run's per_case.csv
# (key in per_case.csv, label, digits, higher is better); the columns after hd95_px are compared when present
SEG_METRICS = (("dice", "Dice", 4, True), ("iou", "IoU", 4, True), ("hd95_px", "HD95 [px]", 2, False),
               ("hd95_mm", "HD95 [mm]", 2, False), ("nsd_px", "NSD [px tol.]", 4, True),
               ("nsd_mm", "NSD [mm tol.]", 4, True))
CLS_METRICS = (("accuracy", "accuracy", 4, True), ("auc", "AUC", 4, True), ("brier", "Brier score", 4, False))
PER_CASE_CLS_METRICS = ("brier",)  # classification metrics with a per-case value in per_case.csv
METRIC_INFO = {key: (label, digits, higher) for key, label, digits, higher in SEG_METRICS + CLS_METRICS}
# evaluate settings that change what a per-case metric means: runs must agree on them (summary.json "settings")
MUST_AGREE = {"nsd_tolerance_px": ("nsd_px", "--nsd-tolerance-px"), "nsd_tolerance_mm": ("nsd_mm", "--nsd-tolerance")}


# =============================================================================================== runs
@dataclass
class Run:
    """One run: what was given, which per_case.csv is read, and its rows."""
    given: str
    folder: Path
    per_case_csv: Path
    note: str | None = None
    label: str = ""
    rows: dict = field(default_factory=dict)          # case -> {column: str}
    metrics: dict = field(default_factory=dict)       # metric -> {case: float (NaN when empty)}
    class_names: list | None = None                   # from the prob_ columns, None when not classified
    classified: dict = field(default_factory=dict)    # case -> (true class, predicted class, probabilities)
    summary: dict = field(default_factory=dict)       # the summary.json beside per_case.csv, {} when there is none
    segments: bool = True                             # False: classification only (no segmentation columns)


def resolve_run(given) -> Run:
    """The per_case.csv of a run: RUN/evaluation/per_case.csv; RUN/per_case.csv (RUN is an evaluation folder, e.g.
    evaluate -o); for a folder of predict --per-fold: its ensemble/ (RUN/fold_K names one fold)."""
    from nnunet_mtl.inference.per_fold import ENSEMBLE_SUBFOLDER, PER_FOLD_FILE, per_fold_layout
    path = Path(given)
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise NnunetMtlError(f"run {path} {what}; expected a prediction folder written by nnunet_mtl predict and "
                             f"evaluated by nnunet_mtl evaluate")
    folder, note = path, None
    layout = per_fold_layout(path)
    if layout is not None:
        if not layout["ensemble"]:
            raise NnunetMtlError(f"run {path} is a per-fold folder without {ENSEMBLE_SUBFOLDER}/; expected "
                                 f"{path / layout['folds'][0][0]} (one fold's model) or a folder with "
                                 f"{ENSEMBLE_SUBFOLDER}/")
        folder = path / layout["ensemble"][0]
        note = (f"{path} is a per-fold folder ({PER_FOLD_FILE}): comparing its {ENSEMBLE_SUBFOLDER}/ (the fold "
                f"ensemble); pass {path / layout['folds'][0][0]} to compare one fold's model")
    for candidate in (folder / "evaluation" / "per_case.csv", folder / "per_case.csv"):
        if candidate.is_file():
            return Run(given=str(given), folder=folder, per_case_csv=candidate, note=note)
        if candidate.exists():
            raise NnunetMtlError(f"{candidate} is not a file; expected the per_case.csv written by nnunet_mtl evaluate")
    evaluated = path if layout is not None else folder
    raise NnunetMtlError(f"run {folder} has no evaluation/per_case.csv; run `nnunet_mtl evaluate -pred {evaluated} "
                         f"-d DATASET` first")


def _number(text: str, path: Path, case: str, column: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise NnunetMtlError(f"{path}: {column} of case {case} is {text!r}; expected a number (or empty)") from None
    if math.isinf(value) or math.isnan(value):
        raise NnunetMtlError(f"{path}: {column} of case {case} is {text!r}; expected a finite number (or empty)")
    return value


def read_per_case(run: Run) -> Run:
    """Read and check ``run.per_case_csv`` into ``run`` (metrics per case, class predictions when present)."""
    from nnunet_mtl.tables import read_csv_rows, rows_by_case
    path = run.per_case_csv
    fields, raw_rows = read_csv_rows(path, "the per_case.csv written by nnunet_mtl evaluate")
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    prob_cols = [c for c in fields if c.startswith("prob_")]
    if "case_id" in fields and not any(c in fields for c in SEGMENTATION_COLUMNS) and prob_cols:
        missing = []  # a classification-only run (evaluated from class predictions without masks)
        run.segments = False
    if missing:
        raise NnunetMtlError(f"{path} lacks column(s) {', '.join(missing)}; expected the per_case.csv written by "
                             f"nnunet_mtl evaluate ({', '.join(REQUIRED_COLUMNS)}, hd95_mm, true_class, ...; "
                             f"classification only: case_id, true_class, predicted_class, prob_<class>...)")
    rows = rows_by_case(raw_rows, path)
    if not rows:
        raise NnunetMtlError(f"{path} has no cases; expected one row per evaluated case")
    run.rows = rows
    run.metrics = {key: {c: _number(r.get(key, ""), path, c, key) for c, r in rows.items()}
                   for key in [k for k, *_ in SEG_METRICS] + list(PER_CASE_CLS_METRICS) if key in fields}
    summary_path = path.parent / "summary.json"
    if summary_path.is_file():
        from nnunet_mtl.dataset.contract import read_json_object
        run.summary = read_json_object(summary_path, "the summary.json written by nnunet_mtl evaluate")
    if prob_cols:
        run.class_names = [c[len("prob_"):] for c in prob_cols]
        for case, r in rows.items():
            true, pred = r.get("true_class", ""), r.get("predicted_class", "")
            if not pred:
                continue  # evaluated with --allow-missing: no class prediction for this case
            for what, name in (("true_class", true), ("predicted_class", pred)):
                if name not in run.class_names:
                    raise NnunetMtlError(f"{path}: {what} of case {case} is {name!r}; expected one of "
                                         f"{', '.join(run.class_names)} (the prob_ columns)")
            probs = np.array([_number(r.get(c, ""), path, case, c) for c in prob_cols])
            if np.isnan(probs).any():
                raise NnunetMtlError(f"{path}: case {case} has a predicted_class but an empty prob_ column; "
                                     f"expected a probability per class")
            run.classified[case] = (true, pred, probs)
    return run


def check_same_cases(runs: list[Run]) -> list[str]:
    """Every run has exactly the cases of the first; the case ids in a sorted order."""
    first = runs[0]
    for other in runs[1:]:
        for have, lack in ((first, other), (other, first)):
            absent = sorted(set(have.rows) - set(lack.rows))
            if absent:
                raise NnunetMtlError(
                    f"case {absent[0]} of run {have.given} is missing in run {lack.given} ({lack.per_case_csv}"
                    f"{f'; {len(absent) - 1} more missing' if len(absent) > 1 else ''}); expected the same cases in "
                    f"every run (evaluate each against the same references)")
    return sorted(first.rows)


def check_settings(runs: list[Run]) -> list[str]:
    """Runs evaluated with different NSD tolerances are refused (their NSDs measure different things); runs
    evaluated against different reference folders are noted. Read from each run's summary.json, when it has one."""
    notes = []
    for key, (metric, option) in MUST_AGREE.items():
        known = [(r, (r.summary.get("settings") or {}).get(key)) for r in runs if metric in r.metrics]
        known = [(r, v) for r, v in known if v is not None]
        for r, v in known[1:]:
            if v != known[0][1]:
                raise NnunetMtlError(f"run {r.given} was evaluated with {key} {v} but run {known[0][0].given} with "
                                     f"{known[0][1]} ({r.per_case_csv.parent / 'summary.json'}); expected the same "
                                     f"{option} for every run")
    refs = {str((r.summary.get("inputs") or {}).get("ref_dir")) for r in runs if (r.summary.get("inputs") or {})
            .get("ref_dir")}
    if len(refs) > 1:
        notes.append(f"the runs were evaluated against different reference folders ({', '.join(sorted(refs))}); "
                     f"the same case ids are compared")
    return notes


def metric_label(metric: str, runs: list[Run]) -> str:
    """The table's name of a metric; NSD with its tolerance (from summary.json) when known."""
    label = METRIC_INFO[metric][0]
    for key, (name, _option) in MUST_AGREE.items():
        if name == metric:
            values = {(r.summary.get("settings") or {}).get(key) for r in runs} - {None}
            if len(values) == 1:
                label = f"NSD@{float(values.pop()):g}{'px' if metric == 'nsd_px' else 'mm'}"
    return label


def check_classes(runs: list[Run], cases: list[str]) -> tuple[list[str] | None, list[str], list[str]]:
    """The runs' classes agree: the same prob_ columns in the same order, the same reference class per case and
    class predictions for the same cases. Returns (class names or None, classified cases, notes)."""
    with_classes = [r for r in runs if r.class_names is not None]
    notes = []
    if not with_classes:
        return None, [], ["classification not compared: no run's per_case.csv has prob_ columns"]
    first = with_classes[0]
    for other in with_classes[1:]:
        if other.class_names != first.class_names:
            raise NnunetMtlError(
                f"run {other.given} has class columns {', '.join('prob_' + n for n in other.class_names)} but run "
                f"{first.given} has {', '.join('prob_' + n for n in first.class_names)}; expected the same classes "
                f"in the same order (models of the same class_labels)")
    without = [r.given for r in runs if r.class_names is None]
    if without:
        notes.append(f"classification not compared for {', '.join(without)}: no prob_ columns in its per_case.csv "
                     f"(evaluated without class predictions)")
    classified = sorted(first.classified)
    for other in with_classes[1:]:
        for have, lack in ((first, other), (other, first)):
            absent = sorted(set(have.classified) - set(lack.classified))
            if absent:
                raise NnunetMtlError(f"case {absent[0]} has a class prediction in run {have.given} but none in run "
                                     f"{lack.given} ({lack.per_case_csv}); expected class predictions for the same "
                                     f"cases in every run")
        for case in classified:
            if other.classified[case][0] != first.classified[case][0]:
                raise NnunetMtlError(f"case {case} has reference class {first.classified[case][0]!r} in run "
                                     f"{first.given} but {other.classified[case][0]!r} in run {other.given}; expected "
                                     f"the runs to be evaluated against the same reference classes")
    if with_classes and not classified:
        notes.append("classification not compared: no case has a class prediction")
    elif len(classified) < len(cases):
        notes.append(f"classification over {len(classified)} of {len(cases)} cases (the others have no class "
                     f"prediction)")
    return first.class_names, classified, notes


def read_patients(cases_csv, cases: list[str]) -> dict[str, str]:
    """{case: patient_id} from a case table (checked by the dataset contract); every compared case must be in it."""
    from nnunet_mtl.dataset.contract import read_cases_csv
    table = read_cases_csv(cases_csv)
    patients = dict(zip(table["case_id"], table["patient_id"]))
    absent = [c for c in cases if c not in patients]
    if absent:
        raise NnunetMtlError(f"case {absent[0]} of the runs is not in {cases_csv}"
                             f"{f' ({len(absent) - 1} more are not)' if len(absent) > 1 else ''}; expected the case "
                             f"table of the dataset the runs were evaluated on")
    return {c: patients[c] for c in cases}


def describe_unit(cases: list[str], patients: dict | None, table=None) -> dict:
    """The unit rule: patients when a case table gives some patient several of the compared images, else images."""
    n = len(cases)
    if patients is None:
        return {"unit": "image", "n_images": n, "n_patients": None, "clusters": np.arange(n),
                "text": f"unit: image ({n} images; no case table: images taken as independent, pass -d or --cases "
                        f"to resample by patient)"}
    labels = renumber_clusters([patients[c] for c in cases])
    n_patients = int(labels.max()) + 1
    if n_patients < n:
        return {"unit": "patient", "n_images": n, "n_patients": n_patients, "clusters": labels,
                "text": f"unit: patient ({n_patients} patients, {n} images; patient_id from {table})"}
    return {"unit": "image", "n_images": n, "n_patients": n_patients, "clusters": np.arange(n),
            "text": f"unit: image ({n} images, one per patient in {table})"}


# =============================================================================================== comparisons
def pairs_of(n_runs: int, all_pairs: bool) -> list[tuple[int, int]]:
    """Run index pairs: the first against each other run, or every pair (i < j)."""
    return list(itertools.combinations(range(n_runs), 2)) if all_pairs else [(0, j) for j in range(1, n_runs)]


def _row(pair, a: Run, b: Run, metric: str, unit: dict, **values) -> dict:
    label, _digits, higher = METRIC_INFO[metric]
    row = {"pair": pair, "run_a": a.given, "run_b": b.given, "metric": metric, "label": label,
           "better": "higher" if higher else "lower", "unit": unit["unit"], "n_units": None, "n_images": None,
           "mean_a": math.nan, "mean_b": math.nan, "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "ci_method": "", "test": "", "test_short": "", "statistic": math.nan, "p": math.nan, "p_holm": math.nan,
           "note": ""}
    row.update(values)
    return row


def compare_per_case_metric(a: Run, b: Run, metric: str, cases: list[str], unit: dict, pair: str, *,
                         n_resamples: int, seed: int) -> dict:
    """One per-case metric (Dice, IoU, HD95, NSD, Brier) of two runs: the means, the mean difference A − B, its
    paired bootstrap CI and the Wilcoxon signed-rank test; over the cases with a value in both runs."""
    va = np.array([a.metrics[metric][c] for c in cases])
    vb = np.array([b.metrics[metric][c] for c in cases])
    keep = ~(np.isnan(va) | np.isnan(vb))
    clusters = np.asarray(unit["clusters"])[keep]
    note = "" if keep.all() else f"over the {int(keep.sum())} of {len(cases)} images with a value in both runs"
    if not keep.any():
        return _row(pair, a, b, metric, unit, n_units=0, n_images=0, note="no image has a value in both runs")
    d = va[keep] - vb[keep]
    ci = paired_bootstrap_ci(mean_difference_statistic(d), clusters, n_resamples=n_resamples, seed=seed)
    per_unit = cluster_means(d, renumber_clusters(clusters)) if unit["unit"] == "patient" else d
    w = wilcoxon_paired(per_unit)
    of_what = "per-patient mean differences" if unit["unit"] == "patient" else "per-image differences"
    return _row(pair, a, b, metric, unit, n_units=ci["n_units"], n_images=int(keep.sum()),
                mean_a=float(va[keep].mean()), mean_b=float(vb[keep].mean()), difference=float(d.mean()),
                ci_low=ci["low"], ci_high=ci["high"], ci_method=ci["method"],
                test=f"Wilcoxon signed-rank, zero_method={w['zero_method']}, {w['method']}, on {of_what} "
                     f"({w['n_zero']} of {w['n']} zero)",
                test_short="Wilcoxon", statistic=w["statistic"], p=w["p"], note=note)


def compare_classification(a: Run, b: Run, class_names: list[str], cases: list[str], unit_all: dict,
                           all_cases: list[str], pair: str, *, n_resamples: int, seed: int) -> list[dict]:
    """Accuracy (McNemar) and AUC (DeLong, or the paired bootstrap) of two runs on the classified cases."""
    index = {c: i for i, c in enumerate(all_cases)}
    clusters = np.asarray(unit_all["clusters"])[[index[c] for c in cases]]
    unit = dict(unit_all)
    patient = unit["unit"] == "patient"
    y = np.array([class_names.index(a.classified[c][0]) for c in cases])
    right_a = np.array([a.classified[c][1] == a.classified[c][0] for c in cases])
    right_b = np.array([b.classified[c][1] == b.classified[c][0] for c in cases])
    probs_a = np.stack([a.classified[c][2] for c in cases])
    probs_b = np.stack([b.classified[c][2] for c in cases])
    n = len(cases)
    rows = []

    d = right_a.astype(float) - right_b.astype(float)
    ci = paired_bootstrap_ci(mean_difference_statistic(d), clusters, n_resamples=n_resamples, seed=seed)
    if patient:
        mc = mcnemar_clustered(right_a, right_b, clusters)
        test = (f"McNemar, cluster-adjusted (Durkalski et al. 2003; chi-square 1 df), per patient; b={mc['b']} "
                f"(A right, B wrong), c={mc['c']}")
        short, statistic = "McNemar (clustered)", mc["statistic"]
    else:
        mc = mcnemar_exact(right_a, right_b)
        test = f"McNemar, exact binomial on the discordant pairs; b={mc['b']} (A right, B wrong), c={mc['c']}"
        short, statistic = "McNemar exact", float(mc["b"])
    rows.append(_row(pair, a, b, "accuracy", unit, n_units=ci["n_units"], n_images=n, mean_a=float(right_a.mean()),
                     mean_b=float(right_b.mean()), difference=float(d.mean()), ci_low=ci["low"], ci_high=ci["high"],
                     ci_method=ci["method"], test=test, test_short=short, statistic=statistic, p=mc["p"]))

    ones = np.ones((1, n))
    auc_a, auc_b = float(macro_ovr_auc(y, probs_a, ones)[0]), float(macro_ovr_auc(y, probs_b, ones)[0])
    auc_label = "AUC" if len(class_names) == 2 else "AUC (OvR macro)"
    if math.isnan(auc_a) or math.isnan(auc_b):
        rows.append(_row(pair, a, b, "auc", unit, n_units=0, n_images=n, label=auc_label,
                         note="AUC undefined: only one class occurs in the reference"))
        return rows
    if len(class_names) == 2 and not patient:
        dl = delong_test(y == 1, probs_a[:, 1], probs_b[:, 1])
        note = "" if not math.isnan(dl["p"]) else "DeLong undefined: fewer than two cases of a class"
        rows.append(_row(pair, a, b, "auc", unit, n_units=n, n_images=n, label=auc_label, mean_a=auc_a,
                         mean_b=auc_b, difference=auc_a - auc_b, ci_low=dl["ci_low"], ci_high=dl["ci_high"],
                         ci_method="DeLong variance, normal", statistic=dl["z"], p=dl["p"],
                         test=f"DeLong et al. 1988 (Sun & Xu 2014 algorithm), z = {dl['z']:.3f}, "
                              f"{dl['n_pos']} {class_names[1]} / {dl['n_neg']} {class_names[0]}",
                         test_short="DeLong", note=note))
        return rows
    ci = paired_bootstrap_ci(auc_difference_statistic(y, probs_a, probs_b), clusters, n_resamples=n_resamples,
                             seed=seed)
    p = bootstrap_z_test(auc_a - auc_b, ci["se"])
    why = ("clustered data: DeLong assumes independent cases" if patient and len(class_names) == 2 else
           f"{len(class_names)} classes, one-vs-rest macro AUC")
    rows.append(_row(pair, a, b, "auc", unit, n_units=ci["n_units"], n_images=n, label=auc_label, mean_a=auc_a,
                     mean_b=auc_b, difference=auc_a - auc_b, ci_low=ci["low"], ci_high=ci["high"],
                     ci_method=ci["method"], statistic=(auc_a - auc_b) / ci["se"] if ci["se"] else math.nan, p=p,
                     test=f"paired bootstrap z-test, difference / bootstrap sd ({why})", test_short="bootstrap"))
    return rows


def _comparable(metric: str, a: Run, b: Run, cases: list[str]) -> bool:
    """Both runs have the column, and some case has a value in both (hd95_mm without any spacing has none)."""
    return (metric in a.metrics and metric in b.metrics and
            any(not (math.isnan(a.metrics[metric][c]) or math.isnan(b.metrics[metric][c])) for c in cases))


def check_pairs_share_metrics(runs: list[Run], class_names, classified: list[str], all_pairs: bool) -> list[str]:
    """Every compared pair has some metric in common (a classification-only run and a run without class predictions
    have none: one line naming both); notes on the runs compared on classification only."""
    for i, j in pairs_of(len(runs), all_pairs):
        a, b = runs[i], runs[j]
        segmentation = a.segments and b.segments
        classification = bool(class_names and classified and a.class_names and b.class_names)
        if not (segmentation or classification) and not (a.segments or b.segments):
            raise NnunetMtlError(f"runs {a.given} and {b.given} share no metric: both are classification only and no "
                                 f"case has a class prediction in both ({a.per_case_csv}, {b.per_case_csv}); expected "
                                 f"class predictions of the same cases")
        if not (segmentation or classification):
            only, other = (a, b) if not a.segments else (b, a)
            raise NnunetMtlError(
                f"runs {a.given} and {b.given} share no metric: {only.given} is classification only (no segmentation "
                f"columns in {only.per_case_csv}) and {other.given} has no class predictions (no prob_ columns in "
                f"{other.per_case_csv}); expected both runs evaluated with class predictions")
    without = [r.given for r in runs if not r.segments]
    if not without:
        return []
    return [f"segmentation not compared for {', '.join(without)}: classification only (no masks, no segmentation "
            f"columns in its per_case.csv); its pairs are compared on the classification metrics"]


def compare_runs(runs: list[Run], cases: list[str], unit: dict, class_names, classified: list[str], *,
                 all_pairs: bool = False, n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED) -> list:
    """Every row of the table: per pair, the segmentation metrics present in both runs (none when one of them is
    classification only), then accuracy, AUC and the Brier score when both runs classified; Holm over all p-values
    of the table."""
    rows = []
    for i, j in pairs_of(len(runs), all_pairs):
        a, b = runs[i], runs[j]
        pair = f"{a.label} vs {b.label}"
        kw = {"n_resamples": n_resamples, "seed": seed}
        for key, *_ in SEG_METRICS:
            if _comparable(key, a, b, cases):
                rows.append(compare_per_case_metric(a, b, key, cases, unit, pair, **kw))
                rows[-1]["label"] = metric_label(key, [a, b])
        if class_names and classified and a.class_names and b.class_names:
            rows += compare_classification(a, b, class_names, classified, unit, cases, pair, **kw)
            for key in PER_CASE_CLS_METRICS:
                if _comparable(key, a, b, classified):
                    rows.append(compare_per_case_metric(a, b, key, cases, unit, pair, **kw))
    adjusted = holm([r["p"] for r in rows])
    for r, p in zip(rows, adjusted):
        r["p_holm"] = float(p)
    return rows


# =============================================================================================== output
def _fmt(v, digits: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if sign and abs(v) < 0.5 * 10 ** -digits:
        return f"{0:.{digits}f}"  # not "-0.0000"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def format_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def format_table(result: dict) -> str:
    """The comparison as text: one block per pair, one row per metric."""
    settings = result["settings"]
    lines = ["Paired comparison, " + settings["unit_text"]]
    for run in result["runs"]:
        lines.append(f"  {run['label']} = {run['folder']}")
    for note in (n for n in (run.get("note") for run in result["runs"]) if n):
        lines.append(f"  note: {note}")
    current = None
    for r in result["rows"]:
        if r["pair"] != current:
            current = r["pair"]
            first, second = current.split(" vs ")
            size = (f"{r['n_units']} patients, {r['n_images']} images" if r["unit"] == "patient"
                    else f"{r['n_images']} images")
            lines += ["", f"{current}  ({size})",
                      f"  {'metric':<16}{'mean ' + first:>9}{'mean ' + second:>9}{first + ' - ' + second:>10}  "
                      f"{'95% CI':<20}{'p':>9}  {'test':<20}{'p Holm':>8}"]
        digits = METRIC_INFO[r["metric"]][1]
        ci = ("n/a" if math.isnan(r["ci_low"]) else f"[{_fmt(r['ci_low'], digits, True)}, "
                                                    f"{_fmt(r['ci_high'], digits, True)}]")
        lines.append(f"  {r['label']:<16}{_fmt(r['mean_a'], digits):>9}{_fmt(r['mean_b'], digits):>9}"
                     f"{_fmt(r['difference'], digits, True):>10}  {ci:<20}{format_p(r['p']):>9}  "
                     f"{r['test_short'] or '-':<20}{format_p(r['p_holm']):>8}")
        if r["note"]:
            lines.append(f"      {r['note']}")
    shown = list(dict.fromkeys(r["metric"] for r in result["rows"]))
    higher = [METRIC_INFO[m][0].split(" [")[0] for m in shown if METRIC_INFO[m][2]]
    lower = [METRIC_INFO[m][0].split(" [")[0] for m in shown if not METRIC_INFO[m][2]]
    better = "; ".join(f"{', '.join(dict.fromkeys(names))}: {word} is better"
                       for names, word in ((higher, "higher"), (lower, "lower")) if names)
    lines += ["", f"  difference = first run - second run; {better}",
              f"  95% CI: {settings['ci_text']}",
              f"  tests: {settings['tests_text']}",
              f"  p Holm: Holm (1979) over the {settings['n_pvalues']} p-values of this table"]
    for note in result.get("notes") or []:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def run_names(folders: list[str]) -> list[str]:
    """Short names that tell the runs apart: the fewest trailing path components (an ``evaluation`` folder left
    out) that differ between all of them, e.g. ``mtl/ddti_test`` and ``rlar/ddti_test`` for a recipe's
    ``predictions/ROW/TESTSET``."""
    parts = []
    for folder in folders:
        components = list(Path(folder).parts)
        if components and components[-1] == "evaluation":
            components.pop()
        parts.append(components or [str(folder)])
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(f) for f in folders]


def plot_comparison(result: dict, path) -> Path:
    """One panel per metric (three per row): each pair's difference first − second with its 95% CI, and the zero
    line; the pairs named by the runs' folders (:func:`run_names`), not by their letters."""
    from matplotlib.ticker import MaxNLocator

    from nnunet_mtl.atomic import save_figure_atomic
    from nnunet_mtl.evaluation.plots import new_figure
    rows = result["rows"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    name = dict(zip((r["label"] for r in result["runs"]), run_names([r["folder"] for r in result["runs"]])))
    pair_names = [" − ".join(name.get(part, part) for part in pair.split(" vs ")) for pair in pairs]
    ncols = min(3, max(1, len(metrics)))
    nrows = math.ceil(len(metrics) / ncols) if metrics else 1
    fig = new_figure(3.6 * ncols, nrows * (1.5 + 0.4 * len(pairs)) + 0.5)
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        of_metric = [r for r in rows if r["metric"] == metric]
        for r in of_metric:
            y, x = pairs.index(r["pair"]), r["difference"]
            if x is None or math.isnan(x):
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            err = None if lo is None or math.isnan(lo) else [[x - lo], [hi - x]]
            ax.errorbar([x], [y], xerr=err, fmt="o", color="black", capsize=3)
            ax.annotate(f"p Holm {format_p(r['p_holm'])}", (x, y), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7)
        ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(pairs)), pair_names if k % ncols == 0 else [""] * len(pairs))
        ax.set_ylim(len(pairs) - 0.4, -0.7)
        higher = METRIC_INFO[metric][2]
        ax.set_title(f"{of_metric[0]['label']} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("difference (first - second)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
    fig.suptitle(f"paired differences with 95% CI, unit: {result['settings']['unit']}", fontsize=9)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def check_output(output_dir, inputs: list) -> Path:
    """Before any work: the output folder (and its three files) can be written and is none of the inputs."""
    from nnunet_mtl.outputs import check_not_an_input, check_output_file, check_output_folder
    out = check_output_folder(output_dir, "comparison output folder")
    check_not_an_input(out, inputs, "comparison output folder")
    for name in OUTPUT_FILES:
        check_output_file(out / name, "comparison output")
    return out


def compare(run_paths: list, output_dir=None, *, cases_csv=None, all_pairs: bool = False,
            n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = DEFAULT_SEED) -> dict:
    """Compare the runs (see the module docstring); with ``output_dir`` write comparison.csv / .json / .png.

    Every check (the runs, their per_case.csv files, matching cases and classes, the case table, the output folder)
    comes before the first statistic is computed and the first file is written.
    """
    if len(run_paths) < 2:
        raise NnunetMtlError(f"got {len(run_paths)} run(s); expected at least two runs to compare")
    if int(n_resamples) < MIN_N_RESAMPLES:
        raise NnunetMtlError(f"--n-resamples {n_resamples} is too few; expected at least {MIN_N_RESAMPLES} "
                             f"(default {DEFAULT_N_RESAMPLES})")
    if int(seed) < 0:
        raise NnunetMtlError(f"--seed {seed} is negative; expected an integer >= 0")
    runs = [resolve_run(p) for p in run_paths]
    seen = {}
    for run in runs:
        key = run.per_case_csv.resolve()
        if key in seen:
            raise NnunetMtlError(f"runs {seen[key]} and {run.given} are the same ({run.per_case_csv}); expected "
                                 f"different runs")
        seen[key] = run.given
    if output_dir is not None:
        inputs = [p for r in runs for p in (Path(r.given), r.folder, r.per_case_csv.parent)]
        check_output(output_dir, inputs)
    for k, run in enumerate(runs):
        run.label = chr(ord("A") + k) if k < 26 else f"R{k + 1}"
        read_per_case(run)
    cases = check_same_cases(runs)
    notes = check_settings(runs)
    class_names, classified, class_notes = check_classes(runs, cases)
    notes += class_notes
    notes += check_pairs_share_metrics(runs, class_names, classified, all_pairs)
    patients = read_patients(cases_csv, cases) if cases_csv is not None else None
    unit = describe_unit(cases, patients, cases_csv)
    n_units = unit["n_patients"] if unit["unit"] == "patient" else unit["n_images"]
    if n_units < 2:
        raise NnunetMtlError(f"the runs share {n_units} {unit['unit']} ({', '.join(cases)}); expected at least two "
                             f"to compare")

    rows = compare_runs(runs, cases, unit, class_names, classified, all_pairs=all_pairs, n_resamples=n_resamples,
                        seed=seed)
    tests = {}
    for r in rows:
        if r["test_short"]:
            tests.setdefault(r["metric"], TEST_NAMES[r["test_short"]])
    unit_word = "patients" if unit["unit"] == "patient" else "images"
    settings = {
        "unit": unit["unit"], "n_images": unit["n_images"], "n_patients": unit["n_patients"],
        "unit_text": unit["text"], "case_table": None if cases_csv is None else str(cases_csv),
        "unit_rule": "patient when a case table gives some patient several of the compared images (bootstrap "
                     "draws patients, Wilcoxon / McNemar on per-patient means), else image",
        "difference": "first run - second run, per case; means and differences are over images",
        "pairs": "all pairs" if all_pairs else "the first run against each other run",
        "zero_method": ZERO_METHOD, "zero_method_reason": ZERO_METHOD_REASON,
        "n_resamples": int(n_resamples), "seed": int(seed), "confidence": CONFIDENCE,
        "bootstrap": f"scipy.stats.bootstrap, method BCa (percentile when BCa is undefined), {int(n_resamples)} "
                     f"resamples, seed {int(seed)}; paired: every resample draws {unit_word} with replacement and "
                     f"applies the same draw to both runs",
        "tests": tests,
        "holm": "Holm (1979) step-down over all p-values of the table (every metric of every pair)",
        "n_pvalues": int(sum(1 for r in rows if not math.isnan(r["p"]))),
        "ci_text": f"paired bootstrap over {unit_word} (BCa, {int(n_resamples)} resamples, seed {int(seed)})"
                   + ("; AUC with DeLong: difference ± 1.96 SE" if any(r["test_short"] == "DeLong" for r in rows)
                      else ""),
        "tests_text": _tests_text(rows),
    }
    result = {
        "settings": settings,
        "runs": [{"label": r.label, "given": r.given, "folder": str(r.folder), "per_case_csv": str(r.per_case_csv),
                  "num_cases": len(r.rows), "classes": r.class_names, "note": r.note} for r in runs],
        "num_cases": len(cases), "num_classified": len(classified),
        "rows": rows,
        "notes": notes,
    }
    if output_dir is not None:
        write_outputs(result, Path(output_dir))
    return result


TEST_NAMES = {
    "Wilcoxon": f"Wilcoxon signed-rank (Wilcoxon 1945), two-sided, zero_method=\"{ZERO_METHOD}\"",
    "McNemar exact": "McNemar (1947), exact binomial test of the discordant pairs (scipy.stats.binomtest)",
    "McNemar (clustered)": "cluster-adjusted McNemar (Durkalski et al. 2003), chi-square 1 df",
    "DeLong": "DeLong et al. (1988) test of two correlated AUCs (Sun & Xu 2014 algorithm)",
    "bootstrap": "paired bootstrap z-test of the AUC difference (difference / bootstrap sd)",
}


def _tests_text(rows: list[dict]) -> str:
    used = list(dict.fromkeys(r["test_short"] for r in rows if r["test_short"]))
    return "; ".join(f"{u} = {TEST_NAMES[u]}" for u in used)


CSV_FIELDS = ["pair", "run_a", "run_b", "metric", "label", "better", "unit", "n_units", "n_images", "mean_a", "mean_b",
              "difference", "ci_low", "ci_high", "ci_method", "test", "statistic", "p", "p_holm", "note"]


def write_outputs(result: dict, out: Path) -> list[Path]:
    """comparison.csv (one row per metric per pair, full precision), comparison.json (settings, runs, rows) and
    comparison.png, each written atomically."""
    from nnunet_mtl.atomic import write_csv, write_json

    def cell(v):
        if isinstance(v, float):  # numpy's floats too, written as plain numbers (their repr is np.float64(...))
            return "" if math.isnan(v) else repr(float(v))
        return "" if v is None else v
    out.mkdir(parents=True, exist_ok=True)
    written = [write_csv([{k: cell(r.get(k)) for k in CSV_FIELDS} for r in result["rows"]], CSV_FIELDS,
                         out / OUTPUT_FILES[0]),
               write_json(result, out / OUTPUT_FILES[1]),
               plot_comparison(result, out / OUTPUT_FILES[2])]
    return written
