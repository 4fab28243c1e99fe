"""Case-level classification metrics (scikit-learn), for two or more classes.

Definitions (the strings in :data:`DEFINITIONS` go into summary.json):

- Classes are indices 0..K-1 named by dataset.json's ``class_labels``; every table is ordered by index.
- accuracy: fraction of cases whose predicted class equals the reference class.
- balanced_accuracy: mean over the classes present in the reference of the per-class recall (sklearn).
- precision / recall / F1 per class (one-vs-rest); a ratio with a zero denominator counts as 0 (sklearn's
  ``zero_division=0``). Per class also sensitivity (= recall, TP / (TP + FN)) and specificity (TN / (TN + FP)),
  from sklearn's one-vs-rest confusion matrices (``multilabel_confusion_matrix``), zero denominator -> 0.
  macro_*: the unweighted mean over the classes that occur in the reference or in the predictions (sklearn's
  default label set), so a class absent from both does not pull the mean to 0.
  Per-class entries are given for every class; a class absent from both gets NaN there.
  weighted_*: the mean of the per-class values weighted by each class's support (its number of reference cases;
  sklearn's ``average="weighted"``, ``zero_division=0``), so a class without reference cases has weight 0 and
  frequent classes count more. weighted_recall therefore equals accuracy.
- AUC: binary -> ROC AUC of the positive class (index 1) scored by its probability; more than two classes ->
  one-vs-rest macro AUC: the unweighted mean over classes of the ROC AUC of "class k vs the rest" scored by
  prob_k (equals sklearn's ``roc_auc_score(multi_class='ovr', average='macro')`` when every class is present).
  A class whose one-vs-rest problem has only one side in the reference has no AUC: it is left out of the mean and
  noted; when no class has one (e.g. only one class in the reference), AUC is NaN with a note, never an error.
- positive class: when a class is named ``malignant`` (any case; a benign / malignant task, or BI-RADS-like tasks
  with such a class), it is the positive class and every other class negative, and its one-vs-rest sensitivity,
  specificity, precision and F1 are headline numbers (``positive_class``, ``sensitivity``, ``specificity``,
  ``precision``, ``f1``): what Fan et al. and most diagnostic papers report. Zero denominators count as 0, as above
  (no NaN, so the bootstrap's resamples and the point estimate follow one rule). Tasks without such a class have
  none of these keys.
- confusion matrix: rows = reference class, columns = predicted class, both ordered by class index.
- MCC: Matthews correlation coefficient (Matthews 1975, Biochim Biophys Acta 405:442-451), sklearn's
  ``matthews_corrcoef``; for more than two classes its multiclass generalization (Gorodkin 2004, R_K) from the
  K x K confusion matrix. 0 when it is undefined (one class only in the reference or in the prediction).
- Brier score (Brier 1950, Mon Weather Rev 78:1-3): binary -> mean over cases of (prob_1 - [reference == 1])^2,
  the squared error of the positive class's probability (sklearn's ``brier_score_loss``, range 0..1); more than two
  classes -> mean over cases of sum_k (prob_k - [reference == k])^2, Brier's original multi-category score against
  the one-hot vector (range 0..2; sklearn's multiclass ``brier_score_loss``). Lower is better. Note that the binary
  score is half of the multi-category score applied to two classes.
- ECE: top-label expected calibration error (Naeini et al. 2015, AAAI; Guo et al. 2017, ICML): confidence =
  max_k prob_k, correct = [arg max_k prob_k == reference] (from the probabilities, not the predicted_class column),
  M equal-width bins ((m-1)/M, m/M] (default M = :data:`DEFAULT_ECE_BINS` = 15, as Guo et al.),
  ECE = sum_m |B_m|/N * |accuracy(B_m) - mean confidence(B_m)|. The bins are also the reliability diagram's.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, matthews_corrcoef,
                             multilabel_confusion_matrix, precision_recall_fscore_support, roc_auc_score)

DEFAULT_ECE_BINS = 15
POSITIVE_CLASS_NAME = "malignant"  # the positive class of the headline sensitivity / specificity / precision / F1
# the headline metrics of the positive class (keys of the classification block, with a bootstrap interval each)
POSITIVE_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1")

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
    "sensitivity_specificity": "per class one-vs-rest from sklearn multilabel_confusion_matrix: sensitivity = "
                               "TP/(TP+FN) (= recall), specificity = TN/(TN+FP); zero denominator -> 0",
    "positive_class_metrics": "with a class named 'malignant' (positive_class), every other class negative: "
                              "sensitivity = TP/(TP+FN), specificity = TN/(TN+FP), precision = TP/(TP+FP), "
                              "f1 = 2TP/(2TP+FP+FN) of that class one-vs-rest; zero denominator -> 0 (sklearn "
                              "zero_division=0); absent for tasks without such a class",
    "mcc": "Matthews correlation coefficient (Matthews 1975), sklearn matthews_corrcoef; >2 classes: its multiclass "
           "generalization from the K x K confusion matrix (Gorodkin 2004); undefined -> 0",
    "brier": "Brier score (Brier 1950), lower is better: binary -> mean over cases of (prob of class index 1 - "
             "[reference is class 1])^2 (sklearn brier_score_loss, 0..1); >2 classes -> mean over cases of "
             "sum_k (prob_k - one-hot reference_k)^2 (Brier's multi-category score, 0..2)",
}


def _ece_definition(n_bins: int) -> str:
    return (f"top-label expected calibration error (Naeini et al. 2015; Guo et al. 2017): confidence = max "
            f"probability, correct = arg max probability == reference, {n_bins} equal-width bins ((m-1)/{n_bins}, "
            f"m/{n_bins}]; sum over bins of (cases in bin / all cases) * |accuracy - mean confidence|")


def definitions(ece_bins: int = DEFAULT_ECE_BINS) -> dict:
    """The classification entries of summary.json's "definitions", with the number of ECE bins written out."""
    return {**DEFINITIONS, "ece": _ece_definition(ece_bins)}


