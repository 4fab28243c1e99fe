"""``nnunet_mtl recipe report``: our numbers beside the paper's, from the files the recipe's commands wrote and
nothing else (a missing file is a "—" and a note naming the step that writes it, so a partial run reports too).

Per test set, one table: every row's metrics, over folds as ``mean ± std`` (k folds: ``nnunet_mtl predict --per-fold``'s
fold models, each alone, as the papers report) with the t-based 95 % CI of that mean, and the fold ensemble as a second
row; with seeds (``seeds = [...]``) likewise over the seeds' models, and the seed average (``nnunet_mtl average-seeds``)
as the second row; with one fold the single value and its bootstrap 95 % CI. With k folds, the cross-validation: each
fold's model on its own validation cases, mean ± std over the folds with the t-based CI and every fold's value
(``W/crossval/ROW``, steps ``validate`` and ``crossval``). Per paper table (``[[tables]]``), the same
rows beside the paper's numbers as printed. The comparisons (``nnunet_mtl compare``: paired bootstrap CI of the
difference, Wilcoxon / McNemar / DeLong p, Holm). Per guidance ablation (``[[ablations]]``: ``nnunet_mtl
ablate-guidance``), the change of macro precision, recall and F1 when one guided feature is left out, ours (mean ± std
over the folds' models) beside the paper's as printed. Written to ``W/report/report.md`` (also printed), ``report.json``
(what a program reads) and ``plots/TABLE.png`` (ours against the paper's per metric).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from nnunet_mtl.evaluation.seeds import SEEDS_SUMMARY
from nnunet_mtl.recipes.plan import Context, ablation_file, segments
from nnunet_mtl.recipes.schema import ABLATION_METRICS, METRICS, Recipe, parse_paper_value

DEFAULT_METRICS = ("dice", "iou", "hd95", "accuracy", "auc", "macro_f1")
LABELS = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 [px]", "hd95_mm": "HD95 [mm]", "nsd": "NSD",
          "attention_iou": "IoU of P", "accuracy": "accuracy", "balanced_accuracy": "bal. acc.",
          "macro_precision": "macro P", "macro_recall": "macro R", "macro_f1": "macro F1", "weighted_f1": "weighted F1",
          "auc": "AUC", "mcc": "MCC", "brier": "Brier", "sensitivity": "sensitivity", "specificity": "specificity",
          "precision": "precision", "f1": "F1",
          "delta_macro_precision": "Δ macro P", "delta_macro_recall": "Δ macro R", "delta_macro_f1": "Δ macro F1"}
DASH = "—"
STD_SIGN = re.compile(r"(?:±|\+/-|\+-)\s*([-+])")  # the sign printed before a std


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def row_results(recipe: Recipe, ctx: Context, row: str, test_set: str) -> tuple[str | None, dict]:
    """(the file read or None, {metric: {mean, std, ci95, ensemble}}) for one row on one test set, from nnunet_mtl
    evaluate's files: with k folds the mean, std and t-based CI over the folds' models and the ensemble's value;
    with one fold the single value and its bootstrap CI (std and ensemble None)."""
    from nnunet_mtl.evaluation.aggregate import flatten_metrics
    evaluation = ctx.predictions(row, test_set) / "evaluation"
    if len(recipe.split.fold_ids) > 1 or recipe.seeds:
        # k folds: each fold's model and the fold ensemble; seeds: each seed's model and the seed average
        path = evaluation / (SEEDS_SUMMARY if recipe.seeds else "per_fold_summary.json")
        data = _read(path)
        if data is None:
            return None, {}
        if recipe.seeds:
            over = data.get("metrics", {})
            ensemble = (data.get("seed_average") or {}).get("metrics", {})
        else:
            over = (data.get("mean_std_over_folds") or {}).get("metrics", {})
            ensemble = (data.get("fold_ensemble") or {}).get("metrics", {})
        return str(path), {name: {"mean": over[key].get("mean"), "std": over[key].get("std"),
                                  "ci95": over[key].get("ci95"), "ensemble": ensemble.get(key)}
                           for name, key in METRICS.items() if key in over}
    path = evaluation / "summary.json"
    data = _read(path)
    if data is None:
        return None, {}
    flat = flatten_metrics(data)
    intervals = (data.get("confidence_intervals") or {}).get("intervals", {})
    return str(path), {name: {"mean": flat[key], "std": None, "ci95": intervals.get(key), "ensemble": None}
                       for name, key in METRICS.items() if key in flat}


def _digits(metric: str) -> int:
    return 2 if metric.startswith("hd95") else 3


def fmt(value, metric: str, std=None) -> str:
    if not _finite(value):
        return DASH
    d = _digits(metric)
    return f"{value:.{d}f}" + (f" ± {std:.{d}f}" if _finite(std) else "")


def fmt_ci(ci, metric: str) -> str:
    if not ci or not all(_finite(c) for c in ci):
        return ""
    d = _digits(metric)
    return f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"


def build_report(recipe: Recipe, ctx: Context) -> dict:
    """Everything the report shows, as data (report.json)."""
    k = len(recipe.split.fold_ids)
    report = {"recipe": recipe.name, "title": recipe.title, "workdir": str(ctx.workdir), "folds": k,
              "seeds": list(recipe.seeds),
              "split": {"kind": recipe.split.kind, "folds": recipe.split.folds, "fraction": recipe.split.fraction,
                        "seed": recipe.split.seed, "repeats": recipe.split.repeats,
                        "file": str(recipe.split.file) if recipe.split.file else None},
              "checkpoint": recipe.checkpoint, "test_sets": [], "crossval": None, "tables": [], "comparisons": [],
              "ablations": [], "missing": [], "timings": _timings(ctx)}
    results = {}
    for ts in recipe.test_sets:
        metrics = _metrics_for(recipe, ts.key)
        entry = {"key": ts.key, "label": ts.label, "metrics": list(metrics), "rows": []}
        for row in recipe.rows:
            source, results[(row.key, ts.key)] = row_results(recipe, ctx, row.key, ts.key)
            if source is None:
                step = f"seeds:{row.key}:{ts.key}" if recipe.seeds else f"evaluate:{row.key}:{ts.key}"
                report["missing"].append(f"{row.key} on {ts.key}: no evaluation yet (step {step})")
            entry["rows"].append({"row": row.key, "label": row.label, "trainer": row.trainer, **{
                m: results[(row.key, ts.key)].get(m) for m in metrics}})
        report["test_sets"].append(entry)
    if k > 1 and not recipe.seeds:
        report["crossval"] = crossval_results(recipe, ctx)
        report["missing"] += [f"cross-validation of {r['row']}: not run yet (step crossval:{r['row']})"
                              for r in report["crossval"]["rows"] if r["source"] is None]
    for table in recipe.tables:
        def cells(ours: dict, paper: dict) -> dict:
            return {m: {"ours": ours.get(m), "paper": paper.get(m), "paper_value": _paper(paper.get(m))}
                    for m in table.metrics}

        rows = []
        for row in recipe.rows:  # a table's test set is one of the recipe's (schema), so its results are there
            name = row.paper_row or row.label
            rows.append({"row": row.key, "label": row.label, "paper_row": name, "trainer": row.trainer,
                         **cells(results[(row.key, table.test_set)], table.values.get(name, {}))})
        for name, paper in table.values.items():
            if name.startswith("paper:"):
                rows.append({"row": None, "label": name[len("paper:"):], "paper_row": name, "trainer": None,
                             **cells({}, paper)})
        report["tables"].append({"id": table.id, "caption": table.caption, "test_set": table.test_set,
                                 "metrics": list(table.metrics), "rows": rows})
    for c in recipe.comparisons:
        path = ctx.comparison(c.key) / "comparison.json"
        data = _read(path)
        if data is None:
            report["missing"].append(f"comparison {c.key}: not run yet (step compare:{c.key})")
            report["comparisons"].append({"key": c.key, "a": c.a, "b": list(c.b), "test_set": c.test_set,
                                          "rows": None})
            continue
        # the runs by their place in the work folder (predictions/ROW/TESTSET): the file may come from another
        # machine's or folder's run (an archive), whose absolute paths are not this folder's
        labels = {("predictions", r, c.test_set): r for r in (c.a, *c.b)}

        def label(run):
            return labels.get(tuple(Path(str(run)).parts[-3:]), run) if run else run
        rows = [{**{k2: r.get(k2) for k2 in ("metric", "label", "mean_a", "mean_b", "difference", "ci_low", "ci_high",
                                                 "test_short", "p", "p_holm", "unit", "n_units")},
                 "a": label(r.get("run_a")), "b": label(r.get("run_b"))}
                for r in data.get("rows", [])]
        report["comparisons"].append({"key": c.key, "a": c.a, "b": list(c.b), "test_set": c.test_set,
                                      "source": str(path), "rows": rows})
    for a in recipe.ablations:
        report["ablations"].append(ablation_results(recipe, ctx, a))
        if report["ablations"][-1]["source"] is None:
            report["missing"].append(f"ablation {a.key}: not run yet (step ablate:{a.key})")
    return report


def crossval_results(recipe: Recipe, ctx: Context) -> dict:
    """Every row's cross-validation (k folds): {metric: {mean, std, ci95, values}} from ``evaluate --aggregate``'s
    W/crossval/ROW/summary.json (the metrics of the first test set, a standard set without one; no lesion-map IoU:
    nnU-Net's validation writes no maps)."""
    shown = _metrics_for(recipe, recipe.test_sets[0].key) if recipe.test_sets else DEFAULT_METRICS
    metrics = [m for m in shown if m != "attention_iou"]
    rows = []
    for row in recipe.rows:
        path = ctx.crossval(row.key) / "summary.json"
        data = _read(path)
        over = (data or {}).get("metrics", {})
        rows.append({"row": row.key, "label": row.label, "trainer": row.trainer,
                     "source": str(path) if data is not None else None,
                     **{m: {key: over[METRICS[m]].get(key) for key in ("mean", "std", "ci95", "values")}
                        if METRICS[m] in over else None for m in metrics}})
    return {"folds": len(recipe.split.fold_ids), "runs": recipe.split.kind == "holdout", "metrics": metrics,
            "rows": rows}


def _stat(entry) -> dict | None:
    """{mean, std, ensemble} of one number of ablate-guidance's JSON: a per-fold entry ({mean, std, values,
    ensemble}) or a single model's value (std and ensemble None)."""
    if isinstance(entry, dict):
        mean, std = entry.get("mean"), entry.get("std")
        return None if not _finite(mean) else {"mean": mean, "std": std if _finite(std) else None,
                                               "ensemble": entry.get("ensemble"), "values": entry.get("values")}
    return {"mean": entry, "std": None, "ensemble": None, "values": None} if _finite(entry) else None


def _paper_delta(text):
    """A paper's delta as printed, parsed; ``std_sign`` keeps the sign printed before the std (Salama et al.'s
    Table 5 prints "± -0.0044"), which parse_paper_value drops."""
    parsed = _paper(text)
    if parsed is None:
        return None
    sign = STD_SIGN.search(text)
    return {**parsed, "std_sign": sign.group(1) if sign else ""}


def ablation_results(recipe: Recipe, ctx: Context, a) -> dict:
    """One [[ablations]] entry: per guided feature, ours (mean ± std over folds, or the single model) beside the
    paper's as printed, from ablate-guidance's guidance_ablation_per_fold.json (k folds) or guidance_ablation.json
    (one fold); the baseline (all features) likewise."""
    row, ts = recipe.row(a.row), recipe.test_set(a.test_set)
    path = ctx.ablation(a.key) / ablation_file(recipe)
    data = _read(path)
    ours = {r["feature"]: r for r in (data or {}).get("features", []) if isinstance(r, dict) and "feature" in r}
    baseline = (data or {}).get("baseline") or {}
    features = list(dict.fromkeys([*ours, *a.paper, *a.paper_names]))
    rows = []
    for name in features:
        mine, paper = ours.get(name, {}), a.paper.get(name, {})
        rows.append({"feature": name, "paper_name": a.paper_names.get(name), "column": mine.get("column"), **{
            m: {"ours": _stat(mine.get(m)), "paper": paper.get(m), "paper_value": _paper_delta(paper.get(m))}
            for m in ABLATION_METRICS}})
    return {"key": a.key, "row": row.key, "label": row.label, "trainer": row.trainer, "test_set": ts.key,
            "test_set_label": ts.label, "caption": a.caption, "source": str(path) if data is not None else None,
            "folds": (data or {}).get("folds"), "metrics": list(ABLATION_METRICS),
            "baseline": {m: _stat(baseline.get(m)) for m in ("macro_precision", "macro_recall", "macro_f1")},
            "num_cases": _stat(baseline.get("num_cases")), "rows": rows}


def _paper(text):
    if text is None:
        return None
    parsed = parse_paper_value(text)
    return None if parsed is None else {"value": parsed[0], "std": parsed[1]}


def _metrics_for(recipe: Recipe, test_set: str) -> tuple[str, ...]:
    """The test set's own metrics, then those of the paper tables on it; a standard set when neither names any."""
    own = next((t.metrics for t in recipe.test_sets if t.key == test_set), ())
    chosen = [*own, *(m for t in recipe.tables if t.test_set == test_set for m in t.metrics)]
    return tuple(dict.fromkeys(chosen)) if chosen else DEFAULT_METRICS


def _timings(ctx: Context) -> dict:
    path = ctx.workdir / "logs" / "steps.jsonl"
    seconds: dict[str, float] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("status") == "done":
            seconds[entry["kind"]] = seconds.get(entry["kind"], 0.0) + float(entry["seconds"])
    total = {"total": round(sum(seconds.values()), 1)} if seconds else {}
    return {k: round(v, 1) for k, v in seconds.items()} | total


# ------------------------------------------------------------------------------------------------ Markdown
def _cell(entry: dict | None, metric: str) -> str:
    if not entry:
        return DASH
    return fmt(entry.get("mean"), metric, entry.get("std"))


def _cell_ci(entry: dict | None, metric: str) -> str:
    """Mean ± std [95 % CI] (or the single model's value [bootstrap CI])."""
    return _cell(entry, metric) + (f" {fmt_ci(entry.get('ci95'), metric)}" if entry and entry.get("ci95") else "")


def to_markdown(report: dict, recipe: Recipe) -> str:
    k = report["folds"]
    lines = [f"# {recipe.title}", ""]
    if recipe.citation:
        lines += [f"Paper: {recipe.citation}", ""]
    split = report["split"]
    how = (f"the given split {split.get('file')} ({split['folds']} fold{'s' if split['folds'] > 1 else ''})"
           if split["kind"] == "file" else
           f"{split['folds']}-fold cross-validation (patient-grouped), seed {split['seed']}" if split["kind"] == "kfold"
           else f"one patient-grouped hold-out split, {split['fraction']:.0%} validation, seed {split['seed']}"
           if split.get("repeats", 1) == 1 else
           f"{split['repeats']} patient-grouped hold-out splits (runs) as folds, {split['fraction']:.0%} validation "
           f"each, seeds {split['seed']}-{split['seed'] + split['repeats'] - 1}")
    seeds = report.get("seeds") or []
    lines += [f"Split: {how}; checkpoint {report['checkpoint']}. "
              + (f"Every row trained {len(seeds)} times, seeds {', '.join(map(str, seeds))} (nnUNet_mtl_seed). Our "
                 "cells: mean ± std over the seeds' models, each predicting alone (95 % CI of the mean, t-based); the "
                 "seed-average row: per case the mean of the seeds' values and class probabilities "
                 "(nnunet_mtl average-seeds)." if seeds else
                 "Our cells: mean ± std over the folds' models, each predicting alone (95 % CI of the mean, t-based); "
                 "the ensemble row: the folds' models averaged." if k > 1 else
                 "Our cells: the single model, with the bootstrap 95 % CI over the test images."), ""]
    extra = "seed average" if seeds else "fold ensemble" if k > 1 else None
    if recipe.note:
        lines += [f"Note: {recipe.note}", ""]
    for ts in report["test_sets"]:
        metrics = ts["metrics"]
        lines += [f"## {ts['label']}", "", "| row | trainer | " + " | ".join(LABELS[m] for m in metrics) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
        for row in ts["rows"]:
            lines.append(f"| {row['label']} | `{row['trainer']}` | " + " | ".join(
                _cell_ci(row[m], m) for m in metrics) + " |")
            if extra:
                lines.append(f"| {row['label']} ({extra}) | | " + " | ".join(
                    fmt((row[m] or {}).get("ensemble"), m) for m in metrics) + " |")
        lines.append("")
        pages = (report.get("galleries") or {}).get(ts["key"]) or {}
        if pages:
            what = ("the first seed's models" if seeds else "the fold ensemble" if k > 1 else "the model")
            links = " · ".join(f"[{row['label']}]({pages[row['row']]})" for row in ts["rows"] if row["row"] in pages)
            lines += [f"Every case in the browser ({what}; image, outlines, classes, Dice, worst first): {links}", ""]
    if report.get("crossval"):
        lines += _crossval_markdown(report["crossval"])
    for table in report["tables"]:
        metrics = table["metrics"]
        label = next((t["label"] for t in report["test_sets"] if t["key"] == table["test_set"]), table["test_set"])
        lines += [f"## {table['id']}: ours beside the paper's ({label})", ""]
        if table["caption"]:
            lines += [table["caption"], ""]
        lines += ["| row | " + " | ".join(f"{LABELS[m]} ours | {LABELS[m]} paper" for m in metrics) + " |",
                  "| --- | " + " | ".join("--- | ---" for _ in metrics) + " |"]
        for row in table["rows"]:
            name = row["label"] if row["row"] is not None else f"{row['label']} (paper only)"
            if row["row"] is not None and row["paper_row"] != row["label"]:
                name += f" ({row['paper_row']})"
            lines.append(f"| {name} | " + " | ".join(
                f"{_cell_ci(row[m]['ours'], m) if row['row'] is not None else ''} | {row[m]['paper'] or DASH}"
                for m in metrics) + " |")
        if report["comparisons"]:
            lines += ["", "Ours with the 95 % CI as above; the p-values of the differences between our rows are in "
                          "the comparisons below."]
        lines.append("")
    for c in report["comparisons"]:
        names = {r.key: r.label for r in recipe.rows}
        test_label = next((t.label for t in recipe.test_sets if t.key == c["test_set"]), c["test_set"])
        lines += [f"## Comparison {c['key']}: {names.get(c['a'], c['a'])} against "
                  f"{', '.join(names.get(b, b) for b in c['b'])} ({test_label})", ""]
        if not c["rows"]:
            lines += ["not run yet", ""]
            continue
        unit = c["rows"][0].get("unit")
        runs = ("the seed averages (per case, the mean over the seeds)" if seeds else "the fold ensembles" if k > 1
                else "the single models")
        lines += [f"Paired, {runs}, unit: {unit} (n = {c['rows'][0].get('n_units')}); difference = first minus "
                  "second, 95 % CI by paired bootstrap; p from the test named, Holm over the comparison's table.", "",
                  "| pair | metric | first | second | difference [95 % CI] | test | p | p Holm |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in c["rows"]:
            m = "hd95" if "hd95" in str(r["metric"]).lower() else "dice"  # digits: 2 for distances, else 3
            diff = fmt(r["difference"], m) + (f" [{fmt(r['ci_low'], m)}, {fmt(r['ci_high'], m)}]"
                                              if _finite(r["ci_low"]) else "")
            lines.append(f"| {r['a']} vs {r['b']} | {r['label']} | {fmt(r['mean_a'], m)} | {fmt(r['mean_b'], m)} | "
                         f"{diff} | {r['test_short'] or ''} | {_p(r['p'])} | {_p(r['p_holm'])} |")
        lines.append("")
    for a in report["ablations"]:
        lines += _ablation_markdown(a, k)
    if report["timings"]:
        times = ", ".join(f"{k2} {v:.0f}" for k2, v in report["timings"].items())
        lines += [f"Wall time of the steps run (s): {times}", ""]
    if report["missing"]:
        lines += ["Not yet available:", ""] + [f"- {m}" for m in report["missing"]] + [""]
    return "\n".join(lines)


def _crossval_markdown(cv: dict) -> list[str]:
    metrics, k = cv["metrics"], cv["folds"]
    # repeated hold-out splits (split.repeats) are runs on random splits whose validation sets overlap, not folds
    title, each = (("Validation: each run's model on its own validation cases", f"each of the {k} hold-out runs "
                    "(random splits; their validation sets overlap)") if cv.get("runs") else
                   ("Cross-validation: each fold's model on its own validation cases", f"each of the {k} folds"))
    over = "runs" if cv.get("runs") else "folds"
    lines = [f"## {title}", "",
             f"nnU-Net's final validation (the final checkpoint) of {each}, scored by nnunet_mtl evaluate "
             f"(W/crossval/ROW/fold_K); our cells: mean ± std over the {over} (95 % CI of the mean, t-based), then "
             f"each {over[:-1]}'s value in order.", "",
             "| row | trainer | " + " | ".join(LABELS[m] for m in metrics) + " |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
    for row in cv["rows"]:
        lines.append(f"| {row['label']} | `{row['trainer']}` | " + " | ".join(
            _cell_ci(row[m], m) for m in metrics) + " |")
        lines.append(f"| {row['label']} (per {over[:-1]}) | | " + " | ".join(
            " / ".join(fmt(v, m) for v in (row[m] or {}).get("values") or []) or DASH for m in metrics) + " |")
    return lines + [""]


def _delta(entry: dict | None) -> str:
    if not entry:
        return DASH
    mean = entry["mean"] if round(entry["mean"], 4) != 0 else 0.0  # +0.0000 as the paper prints it, not -0.0000
    return f"{mean:+.4f}" + (f" ± {entry['std']:.4f}" if _finite(entry.get("std")) else "")


def _ablation_markdown(a: dict, k: int) -> list[str]:
    lines = [f"## Leave one guided feature out: {a['label']} on {a['test_set_label']} (ablation {a['key']})", ""]
    if a["caption"]:
        lines += [a["caption"], ""]
    if a["source"] is None:
        lines += [f"not run yet (step ablate:{a['key']}); the paper's values:", ""]
    else:
        b = a["baseline"]
        over = f"mean ± std over the {k} folds' models, each alone" if k > 1 else "the single model"
        f1 = b.get("macro_f1") or {}
        ensemble = f"; fold ensemble macro F1 {f1['ensemble']:.4f}" if _finite(f1.get("ensemble")) else ""
        lines += [f"Baseline (every feature): macro F1 {_plain(f1)}, macro P {_plain(b.get('macro_precision'))}, "
                  f"macro R {_plain(b.get('macro_recall'))} ({over}{ensemble}). Our cells: the change when the "
                  f"feature's classifier weights are zeroed ({over}); the paper's as printed.", ""]
    metrics = a["metrics"]
    lines += ["| feature | " + " | ".join(f"{LABELS[m]} ours | {LABELS[m]} paper" for m in metrics) + " |",
              "| --- | " + " | ".join("--- | ---" for _ in metrics) + " |"]
    for r in a["rows"]:
        name = r["feature"] + (f" (paper: {r['paper_name']})" if r["paper_name"] and r["paper_name"] != r["feature"]
                               else "")
        lines.append(f"| {name} | " + " | ".join(f"{_delta(r[m]['ours'])} | {r[m]['paper'] or DASH}"
                                                for m in metrics) + " |")
    return lines + [""]


def _plain(entry: dict | None) -> str:
    if not entry:
        return DASH
    return f"{entry['mean']:.4f}" + (f" ± {entry['std']:.4f}" if _finite(entry.get("std")) else "")


def _p(p) -> str:
    if not _finite(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# ------------------------------------------------------------------------------------------------ plots
def plot_tables(report: dict, folder: Path) -> list[Path]:
    """One figure per paper table: per metric, our value (± std over folds) and the paper's, per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for table in report["tables"]:
        metrics, rows = table["metrics"], table["rows"]
        if not metrics or not rows:
            continue
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 0.45 * len(rows) + 1.6),
                                 squeeze=False)
        for ax, m in zip(axes[0], metrics):
            for i, row in enumerate(rows):
                ours_entry = row[m]["ours"]
                if ours_entry and _finite(ours_entry.get("mean")):
                    std = ours_entry.get("std")
                    ax.errorbar(ours_entry["mean"], i, xerr=std if _finite(std) else None, fmt="o", color="C0",
                                label="ours" if i == 0 else None, capsize=3)
                paper = row[m]["paper_value"]
                if paper:
                    ax.errorbar(paper["value"], i + 0.15, xerr=paper["std"] if _finite(paper["std"]) else None,
                                fmt="x", color="C3", label="paper", capsize=3)
            ax.set_yticks(range(len(rows)), [r["label"] for r in rows] if ax is axes[0][0] else [""] * len(rows))
            ax.set_title(LABELS[m])
            ax.invert_yaxis()
            ax.grid(axis="x", alpha=0.3)
        handles, labels = [], []
        for ax in axes[0]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="lower right")
        fig.suptitle(f"{table['id']} ({table['test_set']})")
        fig.tight_layout()
        path = folder / f"{_safe(table['id'])}_{table['test_set']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower() or "table"


def gallery_source(recipe: Recipe, ctx: Context, row: str, test_set: str) -> Path:
    """The prediction folder a row's gallery of a test set shows: the fold ensemble with k folds (what the
    comparisons test), the single model with one fold; with seeds the first seed's (a gallery shows one model's
    masks; the seed average has probabilities but no masks)."""
    seed = recipe.seeds[0] if recipe.seeds else None
    folder = ctx.predictions(row, test_set, seed)
    return folder / "ensemble" if len(recipe.split.fold_ids) > 1 else folder


def write_galleries(recipe: Recipe, ctx: Context, folder: Path) -> dict:
    """``folder/ROW__TESTSET.html`` (nnunet_mtl gallery) for every row and test set evaluated so far, rewritten
    each time the report is; {test set: {row: the page's path relative to the report}}. A row not evaluated yet is
    left out (the report's missing list says so), and so is one whose masks are not there (its evaluation copied or
    restored without them)."""
    from nnunet_mtl.evaluation.inputs import load_class_labels
    from nnunet_mtl.evaluation.gallery import write_gallery
    pages: dict = {}
    for ts in recipe.test_sets:
        raw = ctx.raw / recipe.datasets[ts.dataset].folder
        for row in recipe.rows:
            pred = gallery_source(recipe, ctx, row.key, ts.key)
            if not (pred / "evaluation" / "per_case.csv").is_file():
                continue
            if (segments(row.trainer) and not any(pred.glob("*.png"))) or not (raw / "imagesTs").is_dir():
                continue  # an evaluation kept without its masks or images (a results archive): nothing to draw
            html = folder / f"{_safe(row.key)}__{_safe(ts.key)}.html"
            write_gallery(pred, raw / "labelsTs", [raw / "imagesTs"], html, cases_csv=raw / "cases.csv",
                          class_labels=load_class_labels(raw / "dataset.json"), overwrite=True,
                          log=lambda message: None)
            pages.setdefault(ts.key, {})[row.key] = str(html.relative_to(folder.parent))
    return pages


def write_report(recipe: Recipe, ctx: Context, output: Path | None = None) -> tuple[str, list[Path]]:
    """Build, write (report.md, report.json, plots/, galleries/) and return the Markdown and the files written."""
    from nnunet_mtl.atomic import atomic_open
    folder = output or ctx.workdir / "report"
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    report = build_report(recipe, ctx)
    report["galleries"] = write_galleries(recipe, ctx, folder / "galleries")
    markdown = to_markdown(report, recipe)
    with atomic_open(folder / "report.md") as f:
        f.write(markdown + "\n")
    with atomic_open(folder / "report.json") as f:
        json.dump(report, f, indent=2, default=float)
    plots = plot_tables(report, folder / "plots")
    pages = [folder / p for rows in report["galleries"].values() for p in rows.values()]
    return markdown, [folder / "report.md", folder / "report.json", *plots, *pages]
