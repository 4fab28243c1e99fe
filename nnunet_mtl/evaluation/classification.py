"""Case-level classification metrics (scikit-learn), for two or more classes.

Definitions (the strings in :data:`DEFINITIONS` go into summary.json):

- Classes are indices 0..K-1 named by dataset.json's ``class_labels``; every table is ordered by index.
- accuracy: fraction of cases whose predicted class equals the reference class.
- balanced_accuracy: mean over the classes present in the reference of the per-class recall (sklearn).
- precision / recall / F1 per class (one-vs-rest); a ratio with a zero denominator counts as 0 (sklearn's
  ``zero_division=0``). macro_*: the unweighted mean over the classes that occur in the reference or in the
  predictions (sklearn's default label set), so a class absent from both does not pull the mean to 0.
  Per-class entries are given for every class; a class absent from both gets NaN there.
  weighted_*: the mean of the per-class values weighted by each class's support (its number of reference cases;
  sklearn's ``average="weighted"``, ``zero_division=0``), so a class without reference cases has weight 0 and
  frequent classes count more. weighted_recall therefore equals accuracy.
- AUC: binary -> ROC AUC of the positive class (index 1) scored by its probability; more than two classes ->
  one-vs-rest macro AUC: the unweighted mean over classes of the ROC AUC of "class k vs the rest" scored by
  prob_k (equals sklearn's ``roc_auc_score(multi_class='ovr', average='macro')`` when every class is present).
  A class whose one-vs-rest problem has only one side in the reference has no AUC: it is left out of the mean and
  noted; when no class has one (e.g. only one class in the reference), AUC is NaN with a note, never an error.
- confusion matrix: rows = reference class, columns = predicted class, both ordered by class index.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             precision_recall_fscore_support, roc_auc_score)

DEFINITIONS = {
    "accuracy": "fraction of cases with predicted class == reference class",
    "balanced_accuracy": "mean per-class recall over classes present in the reference (sklearn)",
    "precision_recall_f1": "per class one-vs-rest, zero denominator -> 0 (sklearn zero_division=0); macro = "
                           "unweighted mean over classes present in reference or prediction",
    "weighted_precision_recall_f1": "per-class precision / recall / F1 (zero denominator -> 0) averaged with "
                                    "weights = support, the number of reference cases of each class (sklearn "
                                    "average='weighted', zero_division=0); weighted recall = accuracy",
    "auc": "binary: ROC AUC of class index 1 by its probability; >2 classes: one-vs-rest macro ROC AUC (mean of "
           "per-class AUCs, classes without both sides in the reference left out); undefined -> NaN (null)",
    "confusion_matrix": "rows = reference class, columns = predicted class, ordered by class index",
}


def ordered_class_names(class_labels: dict) -> list[str]:
    """Class names ordered by index; the indices must be exactly 0..K-1 and K >= 2."""
    try:
        by_index = sorted((int(v), str(k)) for k, v in class_labels.items())
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"class_labels must map class names to integer indices, got {class_labels!r}") from None
    if [i for i, _ in by_index] != list(range(len(by_index))) or len(by_index) < 2:
        raise ValueError(f"class_labels must map at least two names to the indices 0..K-1, got {class_labels!r}")
    return [name for _, name in by_index]


def _auc_or_nan(y_binary: np.ndarray, score: np.ndarray) -> float:
    if y_binary.min() == y_binary.max():
        return math.nan
    return float(roc_auc_score(y_binary, score))


def classification_metrics(y_true, y_pred, probabilities, class_names: list[str]) -> dict:
    """All classification metrics for integer labels ``y_true`` / ``y_pred`` and an (N, K) probability array.

    Returns the ``classification`` block of summary.json, plus ``notes`` (list of strings, e.g. why AUC is NaN).
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    probs = np.asarray(probabilities, dtype=float)
    k = len(class_names)
    if len(y_true) == 0:
        raise ValueError("no cases to evaluate classification on")
    if probs.shape != (len(y_true), k) or len(y_pred) != len(y_true):
        raise ValueError(f"expected {len(y_true)} predictions and probabilities of shape ({len(y_true)}, {k}), "
                         f"got {len(y_pred)} and {probs.shape}")
    for name, arr in (("reference", y_true), ("predicted", y_pred)):
        if arr.min() < 0 or arr.max() >= k:
            raise ValueError(f"{name} class indices must lie in 0..{k - 1}, got {sorted(set(arr.tolist()))}")
    notes = []

    all_labels = list(range(k))
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, zero_division=0)
    macro_p, macro_r, macro_f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=present, average="macro", zero_division=0)
    # support-weighted: classes without reference cases get weight 0, so the label set does not matter
    weighted_p, weighted_r, weighted_f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=all_labels, average="weighted", zero_division=0)

    per_class_auc = []
    for c in all_labels:
        per_class_auc.append(_auc_or_nan((y_true == c).astype(int), probs[:, c]))
    if k == 2:
        auc = per_class_auc[1]
        if math.isnan(auc):
            notes.append(f"AUC undefined: only class {class_names[int(y_true[0])]!r} occurs in the reference")
    else:
        defined = [a for a in per_class_auc if not math.isnan(a)]
        auc = float(np.mean(defined)) if defined else math.nan
        left_out = [class_names[c] for c in all_labels if math.isnan(per_class_auc[c])]
        if not defined:
            notes.append("AUC undefined: only one class occurs in the reference")
        elif left_out:
            notes.append(f"one-vs-rest AUC left out class(es) {', '.join(left_out)} (no reference case of them, "
                         f"or no other class)")

    with warnings.catch_warnings():
        # sklearn warns when a predicted class never occurs in the reference; the definition above covers it
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    per_class = {}
    for c, name in enumerate(class_names):
        absent = c not in present
        per_class[name] = {
            "precision": math.nan if absent else float(prec[c]),
            "recall": math.nan if absent else float(rec[c]),
            "f1": math.nan if absent else float(f1[c]),
            "support": int(support[c]),
            "auc_ovr": per_class_auc[c],
        }
    return {
        "num_cases": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_precision": float(macro_p),
        "macro_recall": float(macro_r),
        "macro_f1": float(macro_f),
        "weighted_precision": float(weighted_p),
        "weighted_recall": float(weighted_r),
        "weighted_f1": float(weighted_f),
        "auc": auc,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(class_names),
                             "matrix": confusion_matrix(y_true, y_pred, labels=all_labels).tolist()},
        "notes": notes,
    }
