"""The guidance ablation re-applies the linear classifier to recorded embeddings (Table 5: w_k <- 0)."""
import numpy as np
import pytest

from nnunet_mtl.evaluation.guidance_ablation import ablate_guidance, class_probabilities, softmax


def test_zeroing_a_column_equals_zeroing_that_embedding_entry():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 2, 3, 5))  # folds, mirrors, tiles, K
    classifiers = [(rng.standard_normal((3, 5)), rng.standard_normal(3)) for _ in range(2)]
    h_without = h.copy()
    h_without[..., 1] = 0
    assert np.allclose(class_probabilities(h, classifiers, (1,)), class_probabilities(h_without, classifiers))
    # plain: mean over folds of the mean softmax over mirrors and tiles
    expected = np.mean([softmax(h[f] @ w.T + b).mean(axis=(0, 1)) for f, (w, b) in enumerate(classifiers)], axis=0)
    assert np.allclose(class_probabilities(h, classifiers), expected) and expected.sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="2 folds of embeddings but 1 classifiers"):
        class_probabilities(h, classifiers[:1])


def test_a_feature_the_classifier_relies_on_costs_f1():
    """Class 1 is decided by guided entry 0 only: zeroing it flips every class-1 prediction; entry 1 is unused."""
    cases = {f"c{i}": np.array([[[[x, 0.0, 0.0]]]]) for i, x in enumerate([-2.0, -1.0, 1.0, 2.0])}
    truth = {"c0": 0, "c1": 0, "c2": 1, "c3": 1}
    weight = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    baseline, rows = ablate_guidance(cases, [(weight, np.array([0.1, 0.0]))], truth, ["benign", "malignant"],
                                     ["f0", "f1"])
    assert baseline["macro_f1"] == 1.0
    assert rows[0]["delta_macro_f1"] < -0.5 and rows[0]["changed_predictions"] == 2
    assert rows[1]["delta_macro_f1"] == 0.0 and rows[1]["changed_predictions"] == 0
