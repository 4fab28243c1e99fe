"""Pieces of the multitask trainer that can be checked without training."""
import numpy as np
import pytest

from nnunet_mtl.trainers.mtl import validation_classification


def classification_scores(y, probs, num_classes):
    """The per-epoch validation metrics, as the trainer computes them from its collated validation outputs."""
    return validation_classification({"cls_probs": list(probs), "cls_target": list(y)},
                                     [f"class{i}" for i in range(num_classes)])


def test_classification_scores_binary_and_multiclass():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    s = classification_scores(y, p, 2)
    assert s["auc"] == pytest.approx(1.0)  # positive scores 0.7, 0.45 > negatives 0.1, 0.4
    assert s["balanced_accuracy"] == pytest.approx(0.75)
    y3 = np.array([0, 1, 2, 2])
    p3 = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    s3 = classification_scores(y3, p3, 3)
    assert 0 < s3["auc"] <= 1 and s3["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_auc_undefined_with_one_class_is_nan_not_crash():
    s = classification_scores(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), 2)
    assert np.isnan(s["auc"]) and s["balanced_accuracy"] == pytest.approx(0.5)