def ordered_class_names(class_labels: dict) -> list[str]:
    """Class names ordered by index; the indices must be exactly 0..K-1 and K >= 2."""
    try:
        by_index = sorted((int(v), str(k)) for k, v in class_labels.items())
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"class_labels must map class names to integer indices, got {class_labels!r}") from None
    if [i for i, _ in by_index] != list(range(len(by_index))) or len(by_index) < 2:
        raise ValueError(f"class_labels must map at least two names to the indices 0..K-1, got {class_labels!r}")
    return [name for _, name in by_index]


def positive_class_index(class_names: list[str]) -> int | None:
    """Index of the positive class of the headline metrics: the class named ``malignant`` (case-insensitive), or
    None when there is none (e.g. TI-RADS levels), where no class is more 'positive' than another."""
    found = [i for i, name in enumerate(class_names) if str(name).strip().lower() == POSITIVE_CLASS_NAME]
    return found[0] if len(found) == 1 else None


def _auc_or_nan(y_binary: np.ndarray, score: np.ndarray) -> float:
    if y_binary.min() == y_binary.max():
        return math.nan
    return float(roc_auc_score(y_binary, score))


# ------------------------------------------------------------------------------------------ calibration
def per_case_brier(y_true, probabilities) -> np.ndarray:
    """Each case's Brier term (see the module docstring): binary (p_1 - y)^2, else sum_k (p_k - onehot_k)^2."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probabilities, dtype=float)
    if probs.shape[1] == 2:
        return (probs[:, 1] - (y_true == 1)) ** 2
    return ((probs - np.eye(probs.shape[1])[y_true]) ** 2).sum(axis=1)


def _top_label(y_true, probabilities) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probabilities, dtype=float)
    return probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(y_true, dtype=int)).astype(float)


def ece_bin_index(confidence, n_bins: int = DEFAULT_ECE_BINS) -> np.ndarray:
    """Bin of each confidence among ``n_bins`` equal-width right-closed bins ((m-1)/M, m/M]; 0 goes into the first."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"the number of ECE bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.clip(np.searchsorted(edges, np.asarray(confidence, dtype=float), side="left") - 1, 0, int(n_bins) - 1)


