"""Training seeds (issue 23): the trainer's seed variable, nnunet_mtl average-seeds (the seed-averaged per-case values
that compare tests, and the mean ± std over seeds), the recipe field ``seeds`` (its checks, its grid of steps, each
seed's own results folder) and a seeded recipe end to end on the phantom."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.seeds import SEEDS_SUMMARY, average_seeds
from nnunet_mtl.recipes.plan import Context, plan_steps, step_seed, step_state
from nnunet_mtl.recipes.schema import RecipeError, load_recipe

BIN = Path(sys.executable).parent
CLASSES = ("benign", "malignant")


def _seed_run(folder: Path, dice: list, probs: list, truth: list, cases=None) -> Path:
    """An evaluated prediction folder as nnunet_mtl evaluate leaves it: evaluation/per_case.csv and summary.json."""
    cases = cases or [f"case_{i}" for i in range(len(dice))]
    out = folder / "evaluation"
    out.mkdir(parents=True)
    with open(out / "per_case.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "dice", "iou", "hd95_px", "hd95_mm", "reference_mask", "true_class",
                    "predicted_class", "prob_benign", "prob_malignant", "brier"])
        for c, d, p, t in zip(cases, dice, probs, truth):
            w.writerow([c, "" if d is None else f"{d:.6f}", "" if d is None else f"{d / (2 - d):.6f}", "1.0", "",
                        "full", CLASSES[t], CLASSES[int(p > 0.5)], f"{1 - p:.6f}", f"{p:.6f}", "0.1"])
    defined = [d for d in dice if d is not None]
    (out / "summary.json").write_text(json.dumps({
        "num_cases": len(cases), "segmentation": {"dice": {"mean": float(np.mean(defined))}},
        "classification": {"auc": roc_auc_score(truth, probs)}, "settings": {"bootstrap_resamples": 200}}))
    return folder


@pytest.fixture()
def three_seeds(tmp_path):
    truth = [0, 1, 0, 1, 1, 0]
    dice = [[0.5, 0.7, 0.9, 0.2, 0.6, 0.8], [0.7, None, 0.8, 0.4, 0.6, 0.6], [0.6, 0.5, 0.7, 0.3, 0.9, 0.7]]
    probs = [[0.2, 0.6, 0.4, 0.9, 0.3, 0.1], [0.6, 0.7, 0.2, 0.4, 0.8, 0.3], [0.1, 0.2, 0.3, 0.8, 0.9, 0.6]]
    runs = [_seed_run(tmp_path / f"seed_{s}", dice[s], probs[s], truth) for s in range(3)]
    return tmp_path, runs, truth, dice, probs


def test_average_seeds_writes_the_seed_averaged_cases_and_the_spread_over_seeds(three_seeds):
    tmp_path, runs, truth, dice, probs = three_seeds
    out = tmp_path / "evaluation"
    summary = average_seeds(runs, out)
    with open(out / "per_case.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    # per case: the mean of the seeds' Dice, NaN-aware (case_1 has none in seed 1)
    assert float(rows["case_0"]["dice"]) == pytest.approx(0.6, abs=1e-6)
    assert float(rows["case_1"]["dice"]) == pytest.approx(0.6, abs=1e-6)
    mean_probs = np.mean(probs, axis=0)
    for i, p in enumerate(mean_probs):
        assert float(rows[f"case_{i}"]["prob_malignant"]) == pytest.approx(p, abs=1e-6)
        assert rows[f"case_{i}"]["predicted_class"] == CLASSES[int(p > 0.5)]
    # the summary is that of the averaged values: the AUC of the averaged probabilities (sklearn's)
    assert summary["classification"]["auc"] == pytest.approx(roc_auc_score(truth, mean_probs))
    case_means = [np.nanmean([np.nan if d[i] is None else d[i] for d in dice]) for i in range(6)]
    assert summary["segmentation"]["dice"]["mean"] == pytest.approx(np.mean(case_means), abs=1e-6)
    assert len(summary["confidence_intervals"]["intervals"]["segmentation.dice.mean"]) == 2
    # over the seeds: each seed's summary number, mean and sample std
    spread = json.loads((out / SEEDS_SUMMARY).read_text())
    per_seed = [np.mean([d for d in ds if d is not None]) for ds in dice]
    m = spread["metrics"]["segmentation.dice.mean"]
    assert m["mean"] == pytest.approx(np.mean(per_seed)) and m["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert spread["metrics"]["classification.auc"]["values"] == pytest.approx(
        [roc_auc_score(truth, p) for p in probs])
    assert spread["seed_average"]["metrics"]["classification.auc"] == pytest.approx(summary["classification"]["auc"])
    # nnunet_mtl compare reads the average as a run (the folder above evaluation/)
    from nnunet_mtl.evaluation.compare import read_per_case, resolve_run
    run = read_per_case(resolve_run(tmp_path))
    assert run.per_case_csv == out / "per_case.csv" and len(run.classified) == 6


def test_average_seeds_refuses_what_cannot_be_averaged_before_writing(three_seeds, tmp_path):
    root, runs, truth, dice, probs = three_seeds
    out = root / "evaluation"
    with pytest.raises(NnunetMtlError, match="expected the evaluated prediction folders of at least two seeds"):
        average_seeds(runs[:1], out)
    other = _seed_run(root / "other", dice[0][:5], probs[0][:5], truth[:5])
    with pytest.raises(NnunetMtlError, match="case_5 of run .* is missing in run"):
        average_seeds([runs[0], other], out)
    with pytest.raises(NnunetMtlError, match="one of the inputs"):
        average_seeds(runs, runs[0])
    assert not out.exists()
    from nnunet_mtl.cli.main import main
    assert main(["average-seeds", *map(str, runs), "-o", str(out)]) == 0
    before = (out / "per_case.csv").read_bytes()
    assert main(["average-seeds", *map(str, runs), "-o", str(out)]) != 0  # exists: --overwrite needed
    assert (out / "per_case.csv").read_bytes() == before
    assert main(["average-seeds", *map(str, runs), "-o", str(out), "--overwrite"]) == 0


def test_the_training_seed_variable(monkeypatch):
    from nnunet_mtl.trainers.mtl import SEED_VAR, seed_everything, training_seed
    monkeypatch.delenv(SEED_VAR, raising=False)
    assert training_seed() is None
    monkeypatch.setenv(SEED_VAR, "7")
    assert training_seed() == 7
    for bad in ("-1", "1.5", "one"):
        monkeypatch.setenv(SEED_VAR, bad)
        with pytest.raises(NnunetMtlError, match=f"{SEED_VAR} is '{bad}'; expected an integer >= 0"):
            training_seed()
    seed_everything(3)
    first = (torch.randn(4), np.random.rand(2))
    seed_everything(3)
    again = (torch.randn(4), np.random.rand(2))
    seed_everything(4)
    other = torch.randn(4)
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not torch.equal(first[0], other)


SEEDED = '''schema = 1
name = "{name}"
title = "seeds on the phantom"
seeds = [1, 2]
[datasets.phantom]
id = 521
name = "SeedPhantom"
converter = "synthetic"
options = ["--num-patients", "10", "--images-per-patient", "2", "--size", "64", "--seed", "5"]
[split]
kind = "holdout"
fraction = 0.3
seed = 0
[[rows]]
key = "mtl"
label = "multitask"
trainer = "nnUNetTrainerMTL_tiny"
dataset = "phantom"
[[rows]]
key = "seg_only"
label = "segmentation only"
trainer = "nnUNetTrainerSegOnly_tiny"
dataset = "phantom"
[[test_sets]]
key = "test"
label = "phantom test patients"
dataset = "phantom"
[[comparisons]]
key = "mtl"
a = "mtl"
b = ["seg_only"]
test_set = "test"
'''


def _recipe(tmp_path, text=SEEDED, name="seeded") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("{name}", name))
    return path


@pytest.mark.parametrize("change, expected", [
    ("seeds = [1, 2]", "seeds = [1]"),
    ("seeds = [1, 2]", "seeds = [1, 1]"),
    ("seeds = [1, 2]", "seeds = [-1, 2]"),
    ("seeds = [1, 2]", 'seeds = "1, 2"'),
])
def test_seeds_must_be_two_or_more_different_integers(tmp_path, change, expected):
    path = _recipe(tmp_path, SEEDED.replace(change, expected))
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    lines = str(e.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path.name}: seeds: ")
    assert lines[0].endswith("expected a list of at least two different integers >= 0, e.g. [0, 1, 2]")


def test_seeds_need_a_one_fold_split(tmp_path):
    path = _recipe(tmp_path, SEEDED.replace('kind = "holdout"\nfraction = 0.3', 'kind = "kfold"\nfolds = 2'))
    with pytest.raises(RecipeError, match="seeds: with a 2-fold split; expected a one-fold split"):
        load_recipe(str(path))


def test_a_seeded_grid_trains_each_seed_into_its_own_results_and_compares_the_seed_averages(tmp_path):
    recipe = load_recipe(str(_recipe(tmp_path)))
    assert recipe.seeds == (1, 2)
    ctx = Context(workdir=tmp_path / "w", data={}, device="cpu")
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    trains = [k for k in steps if k.startswith("train:")]
    assert trains == ["train:mtl:0:seed1", "train:seg_only:0:seed1", "train:mtl:0:seed2", "train:seg_only:0:seed2"]
    train = steps["train:mtl:0:seed2"]
    assert train.env == {"nnUNet_results": str(tmp_path / "w/seeds/seed_2/nnUNet_results"), "nnUNet_mtl_seed": "2"}
    assert train.command_line().startswith(f"nnUNet_results={tmp_path / 'w/seeds/seed_2/nnUNet_results'} "
                                           "nnUNet_mtl_seed=2 nnUNetv2_train 521 2d 0 -tr nnUNetTrainerMTL_tiny")
    predict = steps["predict:seg_only:test:seed1"]  # no head: nnU-Net's predictor, with the seed's results
    assert predict.argv[0] == "nnUNetv2_predict" and predict.env["nnUNet_results"].endswith("seed_1/nnUNet_results")
    assert predict.argv[predict.argv.index("-o") + 1] == str(tmp_path / "w/predictions/seg_only/test/seed_1")
    assert predict.deps[1:] == ["train:seg_only:0:seed1"]
    average = steps["seeds:mtl:test"]
    assert average.argv[:4] == ["nnunet_mtl", "average-seeds", str(tmp_path / "w/predictions/mtl/test/seed_1"),
                                str(tmp_path / "w/predictions/mtl/test/seed_2")]
    assert average.deps == ["evaluate:mtl:test:seed1", "evaluate:mtl:test:seed2"] and not average.env
    assert steps["compare:mtl"].deps == ["seeds:mtl:test", "seeds:seg_only:test"]
    assert steps["compare:mtl"].argv[2:4] == [str(tmp_path / "w/predictions/mtl/test"),
                                              str(tmp_path / "w/predictions/seg_only/test")]
    assert "seeds:seg_only:test" in steps["report"].deps
    assert step_seed("train:mtl:0:seed2") == 2 and step_seed("train:mtl:0") is None
    fold = tmp_path / "w/seeds/seed_2/nnUNet_results/Dataset521_SeedPhantom/nnUNetTrainerMTL_tiny__nnUNetPlans__2d"
    assert not step_state(train, recipe, ctx)[0]
    (fold / "fold_0/validation").mkdir(parents=True)
    (fold / "fold_0/checkpoint_final.pth").write_bytes(b"\x80\x02")
    (fold / "fold_0/validation/summary.json").write_text("{}")
    assert step_state(train, recipe, ctx)[0] and not step_state(steps["train:mtl:0:seed1"], recipe, ctx)[0]
    assert not step_state(average, recipe, ctx)[0]


@pytest.mark.slow
def test_a_seeded_recipe_runs_end_to_end_and_reports_the_spread_over_seeds(tmp_path):
    path = _recipe(tmp_path)
    workdir = tmp_path / "run"
    result = subprocess.run([str(BIN / "nnunet_mtl"), "recipe", "run", str(path), "--workdir", str(workdir),
                             "-np", "1"],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for seed in (1, 2):
        log = next((workdir / f"seeds/seed_{seed}/nnUNet_results/Dataset521_SeedPhantom/"
                    "nnUNetTrainerMTL_tiny__nnUNetPlans__2d/fold_0").glob("training_log_*.txt")).read_text()
        assert f"training seed {seed} (nnUNet_mtl_seed)" in log
    assert not (workdir / "nnUNet_results" / "Dataset521_SeedPhantom").exists()  # every training is a seed's
    report = json.loads((workdir / "report/report.json").read_text())
    assert report["seeds"] == [1, 2] and not report["missing"]
    rows = {r["row"]: r for r in report["test_sets"][0]["rows"]}
    spread = json.loads((workdir / "predictions/mtl/test/evaluation" / SEEDS_SUMMARY).read_text())
    dice = spread["metrics"]["segmentation.dice.mean"]
    assert rows["mtl"]["dice"]["mean"] == pytest.approx(dice["mean"]) and len(dice["values"]) == 2
    assert rows["mtl"]["dice"]["ensemble"] == pytest.approx(spread["seed_average"]["metrics"]
                                                            ["segmentation.dice.mean"])
    assert rows["seg_only"]["auc"] is None and 0 <= rows["mtl"]["auc"]["mean"] <= 1
    each = [json.loads((workdir / f"predictions/mtl/test/seed_{s}/evaluation/summary.json").read_text())
            for s in (1, 2)]
    assert dice["mean"] == pytest.approx(np.mean([e["segmentation"]["dice"]["mean"] for e in each]))
    compared = json.loads((workdir / "comparisons/mtl/comparison.json").read_text())
    assert any(r["metric"] == "dice" for r in compared["rows"])
    markdown = (workdir / "report/report.md").read_text()
    assert "Every row trained 2 times, seeds 1, 2" in markdown and "| multitask (seed average) |" in markdown
    assert "the seed averages" in markdown and not math.isnan(rows["mtl"]["dice"]["std"])
