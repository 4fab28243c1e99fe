"""Leave-one-guided-feature-out analysis (thyroid paper Sec. 3.5, Table 5).

For each guided feature k (entry k of h_tirads, Eq. 2) the classifier weight column w_k is set to 0 in every fold
(all other weights unchanged) and the test set is classified again; reported is the change of macro precision,
recall and F1 against the unmodified model.

The network is run once: the predictor records every embedding h the classifier saw (per fold, test-time mirror
and sliding-window tile). Zeroing w_k only changes logits = W h + b, so each ablation re-applies the modified
classifier to the recorded embeddings and averages the softmax exactly as prediction does (over mirrors and tiles
of a fold, then over folds).

Per fold (``nnunet_mtl ablate-guidance -f 0 1 2 --per-fold``): the same ablation of each fold's model alone and of
the fold ensemble; :func:`aggregate_fold_ablations` gives, for every feature, the mean and sample std (ddof=1)
over the folds of every delta (and of the number of changed predictions), next to the ensemble's value.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nnunet_mtl.evaluation.classification import classification_metrics

METRICS = ("macro_precision", "macro_recall", "macro_f1")
DELTAS = tuple(f"delta_{m}" for m in METRICS)
METRIC_DEFINITION = "macro over the classes present in reference or prediction (sklearn, zero_division=0)"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)


def class_probabilities(embeddings: np.ndarray, classifiers: list[tuple[np.ndarray, np.ndarray]],
                        zero_columns: tuple[int, ...] = ()) -> np.ndarray:
    """Class probabilities of one case from its recorded embeddings (folds, mirrors, tiles, K), with the classifier
    columns ``zero_columns`` set to 0 (Table 5: w_k <- 0)."""
    if embeddings.shape[0] != len(classifiers):
        raise ValueError(f"{embeddings.shape[0]} folds of embeddings but {len(classifiers)} classifiers")
    per_fold = []
    for h, (weight, bias) in zip(embeddings, classifiers):
        weight = weight.copy()
        weight[:, list(zero_columns)] = 0.0
        probs = softmax(h.astype(np.float64) @ weight.T + bias)  # Eq. 1: logits = W h + b
        per_fold.append(probs.mean(axis=(0, 1)))  # mirrors, then tiles: equal counts, so one mean
    return np.mean(per_fold, axis=0)


def ablate_guidance(embeddings: dict[str, np.ndarray], classifiers, y_true: dict[str, int], class_names: list[str],
                    feature_names: list[str]) -> tuple[dict, list[dict]]:
    """Baseline metrics and one row per guided feature: the metrics with its column zeroed and their change."""
    cases = sorted(embeddings)
    truth = np.array([y_true[c] for c in cases])

    def metrics(zero_columns=()):
        probs = np.stack([class_probabilities(embeddings[c], classifiers, zero_columns) for c in cases])
        return classification_metrics(truth, probs.argmax(1), probs, class_names), probs

    baseline, baseline_probs = metrics()
    rows = []
    for k, name in enumerate(feature_names):
        ablated, probs = metrics((k,))
        row = {"feature": name, "column": k,
               "changed_predictions": int((probs.argmax(1) != baseline_probs.argmax(1)).sum())}
        for m in METRICS:
            row[m] = ablated[m]
            row[f"delta_{m}"] = ablated[m] - baseline[m]
        rows.append(row)
    return baseline, rows


def format_ablation_table(baseline: dict, rows: list[dict]) -> str:
    header = f"{'feature':<22} {'d precision':>12} {'d recall':>10} {'d F1':>9} {'changed':>8}"
    lines = [f"baseline: macro precision {baseline['macro_precision']:.4f}, recall {baseline['macro_recall']:.4f}, "
             f"F1 {baseline['macro_f1']:.4f} ({baseline['num_cases']} cases)", header, "-" * len(header)]
    for r in sorted(rows, key=lambda r: r["delta_macro_f1"]):
        lines.append(f"{r['feature']:<22} {r['delta_macro_precision']:>+12.4f} {r['delta_macro_recall']:>+10.4f} "
                     f"{r['delta_macro_f1']:>+9.4f} {r['changed_predictions']:>8d}")
    return "\n".join(lines)


def _figure(width: float, height: float):
    # Figure + Agg canvas directly: no pyplot global state, works without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_ablation(rows: list[dict], path) -> None:
    from nnunet_mtl.atomic import save_figure_atomic
    ordered = sorted(rows, key=lambda r: r["delta_macro_f1"])
    fig = _figure(7, 0.35 * len(rows) + 1.5)
    ax = fig.add_subplot()
    ax.barh([r["feature"] for r in ordered], [r["delta_macro_f1"] for r in ordered], color="tab:blue")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("change of macro F1 when the feature's classifier weights are zeroed")
    fig.tight_layout()
    save_figure_atomic(fig, path)


def write_ablation(output, baseline: dict, rows: list[dict], reference) -> list[Path]:
    """guidance_ablation.csv, guidance_ablation.json and guidance_ablation.png in ``output`` (each atomically)."""
    from nnunet_mtl.atomic import write_csv, write_json
    output = Path(output)
    written = [write_csv(rows, list(rows[0]), output / "guidance_ablation.csv"),
               write_json({"baseline": {k: baseline[k] for k in ("num_cases", *METRICS, "auc")},
                           "features": rows, "reference": str(reference), "metric_definition": METRIC_DEFINITION},
                          output / "guidance_ablation.json")]
    plot_ablation(rows, output / "guidance_ablation.png")
    return written + [output / "guidance_ablation.png"]


# ----------------------------------------------------------------------------------------------- per fold
def _mean_std(values: list[float]) -> dict:
    """mean and sample std (ddof=1) over the folds; std NaN below two folds."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan,
            "values": [float(v) for v in arr]}