def reliability_bins(y_true, probabilities, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """Top-label reliability table: per bin the number of cases, their mean confidence and their accuracy (NaN for
    an empty bin), and the ECE over them (Naeini et al. 2015; Guo et al. 2017)."""
    confidence, correct = _top_label(y_true, probabilities)
    index = ece_bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(float)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(index, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    ece = float(np.abs(correct_sum - conf_sum).sum() / count.sum())
    return {"n_bins": int(n_bins), "bin_edges": np.linspace(0.0, 1.0, int(n_bins) + 1).tolist(),
            "count": count.astype(int).tolist(), "mean_confidence": mean_conf.tolist(),
            "accuracy": accuracy.tolist(), "ece": ece}


def expected_calibration_error(y_true, probabilities, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (Naeini et al. 2015; Guo et al. 2017); see the module
    docstring."""
    return reliability_bins(y_true, probabilities, n_bins)["ece"]


# ------------------------------------------------------------------------------------------ all metrics
def classification_metrics(y_true, y_pred, probabilities, class_names: list[str],
                           ece_bins: int = DEFAULT_ECE_BINS) -> dict:
    """All classification metrics for integer labels ``y_true`` / ``y_pred`` and an (N, K) probability array.

    Returns the ``classification`` block of summary.json, plus ``notes`` (list of strings, e.g. why AUC is NaN)
    and ``reliability`` (the top-label reliability table behind the ECE, see :func:`reliability_bins`).
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
    reliability = reliability_bins(y_true, probs, ece_bins)
    # one-vs-rest 2 x 2 tables [[TN, FP], [FN, TP]] per class (sklearn), for specificity
    ovr = multilabel_confusion_matrix(y_true, y_pred, labels=all_labels)
    specificity = [_safe_ratio(ovr[c, 0, 0], ovr[c, 0, 0] + ovr[c, 0, 1]) for c in all_labels]
    per_class = {}
    for c, name in enumerate(class_names):
        absent = c not in present
        per_class[name] = {
            "precision": math.nan if absent else float(prec[c]),
            "recall": math.nan if absent else float(rec[c]),
            "f1": math.nan if absent else float(f1[c]),
            "support": int(support[c]),
            "auc_ovr": per_class_auc[c],
            "sensitivity": math.nan if absent else float(rec[c]),
            "specificity": math.nan if absent else specificity[c],
        }
    positive = positive_class_index(list(class_names))
    headline = {} if positive is None else {
        "positive_class": class_names[positive],
        "sensitivity": float(rec[positive]),
        "specificity": specificity[positive],
        "precision": float(prec[positive]),
        "f1": float(f1[positive]),
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
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "brier": float(per_case_brier(y_true, probs).mean()),
        "ece": reliability["ece"],
        **headline,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(class_names),
                             "matrix": confusion_matrix(y_true, y_pred, labels=all_labels).tolist()},
        "reliability": reliability,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------ resampled (bootstrap)
RESAMPLED_METRICS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
                     "weighted_precision", "weighted_recall", "weighted_f1", "auc", "mcc", "brier", "ece")


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for the bool labels ``positive`` under each row of case weights, by ranks.

    AUC = sum over (positive i, negative j) of w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (W_pos W_neg), the
    Mann-Whitney form that sklearn's ``roc_auc_score(sample_weight=w)`` equals; NaN where one side has no weight.
    The scores are sorted once; each row costs O(N).
    """
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first case of each run of tied scores
    w = weights[:, order]
    pos = positive[order]
    w_pos = np.add.reduceat(np.where(pos, w, 0.0), starts, axis=1)
    w_neg = np.add.reduceat(np.where(pos, 0.0, w), starts, axis=1)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    num = (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _safe_ratio(num, den) -> float:
    """num / den as a float, 0 where den is 0 (sklearn's zero_division=0)."""
    return float(num) / float(den) if den > 0 else 0.0


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (sklearn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def resampled_metrics(weights, y_true, y_pred, probabilities, ece_bins: int = DEFAULT_ECE_BINS,
                      positive_class: int | None = None) -> dict:
    """The scalar metrics of :func:`classification_metrics` under many case weightings at once.

    ``weights`` is (B, N): row b gives each case's multiplicity in resample b (a case drawn twice has weight 2; a
    patient drawn twice gives each of its images weight 2). Every metric here is one of a multiset of cases, so
    weight w means the case counted w times: with all weights 1 the values equal :func:`classification_metrics`'s.
    Returns {metric: (B,) array} for :data:`RESAMPLED_METRICS`, plus :data:`POSITIVE_CLASS_METRICS` of the class
    index ``positive_class`` when given; everything is vectorized over B.
    """
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    probs = np.asarray(probabilities, dtype=float)
    n, k = probs.shape
    if w.shape[1] != n or len(y_true) != n or len(y_pred) != n:
        raise ValueError(f"weights of shape {w.shape} do not fit {n} cases")
    pair = np.zeros((n, k * k))
    pair[np.arange(n), y_true * k + y_pred] = 1.0
    cm = (w @ pair).reshape(-1, k, k)  # rows = reference, columns = predicted, weighted counts
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    precision, recall, f1 = _ratio(tp, predicted), _ratio(tp, support), _ratio(2 * tp, support + predicted)
    in_ref = support > 0
    in_any = in_ref | (predicted > 0)
    out = {
        "accuracy": tp.sum(axis=1) / total,
        "balanced_accuracy": (recall * in_ref).sum(axis=1) / in_ref.sum(axis=1),
        "macro_precision": (precision * in_any).sum(axis=1) / in_any.sum(axis=1),
        "macro_recall": (recall * in_any).sum(axis=1) / in_any.sum(axis=1),
        "macro_f1": (f1 * in_any).sum(axis=1) / in_any.sum(axis=1),
        "weighted_precision": (precision * support).sum(axis=1) / total,
        "weighted_recall": (recall * support).sum(axis=1) / total,
        "weighted_f1": (f1 * support).sum(axis=1) / total,
    }
    # MCC as sklearn computes it from the confusion matrix (0 where undefined)
    cov_tp = tp.sum(axis=1) * total - (support * predicted).sum(axis=1)
    cov_pp = total ** 2 - (predicted ** 2).sum(axis=1)
    cov_tt = total ** 2 - (support ** 2).sum(axis=1)
    denom = cov_pp * cov_tt
    out["mcc"] = np.divide(cov_tp, np.sqrt(np.where(denom > 0, denom, 1.0)), out=np.zeros_like(total),
                           where=denom > 0)
    if k == 2:
        out["auc"] = _weighted_auc(w, y_true == 1, probs[:, 1])
    else:
        per_class = np.stack([_weighted_auc(w, y_true == c, probs[:, c]) for c in range(k)])
        defined = ~np.isnan(per_class)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["auc"] = np.where(defined.any(axis=0), np.nansum(per_class, axis=0) / defined.sum(axis=0), np.nan)
    out["brier"] = (w @ per_case_brier(y_true, probs)) / total
    if positive_class is not None:  # one-vs-rest counts of the positive class, from the weighted confusion matrix
        c = int(positive_class)
        tp_c, ref_c, pred_c = tp[:, c], support[:, c], predicted[:, c]
        negatives = total - ref_c
        out["sensitivity"] = _ratio(tp_c, ref_c)
        out["specificity"] = _ratio(negatives - (pred_c - tp_c), negatives)
        out["precision"] = _ratio(tp_c, pred_c)
        out["f1"] = _ratio(2 * tp_c, ref_c + pred_c)
    confidence, correct = _top_label(y_true, probs)
    gap = np.zeros((n, ece_bins))
    gap[np.arange(n), ece_bin_index(confidence, ece_bins)] = correct - confidence
    out["ece"] = np.abs(w @ gap).sum(axis=1) / total
    return out
