"""The figures of one evaluation: confusion matrix, ROC curves (one-vs-rest per class) and the reliability diagram,
each written atomically (matplotlib's Agg backend, no display)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_mtl.atomic import save_figure_atomic


def new_figure(width=5.0, height=4.5):
    # Figure + Agg canvas directly: no pyplot global state, works without a display
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(classification: dict, path: Path) -> Path:
    labels = classification["confusion_matrix"]["labels"]
    matrix = np.array(classification["confusion_matrix"]["matrix"])
    fig = new_figure(1.5 + 1.0 * len(labels), 1.2 + 1.0 * len(labels))
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
    fig = new_figure()
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
    fig = new_figure(9.5 if binary else 5.0, 5.5)
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
