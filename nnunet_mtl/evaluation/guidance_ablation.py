"""Leave-one-guided-feature-out analysis (thyroid paper Sec. 3.5, Table 5).

For each guided feature k (entry k of h_tirads, Eq. 2) the classifier weight column w_k is set to 0 in every fold
(all other weights unchanged) and the test set is classified again; reported is the change of macro precision,
recall and F1 against the unmodified model.

The network is run once: the predictor records every embedding h the classifier saw (per fold, test-time mirror
and sliding-window tile). Zeroing w_k only changes logits = W h + b, so each ablation re-applies the modified
classifier to the recorded embeddings and averages the softmax exactly as prediction does (over mirrors and tiles
of a fold, then over folds).
"""
from __future__ import annotations

import numpy as np

from nnunet_mtl.evaluation.classification import classification_metrics

METRICS = ("macro_precision", "macro_recall", "macro_f1")


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


def plot_ablation(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    ordered = sorted(rows, key=lambda r: r["delta_macro_f1"])
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.5))
    ax.barh([r["feature"] for r in ordered], [r["delta_macro_f1"] for r in ordered], color="tab:blue")
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("change of macro F1 when the feature's classifier weights are zeroed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