def aggregate_fold_ablations(per_fold: dict, ensemble: tuple[dict, list[dict]] | None = None) -> dict:
    """Mean ± sample std over folds of every delta of :func:`ablate_guidance`.

    ``per_fold``: {fold: (baseline, rows)} of each fold's model alone, in fold order; ``ensemble``: (baseline,
    rows) of the fold ensemble or None. Returns {"folds", "num_folds", "baseline": {metric: {"mean", "std",
    "values", "ensemble"}}, "features": [{"feature", "column", <delta or changed_predictions>: {"mean", "std",
    "values", "ensemble"}}]} (values in fold order; "ensemble" None without an ensemble).
    """
    if not per_fold:
        raise ValueError("no fold to aggregate")
    folds = list(per_fold)
    features = [[r["feature"] for r in rows] for _, rows in per_fold.values()]
    if ensemble is not None:
        features.append([r["feature"] for r in ensemble[1]])
    if any(f != features[0] for f in features):
        raise ValueError(f"the folds ablated different features: {features}")
    baseline = {}
    for m in ("num_cases", *METRICS, "auc"):
        baseline[m] = _mean_std([_number(b[m]) for b, _ in per_fold.values()])
        baseline[m]["ensemble"] = None if ensemble is None else _number(ensemble[0][m])
    rows = []
    for i, name in enumerate(features[0]):
        row = {"feature": name, "column": per_fold[folds[0]][1][i]["column"]}
        for key in (*DELTAS, "changed_predictions"):
            row[key] = _mean_std([rows_k[i][key] for _, rows_k in per_fold.values()])
            row[key]["ensemble"] = None if ensemble is None else float(ensemble[1][i][key])
        rows.append(row)
    return {"folds": folds, "num_folds": len(folds), "baseline": baseline, "features": rows,
            "std": "sample std (ddof=1) over the folds' models alone", "metric_definition": METRIC_DEFINITION}


def _number(v) -> float:
    return math.nan if v is None else float(v)


