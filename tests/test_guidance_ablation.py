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


def _rows(deltas, changed):
    return [{"feature": f"f{i}", "column": i, "changed_predictions": c, "macro_precision": 0.5 + d,
             "delta_macro_precision": d, "macro_recall": 0.5 + d / 2, "delta_macro_recall": d / 2,
             "macro_f1": 0.5 + 2 * d, "delta_macro_f1": 2 * d} for i, (d, c) in enumerate(zip(deltas, changed))]


def _baseline(p, r, f, n=10):
    return {"num_cases": n, "macro_precision": p, "macro_recall": r, "macro_f1": f, "auc": None}


def test_aggregate_fold_ablations_by_hand():
    from nnunet_mtl.evaluation.guidance_ablation import aggregate_fold_ablations, format_per_fold_ablation_table
    per_fold = {0: (_baseline(0.8, 0.7, 0.6), _rows([-0.1, 0.0], [2, 0])),
                1: (_baseline(0.6, 0.5, 0.4), _rows([-0.3, 0.0], [4, 0])),
                2: (_baseline(0.7, 0.6, 0.5), _rows([-0.2, 0.1], [3, 1]))}
    ensemble = (_baseline(0.9, 0.8, 0.7), _rows([-0.05, 0.0], [1, 0]))
    agg = aggregate_fold_ablations(per_fold, ensemble)
    assert agg["folds"] == [0, 1, 2] and agg["num_folds"] == 3
    f0 = agg["features"][0]
    assert f0["feature"] == "f0" and f0["column"] == 0
    # deltas of precision -0.1, -0.3, -0.2: mean -0.2, sample std sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    assert f0["delta_macro_precision"]["mean"] == pytest.approx(-0.2)
    assert f0["delta_macro_precision"]["std"] == pytest.approx(0.1)
    assert f0["delta_macro_precision"]["values"] == pytest.approx([-0.1, -0.3, -0.2])
    assert f0["delta_macro_recall"]["mean"] == pytest.approx(-0.1)
    assert f0["delta_macro_recall"]["std"] == pytest.approx(0.05)
    assert f0["delta_macro_f1"]["mean"] == pytest.approx(-0.4) and f0["delta_macro_f1"]["std"] == pytest.approx(0.2)
    assert f0["delta_macro_f1"]["ensemble"] == pytest.approx(-0.1)
    assert f0["changed_predictions"]["mean"] == pytest.approx(3)
    assert f0["changed_predictions"]["std"] == pytest.approx(1)
    f1 = agg["features"][1]
    # f1's precision deltas 0, 0, 0.1: mean 1/30, std sqrt(((1/30)^2 * 2 + (2/30)^2) / 2)
    assert f1["delta_macro_precision"]["mean"] == pytest.approx(0.1 / 3)
    assert f1["delta_macro_precision"]["std"] == pytest.approx(np.std([0, 0, 0.1], ddof=1))
    assert agg["baseline"]["macro_f1"]["mean"] == pytest.approx(0.5)
    assert agg["baseline"]["macro_f1"]["std"] == pytest.approx(0.1)
    assert agg["baseline"]["macro_f1"]["ensemble"] == pytest.approx(0.7)
    table = format_per_fold_ablation_table(agg)
    assert "-0.4000 ± 0.2000" in table and "mean ± sample std over 3 folds" in table
    assert table.index("f0") < table.index("f1 ")  # sorted by the mean change of F1, most harmful first
    with pytest.raises(ValueError, match="different features"):
        aggregate_fold_ablations({0: per_fold[0], 1: (per_fold[1][0], per_fold[1][1][:1])})


def test_per_fold_ablation_files(tmp_path):
    import csv
    import json

    from nnunet_mtl.evaluation.guidance_ablation import aggregate_fold_ablations, write_per_fold_ablation
    per_fold = {0: (_baseline(0.8, 0.7, 0.6), _rows([-0.1], [2])), 2: (_baseline(0.6, 0.5, 0.4), _rows([-0.3], [4]))}
    agg = aggregate_fold_ablations(per_fold, None)
    write_per_fold_ablation(tmp_path, agg)
    with open(tmp_path / "guidance_ablation_per_fold.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["mean_delta_macro_precision"]) == pytest.approx(-0.2)
    assert float(row["std_delta_macro_precision"]) == pytest.approx(np.sqrt(0.02))
    assert float(row["fold_2_delta_macro_f1"]) == pytest.approx(-0.6) and row["ensemble_delta_macro_f1"] == ""
    on_disk = json.loads((tmp_path / "guidance_ablation_per_fold.json").read_text())
    assert on_disk["features"][0]["delta_macro_f1"]["ensemble"] is None
    assert on_disk["baseline"]["auc"]["mean"] is None  # NaN written as null
    assert (tmp_path / "guidance_ablation_per_fold.png").stat().st_size > 0