def per_fold_ablation_csv_rows(agg: dict) -> tuple[list[str], list[dict]]:
    """One row per feature: mean and std over folds of each delta, the ensemble's delta, each fold's delta."""
    fields = ["feature", "column"]
    for key in (*DELTAS, "changed_predictions"):
        fields += [f"mean_{key}", f"std_{key}", f"ensemble_{key}"]
    for k in agg["folds"]:
        fields += [f"fold_{k}_{key}" for key in (*DELTAS, "changed_predictions")]
    out = []
    for r in agg["features"]:
        row = {"feature": r["feature"], "column": r["column"]}
        for key in (*DELTAS, "changed_predictions"):
            row.update({f"mean_{key}": r[key]["mean"], f"std_{key}": r[key]["std"],
                        f"ensemble_{key}": r[key]["ensemble"]})
            row.update({f"fold_{k}_{key}": v for k, v in zip(agg["folds"], r[key]["values"])})
        out.append({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v for k, v in row.items()})
    return fields, out


def write_per_fold_ablation(output, agg: dict) -> list[Path]:
    """guidance_ablation_per_fold.csv / .json / .png in ``output`` (each atomically)."""
    from nnunet_mtl.atomic import write_csv, write_json
    output = Path(output)
    fields, rows = per_fold_ablation_csv_rows(agg)
    written = [write_csv(rows, fields, output / "guidance_ablation_per_fold.csv"),
               write_json(agg, output / "guidance_ablation_per_fold.json")]
    plot_per_fold_ablation(agg, output / "guidance_ablation_per_fold.png")
    return written + [output / "guidance_ablation_per_fold.png"]


def _pm(stats: dict, digits: int = 4, signed: bool = True) -> str:
    sign = "+" if signed else ""
    std = "n/a" if math.isnan(stats["std"]) else f"{stats['std']:.{digits}f}"
    return f"{stats['mean']:{sign}.{digits}f} ± {std}"


def format_per_fold_ablation_table(agg: dict) -> str:
    k = agg["num_folds"]
    b = agg["baseline"]
    ens = b["macro_f1"]["ensemble"]
    lines = [f"Guidance ablation per fold: mean ± sample std over {k} folds' models alone (folds "
             f"{', '.join(map(str, agg['folds']))}); 'ensemble' = the folds together",
             f"baseline macro precision {_pm(b['macro_precision'], signed=False)}, recall "
             f"{_pm(b['macro_recall'], signed=False)}, F1 {_pm(b['macro_f1'], signed=False)}"
             + ("" if ens is None else f"; ensemble F1 {ens:.4f}")]
    header = (f"{'feature':<22} {'d precision':>18} {'d recall':>18} {'d F1':>18} {'changed':>14}"
              f" {'ensemble d F1':>14}")
    lines += [header, "-" * len(header)]
    for r in sorted(agg["features"], key=lambda r: r["delta_macro_f1"]["mean"]):
        e = r["delta_macro_f1"]["ensemble"]
        lines.append(f"{r['feature']:<22} {_pm(r['delta_macro_precision']):>18} {_pm(r['delta_macro_recall']):>18} "
                     f"{_pm(r['delta_macro_f1']):>18} {_pm(r['changed_predictions'], 1, signed=False):>14} "
                     f"{'n/a' if e is None else f'{e:+.4f}':>14}")
    return "\n".join(lines)


def plot_per_fold_ablation(agg: dict, path) -> None:
    from nnunet_mtl.atomic import save_figure_atomic
    ordered = sorted(agg["features"], key=lambda r: r["delta_macro_f1"]["mean"])
    fig = _figure(7, 0.35 * len(ordered) + 1.5)
    ax = fig.add_subplot()
    stds = [0.0 if math.isnan(r["delta_macro_f1"]["std"]) else r["delta_macro_f1"]["std"] for r in ordered]
    ax.barh([r["feature"] for r in ordered], [r["delta_macro_f1"]["mean"] for r in ordered], xerr=stds,
            color="tab:blue", capsize=3, label=f"mean ± std over {agg['num_folds']} folds")
    ensemble = [r["delta_macro_f1"]["ensemble"] for r in ordered]
    if all(e is not None for e in ensemble):
        ax.plot(ensemble, range(len(ordered)), "k|", markersize=12, label="fold ensemble")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("change of macro F1 when the feature's classifier weights are zeroed")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    save_figure_atomic(fig, path)
