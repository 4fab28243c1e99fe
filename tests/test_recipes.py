"""Recipes (issue 14): the format and its errors, the grid of commands, the synthetic recipe end to end through the
real commands (one run shared by the end-to-end, resume and report tests), resuming an interrupted training,
submitit's local executor and its time limit, what the SLURM launcher submits (against a stand-in sbatch), and the
synthetic recipe on a real Slurm.

The synthetic recipe runs once per test session: on a real single-node Slurm where one can start here
(tests/slurm_cluster.py; .ci/run installs it), lived as a cluster user lives it (a failing job, a rerun while jobs
are queued, an scancel, a rerun that completes it); elsewhere through submitit's local executor. Either way the work
folder ends complete and the launcher-independent tests read it; the local launcher's own output is checked by the
resume test (a local rerun on that folder), and its full runs by tests/test_seeds.py and tests/test_device_check.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.recipes.plan import Context, Step, plan_steps, select, step_state
from nnunet_mtl.recipes.schema import RecipeError, load_recipe, parse_paper_value, shipped_recipes
from tests.process_helpers import running, running_naming
from tests.slurm_cluster import SlurmCluster, SlurmStartError, missing as slurm_missing

BIN = Path(sys.executable).parent
MINIMAL = '''schema = 1
name = "{name}"
title = "t"
[data.BUSI]
help = "the BUSI folder"
[datasets.busi]
id = 603
name = "BUSI"
converter = "busi"
source = "BUSI"
options = ["--resize", "64"]
[datasets.busi25]
id = 613
name = "BUSI_masks25"
from = "busi"
keep = 0.25
[datasets.udiat]
id = 602
name = "UDIAT"
converter = "udiat"
source = "BUSI"
role = "test"
[split]
kind = "holdout"
fraction = 0.15
seed = 1
[[rows]]
key = "la"
label = "lesion-aware"
trainer = "nnUNetTrainerLesionAware_tiny"
dataset = "busi25"
[[test_sets]]
key = "udiat"
label = "UDIAT"
dataset = "udiat"
'''


def write(tmp_path: Path, text: str, name: str = "mine") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("{name}", name))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    return str(e.value).splitlines()


# ------------------------------------------------------------------------------------------------ the format
def test_every_shipped_recipe_parses_and_is_installed_as_package_data():
    recipes = shipped_recipes()
    assert "synthetic" in recipes
    for name, path in recipes.items():
        assert load_recipe(name).name == name == path.stem
    setup = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
    assert "recipes/*.toml" in setup and "submitit" in setup


def test_a_minimal_recipe_with_a_drop_masks_copy_and_an_external_test_set(tmp_path):
    recipe = load_recipe(str(write(tmp_path, MINIMAL)))
    assert recipe.split.fold_ids == [0] and recipe.datasets["busi25"].from_ == "busi"
    assert recipe.device == "auto" and recipe.checkpoint == "checkpoint_final.pth"


@pytest.mark.parametrize("change, expected", [
    (("schema = 1", "schema = 2"), "mine.toml: schema: 2; expected 1"),
    (('title = "t"', 'title = "t"\ntitel = "x"'), "mine.toml: titel: unknown field (did you mean 'title'?)"),
    (('trainer = "nnUNetTrainerLesionAware_tiny"', 'trainer = "nnUNetTrainerLesionAwar_tiny"'),
     "rows[0].trainer: 'nnUNetTrainerLesionAwar_tiny' is not a trainer; expected e.g. nnUNetTrainerLesionAware_tiny"),
    (('dataset = "busi25"', 'dataset = "udiat"'), "rows[0].dataset: 'udiat' is a test set"),
    (('keep = 0.25', 'keep = 1.5'), "datasets.busi25.keep: 1.5; expected a fraction in (0, 1)"),
    (('fraction = 0.15', 'folds = 3'), "split.fraction: missing"),
    (('source = "BUSI"\noptions', 'source = "BUS"\noptions'), "datasets.busi.source: 'BUS' is not a [data] key"),
    (('id = 602', 'id = 603'), "datasets.udiat.id: 603 is also datasets.busi's"),
    (('converter = "udiat"', 'converter = "udiatt"'), "datasets.udiat.converter: 'udiatt'; expected one of"),
    (('key = "la"', 'key = "LA net"'), "rows[0].key: 'LA net'; expected lower-case letters"),
    (('seed = 1', 'seed = "1"'), "split.seed: '1' is str; expected an integer"),
])
def test_each_wrong_field_is_one_line_naming_it(tmp_path, change, expected):
    lines = errors_of(write(tmp_path, MINIMAL.replace(*change)))
    assert any(expected in line for line in lines), lines
    assert all(line.startswith("mine.toml: ") for line in lines)


def test_all_errors_come_at_once(tmp_path):
    text = MINIMAL.replace("keep = 0.25", "keep = 2").replace('kind = "holdout"', 'kind = "holdout"\nfolds = 4') \
        + '[[comparisons]]\nkey = "c"\na = "la"\nb = ["mtl"]\ntest_set = "udiat"\n'
    lines = errors_of(write(tmp_path, text))
    assert len(lines) == 3 and {line.split(": ")[1] for line in lines} == {"datasets.busi25.keep", "split.folds",
                                                                           "comparisons[0].b[0]"}


@pytest.mark.parametrize("change, field", [
    (("[[rows]]\nkey", "rows = 5\n[[rowz]]\nkey"), "rows"),
    (('from = "busi"', 'from = "busi"\nconverter = "busi"'), "datasets.busi25"),
])
def test_a_wrong_field_gets_one_line_not_a_second_one_that_follows_from_it(tmp_path, change, field):
    lines = errors_of(write(tmp_path, MINIMAL.replace(*change, 1)))
    assert len([line for line in lines if line.split(": ")[1].startswith(field)]) == 1, lines


def test_a_comparison_with_b_not_a_list_is_one_line(tmp_path):
    lines = errors_of(write(tmp_path, MINIMAL + '[[comparisons]]\nkey = "c"\na = "la"\nb = "la"\n'
                                                'test_set = "udiat"\n'))
    assert [line.split(": ")[1] for line in lines] == ["comparisons[0].b"], lines


def test_a_test_set_names_its_report_columns(tmp_path):
    from nnunet_mtl.recipes.report import DEFAULT_METRICS, _metrics_for
    assert _metrics_for(load_recipe(str(write(tmp_path, MINIMAL))), "udiat") == DEFAULT_METRICS
    text = MINIMAL.replace('dataset = "udiat"\n', 'dataset = "udiat"\nmetrics = ["dice", "sensitivity"]\n')
    assert _metrics_for(load_recipe(str(write(tmp_path, text))), "udiat") == ("dice", "sensitivity")
    lines = errors_of(write(tmp_path, text.replace('"sensitivity"', '"sensitivty"')))
    assert lines == ["mine.toml: test_sets[0].metrics[1]: 'sensitivty' is not a metric; did you mean 'sensitivity'?"]


def test_a_given_split_file_sets_the_folds_and_its_step_is_split_from(tmp_path):
    """kind = "file": a paper's or the user's split, relative to the recipe; its folds (here 3) make the grid, and
    the split step is nnunet_mtl split --from FILE, which checks it against the dataset."""
    (tmp_path / "paper_split.csv").write_text("patient,fold\np1,0\np2,1\np3,2\n")
    text = MINIMAL.replace('kind = "holdout"\nfraction = 0.15\nseed = 1', 'kind = "file"\nfile = "paper_split.csv"')
    recipe = load_recipe(str(write(tmp_path, text)))
    assert recipe.split.fold_ids == [0, 1, 2] and recipe.split.file == tmp_path / "paper_split.csv"
    steps = {s.id: s for s in plan_steps(recipe, Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")},
                                                         device="cpu"))}
    assert steps["split:busi25"].argv == ["nnunet_mtl", "split", "-d", "613", "--from",
                                          str(tmp_path / "paper_split.csv")]
    assert {"train:la:0", "train:la:1", "train:la:2"} <= set(steps)
    for change, needle in ((('file = "paper_split.csv"', 'file = "nope.csv"'), "split.file: '"),
                           (('file = "paper_split.csv"', 'file = "paper_split.csv"\nfolds = 3'),
                            "split.folds: not with kind = \"file\""),
                           (('kind = "file"\nfile = "paper_split.csv"', 'kind = "file"'), "split.file: missing")):
        lines = errors_of(write(tmp_path, text.replace(*change)))
        assert len(lines) == 1 and needle in lines[0], lines
    (tmp_path / "paper_split.csv").write_text("patient,fold\np1,0\np2,2\n")
    assert "fold 1 has no patient" in errors_of(write(tmp_path, text))[0]


def test_paper_tables_are_checked_and_values_kept_as_printed(tmp_path):
    table = ('[[tables]]\nid = "Table 3"\ntest_set = "udiat"\nmetrics = ["attention_iou", "f1"]\n'
             'values."lesion-aware" = { attention_iou = "0.410 ± 0.007", f1 = "-" }\n'
             'values."paper:ResNet18 + RMTL" = { attention_iou = "0.382±0.039" }\n')
    recipe = load_recipe(str(write(tmp_path, MINIMAL + table)))
    assert recipe.tables[0].values["lesion-aware"]["attention_iou"] == "0.410 ± 0.007"
    bad = table.replace('f1 = "-"', 'f1 = 0.5').replace('"attention_iou", "f1"', '"attention_iou", "f1", "jsi"')
    lines = errors_of(write(tmp_path, MINIMAL + bad))
    assert any("tables[0].metrics[2]: 'jsi' is not a metric" in line for line in lines)
    assert any("values.lesion-aware.f1: 0.5; expected the number as printed, in quotes" in line for line in lines)


def test_parse_paper_value():
    assert parse_paper_value("0.6300 ± 0.0000") == (0.63, 0.0)
    assert parse_paper_value("-0.0004±+0.0042") == (-0.0004, 0.0042)
    assert parse_paper_value("43.72 ± 4.150") == (43.72, 4.15)
    assert parse_paper_value("0.83") == (0.83, None)
    assert parse_paper_value("–") is None
    with pytest.raises(ValueError):
        parse_paper_value("0.8 (0.7-0.9)")


def test_unknown_recipe_names_the_shipped_ones(tmp_path):
    with pytest.raises(RecipeError, match="no recipe named 'synth'; expected one of .*synthetic"):
        load_recipe("synth")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "none.toml"))
    (tmp_path / "broken.toml").write_text("schema = [")
    with pytest.raises(RecipeError, match="broken.toml: not valid TOML"):
        load_recipe(str(tmp_path / "broken.toml"))


# ------------------------------------------------------------------------------------------------ the grid
def test_the_grid_is_the_users_commands(tmp_path):
    recipe = load_recipe(str(write(tmp_path, MINIMAL)))
    ctx = Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")}, device="cpu")
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    assert list(steps) == ["convert:busi", "convert:udiat", "drop:busi25", "plan:busi25", "split:busi25",
                           "train:la:0", "predict:la:udiat", "evaluate:la:udiat", "report"]
    assert steps["convert:busi"].argv == ["nnunet_mtl", "convert", "busi", "/data/BUSI", "-d", "603", "--name", "BUSI",
                                          "--resize", "64", "--no-progress"]
    assert steps["convert:udiat"].argv[-3:] == ["--as", "test", "--no-progress"]
    assert steps["drop:busi25"].argv == ["nnunet_mtl", "drop-masks", "-d", "603", "--keep", "0.25", "--into", "613",
                                         "--name", "BUSI_masks25", "--as", "none", "--seed", "0"]
    assert steps["split:busi25"].argv == ["nnunet_mtl", "split", "-d", "613", "--holdout", "0.15", "--seed", "1"]
    assert steps["train:la:0"].argv == ["nnUNetv2_train", "613", "2d", "0", "-tr", "nnUNetTrainerLesionAware_tiny",
                                        "-device", "cpu"]
    predict = steps["predict:la:udiat"]
    assert predict.argv[:5] == ["nnunet_mtl", "predict", "-i", str(tmp_path / "w/nnUNet_raw/Dataset602_UDIAT/imagesTs"),
                                "-o"]
    assert "--per-fold" not in predict.argv and predict.argv[predict.argv.index("-f") + 1] == "0"
    assert set(predict.deps) == {"convert:udiat", "train:la:0"}
    # a lesion-aware row also writes and scores its lesion maps (attention_iou: Fan et al.'s JSI)
    assert predict.argv[-1] == "--save-attention"
    assert steps["evaluate:la:udiat"].argv[-5:] == ["-d", "602", "-np", "2", "--attention"]  # the test set's labelsTs


def test_a_held_out_test_set_inside_one_source_and_repeated_holdout_runs(tmp_path):
    """Fan et al.: 40 benign + 40 malignant BUSI images held out (nnunet_mtl holdout), masks dropped from the rest,
    three runs on random 85/15 train / validation splits (split --repeats 3 = folds 0, 1, 2)."""
    text = MINIMAL.replace('[datasets.busi25]\nid = 613\nname = "BUSI_masks25"\nfrom = "busi"',
                           '[datasets.busi25]\nid = 613\nname = "BUSI_masks25"\nfrom = "busi_t"') \
        .replace("seed = 1", "seed = 1\nrepeats = 3").replace('dataset = "udiat"', 'dataset = "busi_t"') \
        + '[datasets.busi_t]\nid = 604\nname = "BUSI_test40"\nfrom = "busi"\ntest_per_class = 40\n' \
          'test_classes = ["benign", "malignant"]\n'
    recipe = load_recipe(str(write(tmp_path, text)))
    assert recipe.split.fold_ids == [0, 1, 2] and recipe.datasets["busi_t"].kind == "holdout"
    ctx = Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")}, device="cpu")
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    assert list(steps)[:4] == ["convert:busi", "convert:udiat", "holdout:busi_t", "drop:busi25"]
    assert steps["holdout:busi_t"].argv == ["nnunet_mtl", "holdout", "-d", "603", "--per-class", "40", "--classes",
                                            "benign", "malignant", "--into", "604", "--name", "BUSI_test40",
                                            "--seed", "0"]
    assert steps["holdout:busi_t"].deps == ["convert:busi"] and steps["drop:busi25"].deps == ["holdout:busi_t"]
    assert steps["drop:busi25"].argv[:4] == ["nnunet_mtl", "drop-masks", "-d", "604"]
    assert steps["split:busi25"].argv == ["nnunet_mtl", "split", "-d", "613", "--holdout", "0.15", "--repeats", "3",
                                          "--seed", "1"]
    assert [k for k in steps if k.startswith("train:")] == ["train:la:0", "train:la:1", "train:la:2"]
    predict = steps["predict:la:udiat"].argv
    assert predict[predict.index("-i") + 1].endswith("Dataset604_BUSI_test40/imagesTs") and "--per-fold" in predict
    assert steps["evaluate:la:udiat"].argv[steps["evaluate:la:udiat"].argv.index("-d") + 1] == "604"
    (tmp_path / "w/nnUNet_raw/Dataset604_BUSI_test40").mkdir(parents=True)
    assert step_state(steps["holdout:busi_t"], recipe, ctx) == (
        False, str(tmp_path / "w/nnUNet_raw/Dataset604_BUSI_test40/holdout_report.json"))
    for change, expected in ((("test_per_class = 40", "test_per_class = 40\ntest_fraction = 0.2"),
                              "datasets.busi_t: expected test_fraction or test_per_class, not both"),
                             (("test_per_class = 40", "test_fraction = 1.2"),
                              "datasets.busi_t.test_fraction: 1.2; expected a fraction in (0, 1)"),
                             (("test_per_class = 40", "test_fraction = 0.2"),
                              "datasets.busi_t.test_classes: only with test_per_class"),
                             (("test_per_class = 40", "test_per_class = 40\nkeep = 0.5"),
                              "datasets.busi_t: expected keep (drop-masks) or test_fraction / test_per_class"),
                             (("repeats = 3", "repeats = 0"), "split.repeats: 0; expected at least 1"),
                             (('from = "busi_t"', 'from = "udiat"'), "datasets.busi25.from: 'udiat' must be a "
                                                                     "converted training dataset or a holdout copy")):
        lines = errors_of(write(tmp_path, text.replace(*change)))
        assert any(expected in line for line in lines), (expected, lines)
    lines = errors_of(write(tmp_path, MINIMAL.replace('kind = "holdout"\nfraction = 0.15',
                                                      'kind = "kfold"\nfolds = 3\nrepeats = 2')))
    assert any("split.repeats: only for kind = \"holdout\"" in line for line in lines), lines


def test_k_folds_add_each_rows_cross_validation_and_the_report_shows_it(tmp_path):
    """With k folds every row gets validate:ROW:K (nnunet_mtl evaluate of fold K's own validation, written under
    W/crossval, nothing into nnUNet_results) and crossval:ROW (their mean ± std, evaluate --aggregate), before the
    test sets' predictions; the report waits for them and shows the mean ± std and each fold's value. One fold
    (a single hold-out) or seeds: none (there is nothing to average over folds)."""
    from nnunet_mtl.evaluation.aggregate import aggregate_summaries
    from nnunet_mtl.recipes.report import build_report, to_markdown
    recipe = load_recipe(str(write(tmp_path, MINIMAL.replace('kind = "holdout"\nfraction = 0.15',
                                                             'kind = "kfold"\nfolds = 3'))))
    w = tmp_path / "w"
    ctx = Context(workdir=w, data={"BUSI": Path("/data/BUSI")}, device="cpu")
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    ids = list(steps)
    cv = ["validate:la:0", "validate:la:1", "validate:la:2", "crossval:la"]
    assert ids[ids.index("train:la:2") + 1:ids.index("predict:la:udiat")] == cv
    model = w / "nnUNet_results/Dataset613_BUSI_masks25/nnUNetTrainerLesionAware_tiny__nnUNetPlans__2d"
    # the training dataset's labelsTr and fold 1's val list; no --attention: nnU-Net's validation writes no maps
    assert steps["validate:la:1"].argv == ["nnunet_mtl", "evaluate", "-pred", str(model / "fold_1/validation"),
                                           "-d", "613", "-o", str(w / "crossval/la/fold_1"), "-np", "2"]
    assert steps["validate:la:1"].deps == ["train:la:1"] and steps["crossval:la"].deps == cv[:3]
    assert steps["crossval:la"].argv == ["nnunet_mtl", "evaluate", "--aggregate",
                                         *(str(w / f"crossval/la/fold_{k}/summary.json") for k in range(3)),
                                         "-o", str(w / "crossval/la/summary.json"), "--overwrite"]
    assert "crossval:la" in steps["report"].deps
    assert step_state(steps["crossval:la"], recipe, ctx) == (False, str(w / "crossval/la/summary.json"))
    # the report before: the rows listed as missing; then three folds scored (one without classes) and aggregated
    report = build_report(recipe, ctx)
    assert report["crossval"]["rows"][0]["source"] is None
    assert "cross-validation of la: not run yet (step crossval:la)" in report["missing"]
    summaries = []
    for k, (dice, f1) in enumerate([(0.6, 0.5), (0.7, None), (0.8, 0.7)]):
        fold = w / f"crossval/la/fold_{k}"
        fold.mkdir(parents=True)
        (fold / "summary.json").write_text(json.dumps({
            "segmentation": {"dice": {"mean": dice}, "hd95_px": {"mean": 10.0 + k}},
            "classification": None if f1 is None else {"macro_f1": f1, "auc": 0.8}}))
        summaries.append(fold / "summary.json")
        assert step_state(steps[f"validate:la:{k}"], recipe, ctx)[0]
    aggregate_summaries(summaries, output_path=w / "crossval/la/summary.json")
    assert step_state(steps["crossval:la"], recipe, ctx)[0]
    report = build_report(recipe, ctx)
    row = report["crossval"]["rows"][0]
    assert report["crossval"]["folds"] == 3 and "attention_iou" not in report["crossval"]["metrics"]
    assert row["dice"]["mean"] == pytest.approx(0.7) and row["dice"]["std"] == pytest.approx(0.1)
    assert row["dice"]["values"] == pytest.approx([0.6, 0.7, 0.8]) and row["macro_f1"]["mean"] == pytest.approx(0.6)
    assert not any("cross-validation" in m for m in report["missing"])
    markdown = to_markdown(report, recipe)
    assert "## Cross-validation: each fold's model on its own validation cases" in markdown
    assert re.search(r"\| lesion-aware \| `nnUNetTrainerLesionAware_tiny` \| .*0\.700 ± 0\.100 \[0\.452, 0\.948\]",
                     markdown), markdown
    assert "| lesion-aware (per fold) | | " in markdown and "0.600 / 0.700 / 0.800" in markdown
    assert "nnU-Net's final validation (the final checkpoint) of each of the 3 folds" in markdown
    assert "0.500 / — / 0.700" in markdown  # a fold without classes: its place kept
    # repeated hold-out splits: the same steps, but runs (overlapping validation sets), not folds
    runs = load_recipe(str(write(tmp_path, MINIMAL.replace("seed = 1", "seed = 1\nrepeats = 3"))))
    assert [s.id for s in plan_steps(runs, ctx) if s.kind == "crossval"] == ["crossval:la"]
    text = to_markdown(build_report(runs, ctx), runs)
    assert "## Validation: each run's model on its own validation cases" in text and "3 hold-out runs" in text
    assert "Cross-validation" not in text
    # one fold, or seeds: no cross-validation steps and no section
    for text in (MINIMAL, MINIMAL.replace('title = "t"', 'title = "t"\nseeds = [0, 1]')):
        plain = load_recipe(str(write(tmp_path, text)))
        assert not [s for s in plan_steps(plain, ctx) if s.kind in ("validate", "crossval")]
        assert build_report(plain, ctx)["crossval"] is None



# ------------------------------------------------------------------------------------------------ end to end
def recipe_cli(*args, env=None, check=True):
    result = subprocess.run([str(BIN / "nnunet_mtl"), "recipe", *args], capture_output=True, text=True,
                            env=env or dict(os.environ), timeout=1800)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# the synthetic recipe's steps: convert, plan, split, 4 rows x 2 folds of training, 4 x (2 validate + crossval),
# 4 rows' predictions and evaluations (segmentation only: per fold and the ensemble), compare, report
STEPS = 35
# one worker process per step (-np 1): every worker of nnU-Net's prediction and validation pools is a spawned process
# that imports torch and nnU-Net again, on a 2-core machine running two test workers
ONE_WORKER = ("-np", "1")


# on a real Slurm: a setup line of the job script (--slurm-setup) fails one training, as a node without the
# environment would; one pending step is cancelled with scancel
FAILING = "train:la:1"
CANCELLED = "evaluate:cls_only:test"
FAULT = f'case "$SLURM_JOB_NAME" in *:{FAILING}) echo "injected failure of {FAILING}"; exit 3;; esac'
AFTER_FAILING = {"validate:la:1", "crossval:la", "predict:la:test", "evaluate:la:test"}  # afterok's, when FAILING fails
DOWNSTREAM = {"compare:mtl_vs_others", "report"}          # ... and when either FAILING or CANCELLED does not finish


def slurm_story(root: Path) -> dict:
    """The synthetic recipe on a real Slurm (a single node started under ``root``): 1. submitted with FAULT;
    2. the same command again at once; 3. scancel of CANCELLED; 4. Slurm runs what it can; 5. the command once more,
    without the fault, and Slurm completes it. What each command printed, the job ids and sacct's states."""
    cluster = SlurmCluster(root / "cluster").start()
    try:
        env = {**cluster.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        workdir = root / "run"
        jobs_file = workdir / "slurm" / "jobs.json"
        common = ["run", "synthetic", "--workdir", str(workdir), *ONE_WORKER, "--launcher", "slurm", "-device", "cpu",
                  "--slurm-cpus", "1"]
        first = recipe_cli(*common, "--slurm-setup", FAULT, env=env).stdout
        jobs = json.loads(jobs_file.read_text())["jobs"]
        again = recipe_cli(*common, "--slurm-setup", FAULT, env=env).stdout
        kept = json.loads(jobs_file.read_text())["jobs"]
        subprocess.run(["scancel", jobs[CANCELLED]], env=cluster.env, check=True, timeout=30)
        cluster.wait_until_ended(jobs.values(), timeout=1500)
        by_job = cluster.states(jobs.values())
        rerun = recipe_cli(*common, env=env).stdout
        rerun_jobs = json.loads(jobs_file.read_text())["jobs"]
        cluster.wait_until_ended(rerun_jobs.values(), timeout=1200)
        now = cluster.states(rerun_jobs.values())
        return {"workdir": workdir, "first": first, "jobs": jobs, "again": again, "kept": kept, "rerun": rerun,
                "first_states": {step: by_job.get(job) for step, job in jobs.items()}, "rerun_jobs": rerun_jobs,
                "states": {step: now.get(job) for step, job in rerun_jobs.items()}}
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """``nnunet_mtl recipe run synthetic`` once with the real commands: (work folder, launcher, what happened)."""
    root = tmp_path_factory.mktemp("recipe")
    why_not = slurm_missing()
    if why_not is None:
        try:
            story = slurm_story(root)
            return story["workdir"], "slurm", story
        except SlurmStartError as e:  # installed, but this machine would not run the daemons: said in the skips
            why_not = f"Slurm is installed but a test cluster did not start here: {str(e)[:300]}"
    workdir = root / "run"
    recipe_cli("run", "synthetic", "--workdir", str(workdir), *ONE_WORKER)
    return workdir, "local", {"why_not_slurm": why_not}


def on_slurm(synthetic_run) -> dict:
    workdir, launcher, story = synthetic_run
    if launcher != "slurm":
        pytest.skip(f"the synthetic recipe ran locally: {story['why_not_slurm']}")
    return story


def test_synthetic_recipe_runs_end_to_end_and_reports(synthetic_run):
    workdir, _, _ = synthetic_run
    report = json.loads((workdir / "report" / "report.json").read_text())
    assert report["folds"] == 2 and not report["missing"]
    rows = {r["row"]: r for r in report["test_sets"][0]["rows"]}
    for row in ("mtl", "seg_only"):
        dice = rows[row]["dice"]
        assert 0 <= dice["mean"] <= 1 and dice["std"] >= 0 and len(dice["ci95"]) == 2 and 0 <= dice["ensemble"] <= 1
    assert 0 <= rows["mtl"]["auc"]["mean"] <= 1 and rows["seg_only"]["auc"] is None  # no head, no classes
    # no masks (classification only): classes scored, no Dice; a lesion map: attention_iou, for that row alone
    assert rows["cls_only"]["dice"] is None and 0 <= rows["cls_only"]["auc"]["mean"] <= 1
    # the cross-validation: each fold's model on its own validation cases (nnU-Net's final validation, scored), per
    # row the mean ± std over the 2 folds and each fold's value; what a row's model does not predict stays empty
    cv = {r["row"]: r for r in report["crossval"]["rows"]}
    assert set(cv) == set(rows) and all(r["source"] for r in cv.values())
    for row in ("mtl", "seg_only", "la"):
        assert len(cv[row]["dice"]["values"]) == 2 and 0 <= cv[row]["dice"]["mean"] <= 1
    assert cv["seg_only"]["auc"] is None and cv["cls_only"]["dice"] is None and 0 <= cv["cls_only"]["auc"]["mean"] <= 1
    fold_1 = json.loads((workdir / "crossval/mtl/fold_1/summary.json").read_text())
    assert cv["mtl"]["dice"]["values"][1] == fold_1["segmentation"]["dice"]["mean"]
    assert "## Cross-validation: each fold's model on its own validation cases" in \
        (workdir / "report" / "report.md").read_text()
    assert 0 <= rows["la"]["attention_iou"]["mean"] <= 1 and rows["mtl"]["attention_iou"] is None
    assert not any((workdir / "predictions/cls_only/test/fold_0").glob("*.png"))
    assert len(list((workdir / "predictions/la/test/fold_1/attention").glob("*.png"))) == \
        len(list((workdir / "predictions/la/test/fold_1").glob("*.png")))
    per_fold = json.loads((workdir / "predictions/mtl/test/evaluation/per_fold_summary.json").read_text())
    assert rows["mtl"]["dice"]["mean"] == per_fold["mean_std_over_folds"]["metrics"]["segmentation.dice.mean"]["mean"]
    table = report["tables"][0]
    by_label = {r["label"]: r for r in table["rows"]}
    assert by_label["segmentation only"]["dice"]["paper"] == "0.55 ± 0.10"
    assert by_label["a method we do not have"]["dice"]["ours"] is None
    comparison = report["comparisons"][0]
    assert comparison["rows"][0]["a"] == "mtl" and comparison["rows"][0]["b"] == "seg_only"
    compared = json.loads((workdir / "comparisons/mtl_vs_others/comparison.json").read_text())
    assert "segmentation not compared" in json.dumps(compared)  # against cls_only: the class metrics alone
    markdown = (workdir / "report" / "report.md").read_text()
    assert "| segmentation only (seg_only) | " in markdown and "| 0.55 ± 0.10 |" in markdown
    # beside the paper: ours with its 95 % CI, as in the test set's table
    assert re.search(r"\| segmentation only \(seg_only\) \| [\d.]+ ± [\d.]+ \[-?[\d.]+, -?[\d.]+\] \| 0\.55 ± 0\.10 \|",
                     markdown), markdown
    assert "(fold ensemble)" in markdown and "Wilcoxon" in markdown
    assert (workdir / "report" / "plots" / "table_0_test.png").stat().st_size > 1000
    # every row's fold ensemble as a case gallery, linked under the test set's table
    assert report["galleries"]["test"] == {row: f"galleries/{row}__test.html" for row in rows}
    for row, page in report["galleries"]["test"].items():
        assert f"]({page})" in markdown and "data-case=" in (workdir / "report" / page).read_text(), row
    assert "nnUNetv2_train 520 2d 1 -tr nnUNetTrainerSegOnly_tiny -device cpu" in \
        (workdir / "logs" / "train_seg_only_1.log").read_text()
    # the model without a head: nnU-Net's predictor per fold and for the ensemble, read by evaluate as per-fold
    assert "nnUNetv2_predict" in (workdir / "logs" / "predict_seg_only_test_1.log").read_text()
    assert (workdir / "predictions/seg_only/test/evaluation/per_fold_summary.json").is_file()


def test_a_rerun_skips_finished_steps_and_an_interrupted_training_continues_with_c(synthetic_run):
    """Locally, whichever launcher made the folder: the dry run and the run resume the training with --c, print
    every step of the grid and record the steps run in logs/steps.jsonl."""
    workdir, _, _ = synthetic_run
    fold = workdir / "nnUNet_results/Dataset520_RecipePhantom/nnUNetTrainerMTL_tiny__nnUNetPlans__2d/fold_1"
    other = fold.parent / "fold_0" / "checkpoint_final.pth"
    before = other.stat().st_mtime_ns
    # an interrupted training: its best checkpoint written, no final one, no validation
    (fold / "checkpoint_final.pth").unlink()
    (fold / "validation" / "summary.json").unlink()
    # ... whose every later use is done (its fold's score, the fold ensemble's predictions): not needed, not run
    dry = recipe_cli("run", "synthetic", "--workdir", str(workdir), *ONE_WORKER, "--dry-run").stdout
    assert re.search(r"train:mtl:1 \(not needed: validate:mtl:1, predict:mtl:test done or not needed\)\n"
                     r"# nnUNetv2_train 520 2d 1 "
                     r"-tr nnUNetTrainerMTL_tiny -device cpu --c\n", dry)
    # with its fold's score removed too (and the cross-validation over the folds that reads it) it continues with --c
    crossval = workdir / "crossval" / "mtl"
    (crossval / "fold_1" / "summary.json").unlink()
    (crossval / "summary.json").unlink()
    dry = recipe_cli("run", "synthetic", "--workdir", str(workdir), *ONE_WORKER, "--dry-run").stdout
    assert "\nnnUNetv2_train 520 2d 1 -tr nnUNetTrainerMTL_tiny -device cpu --c\n" in dry
    assert f"# [4/{STEPS}] train:mtl:0 (done: " in dry
    assert "\n# nnUNetv2_train 520 2d 0 -tr nnUNetTrainerMTL_tiny" in dry
    out = recipe_cli("run", "synthetic", "--workdir", str(workdir), *ONE_WORKER).stdout
    # the training, its score, the cross-validation and the report (the fold ensemble's predictions are done: a step
    # is never redone because an earlier one was)
    assert f"all {STEPS} steps done (4 run now, {STEPS - 4} before)" in out
    assert f"[4/{STEPS}] train:mtl:0: train multitask (nnUNetTrainerMTL_tiny), fold 0 ... done before (" in out
    assert f"[{STEPS}/{STEPS}] report: report" in out
    steps = [json.loads(line) for line in (workdir / "logs" / "steps.jsonl").read_text().splitlines()]
    assert {s["step"] for s in steps if s["status"] == "done"} >= {"train:mtl:1", "report"}
    assert other.stat().st_mtime_ns == before and (fold / "checkpoint_final.pth").is_file()
    assert "$ " in (log := (workdir / "logs" / "train_mtl_1.log").read_text())
    assert log.rsplit("\n$ ", 1)[1].startswith(str(BIN / "nnUNetv2_train")) and "-device cpu --c\n" in log


def test_report_reads_a_partial_run_and_says_what_is_missing(synthetic_run, tmp_path):
    workdir, _, _ = synthetic_run
    partial = tmp_path / "partial"
    (partial / "predictions/mtl/test/evaluation").mkdir(parents=True)
    for name in ("per_fold_summary.json",):
        (partial / "predictions/mtl/test/evaluation" / name).write_bytes(
            (workdir / "predictions/mtl/test/evaluation" / name).read_bytes())
    out = recipe_cli("report", "synthetic", "--workdir", str(partial)).stdout
    assert "seg_only on test: no evaluation yet (step evaluate:seg_only:test)" in out
    assert "comparison mtl_vs_others: not run yet (step compare:mtl_vs_others)" in out
    assert "cross-validation of mtl: not run yet (step crossval:mtl)" in out
    report = json.loads((partial / "report" / "report.json").read_text())
    assert report["test_sets"][0]["rows"][0]["dice"]["mean"] is not None


def test_slurm_every_step_is_submitted_with_afterok_and_a_rerun_keeps_the_queued_jobs(synthetic_run):
    story = on_slurm(synthetic_run)
    jobs, kept, first, again = story["jobs"], story["kept"], story["first"], story["again"]
    assert len(jobs) == STEPS and f"{STEPS} jobs submitted, 0 still queued from before, 0 steps done before" in first
    # the second command found every job pending or running through sacct, or its step done (the first ones may
    # have finished in between), and submitted nothing
    assert f"0 jobs submitted, {len(kept)} still queued from before, {STEPS - len(kept)} steps done before" in again
    assert all(kept[s] == jobs[s] for s in kept) and len(kept) >= 20
    assert f"{CANCELLED}: still queued as job {jobs[CANCELLED]}" in again
    script = story["workdir"] / "slurm" / jobs["predict:mtl:test"] / f"{jobs['predict:mtl:test']}_submission.sh"
    # the test images (the conversion) and both folds' models
    assert f"afterok:{jobs['convert:phantom']}:{jobs['train:mtl:0']}:{jobs['train:mtl:1']}\n" in script.read_text()


def test_slurm_a_failed_and_a_cancelled_step_cancel_what_waits_on_them_and_nothing_else(synthetic_run):
    story = on_slurm(synthetic_run)
    states = story["first_states"]
    assert states[FAILING] == "FAILED" and states[CANCELLED] == "CANCELLED"
    for step in AFTER_FAILING | DOWNSTREAM:
        assert states[step] == "CANCELLED", (step, states[step])
    done = set(story["jobs"]) - AFTER_FAILING - DOWNSTREAM - {FAILING, CANCELLED}
    assert {states[s] for s in done} == {"COMPLETED"}, {s: states[s] for s in done}
    job = story["jobs"][FAILING]
    output = (story["workdir"] / "slurm" / job / f"{job}_0_log.out").read_text()
    assert f"injected failure of {FAILING}" in output


def test_slurm_a_rerun_submits_the_failed_and_cancelled_steps_and_completes_the_recipe(synthetic_run):
    story = on_slurm(synthetic_run)
    before, now = story["jobs"], story["rerun_jobs"]
    redo = {FAILING, CANCELLED} | AFTER_FAILING | DOWNSTREAM
    assert f"{len(redo)} jobs submitted, 0 still queued from before, {STEPS - len(redo)} steps done before" in \
        story["rerun"]
    assert set(now) == redo and all(now[s] != before[s] for s in redo)
    assert {story["states"][s] for s in redo} == {"COMPLETED"}, story["states"]
    assert "nnUNetv2_train 520 2d 1 -tr nnUNetTrainerLesionAware_tiny -device cpu" in \
        (story["workdir"] / "logs" / "train_la_1.log").read_text()


@pytest.mark.slow
def test_slurm_launcher_submits_every_step_with_afterok_dependencies(tmp_path):
    """Against a stand-in sbatch (prints job ids 101, 102, ...) and srun: the submission files submitit writes."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/bash\nn=$(( $(cat "$COUNTER" 2>/dev/null || echo 100) + 1 ))\n'
                                 'echo $n > "$COUNTER"\necho "Submitted batch job $n"\n')
    (fake / "srun").write_text("#!/bin/bash\nexit 0\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "COUNTER": str(tmp_path / "counter")}
    workdir = tmp_path / "w"
    out = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--launcher", "slurm", "-device", "cuda",
                     "--slurm-partition", "gpu", "--slurm-setup", "module load cuda", "--timeout-min", "120",
                     env=env).stdout
    assert f"{STEPS} jobs submitted, 0 still queued from before, 0 steps done before" in out
    jobs = json.loads((workdir / "slurm" / "jobs.json").read_text())["jobs"]
    assert jobs["convert:phantom"] == "101" and jobs["report"] == str(100 + STEPS)

    def script(step):
        return (workdir / "slurm" / jobs[step] / f"{jobs[step]}_submission.sh").read_text()

    train = script("train:mtl:0")
    assert f"#SBATCH --dependency=afterok:{jobs['split:phantom']}" in train
    assert "#SBATCH --gpus-per-node=1" in train and "#SBATCH --time=120" in train
    assert "#SBATCH --job-name=synthetic:train:mtl:0" in train and "#SBATCH --partition=gpu" in train
    assert "#SBATCH --kill-on-invalid-dep=yes" in train and "module load cuda" in train
    predict = script("predict:mtl:test")
    assert f"afterok:{jobs['convert:phantom']}:{jobs['train:mtl:0']}:{jobs['train:mtl:1']}" in predict
    evaluate = script("evaluate:mtl:test")  # after GPU steps, a CPU step asks for no GPU
    assert "--gpus-per-node" not in evaluate and f"afterok:{jobs['predict:mtl:test']}" in evaluate
    convert = script("convert:phantom")
    assert "--dependency" not in convert and "--gpus-per-node" not in convert
    report = script("report")
    assert all(jobs[s] in report for s in ("evaluate:mtl:test", "evaluate:seg_only:test", "compare:mtl_vs_others"))
    ensemble = script("predict:seg_only:test")  # nnUNetv2_predict of both folds' models, after both trainings
    assert f"afterok:{jobs['convert:phantom']}:{jobs['train:seg_only:0']}:{jobs['train:seg_only:1']}" in ensemble
    assert not (workdir / "nnUNet_raw").exists() or not any((workdir / "nnUNet_raw").iterdir())  # nothing ran here


@pytest.mark.slow
def test_a_slurm_rerun_submits_only_what_is_not_queued_and_auto_means_cuda(tmp_path):
    """Run twice against stand-in sbatch and sacct: the second run keeps the jobs sacct reports pending or running,
    and submits again the failed training and everything after it, with afterok on the kept jobs. The login node has
    no GPU; the recipe's device = "auto" still trains on the cluster's GPUs."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text('#!/bin/bash\nn=$(( $(cat "$COUNTER" 2>/dev/null || echo 100) + 1 ))\n'
                                 'echo $n > "$COUNTER"\necho "Submitted batch job $n"\n')
    (fake / "srun").write_text("#!/bin/bash\nexit 0\n")
    # sacct -o JobID,State,NodeList --parsable2 -j ID -j ID ...: the state in $STATES/ID, else PENDING
    (fake / "sacct").write_text('#!/bin/bash\necho "JobID|State|NodeList"\nwhile [ $# -gt 0 ]; do\n'
                                '  if [ "$1" = -j ]; then s=PENDING; [ -f "$STATES/$2" ] && s=$(cat "$STATES/$2")\n'
                                '    echo "$2|$s|node1"; echo "$2.batch|$s|node1"; shift; fi; shift\ndone\n')
    for f in fake.iterdir():
        f.chmod(0o755)
    states = tmp_path / "states"
    states.mkdir()
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "COUNTER": str(tmp_path / "counter"),
           "STATES": str(states), "CUDA_VISIBLE_DEVICES": ""}
    workdir = tmp_path / "w"
    first = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--launcher", "slurm", "-device", "auto",
                       env=env).stdout
    assert "on cuda (slurm launcher)" in first
    jobs = json.loads((workdir / "slurm" / "jobs.json").read_text())["jobs"]
    import pickle
    submitted = pickle.loads((workdir / "slurm" / jobs["train:mtl:0"] / f"{jobs['train:mtl:0']}_submitted.pkl"
                              ).read_bytes())  # submitit's DelayedSubmission: run_step's arguments
    argv, job_env, _, whole, provenance = submitted.args
    assert whole is False and provenance[0] == str(workdir / "logs" / "provenance" / "train_mtl_0.json")
    assert provenance[1]["command"] == ["nnUNetv2_train", "520", "2d", "0", "-tr", "nnUNetTrainerMTL_tiny"]
    assert argv[-2:] == ["-device", "cuda"]
    # only the recipe's variables travel: PATH, CUDA_VISIBLE_DEVICES, SLURM_* on the node stay the node's own
    assert set(job_env) == {"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer",
                            "nnUNet_def_n_proc", "nnUNet_n_proc_DA", "PYTHONUNBUFFERED"}
    (states / jobs["train:mtl:0"]).write_text("FAILED")
    (states / jobs["convert:phantom"]).write_text("RUNNING")
    again = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--launcher", "slurm", env=env).stdout
    steps = plan_steps(load_recipe("synthetic"), Context(workdir=workdir, data={}, device="cuda"))
    redo = {"train:mtl:0"}
    for step in steps:  # what follows the failed training
        if redo & set(step.deps):
            redo.add(step.id)
    assert {"predict:mtl:test", "evaluate:mtl:test", "compare:mtl_vs_others", "report"} <= redo
    assert f"{len(redo)} jobs submitted, {STEPS - len(redo)} still queued from before" in again
    assert f"convert:phantom: still queued as job {jobs['convert:phantom']}" in again
    now = json.loads((workdir / "slurm" / "jobs.json").read_text())["jobs"]
    assert all((now[s] == jobs[s]) == (s not in redo) for s in jobs)
    train = (workdir / "slurm" / now["train:mtl:0"] / f"{now['train:mtl:0']}_submission.sh").read_text()
    assert f"afterok:{jobs['split:phantom']}" in train  # the kept split job
    predict = (workdir / "slurm" / now["predict:mtl:test"] / f"{now['predict:mtl:test']}_submission.sh").read_text()
    assert f"{now['train:mtl:0']}:{jobs['train:mtl:1']}" in predict
    # --only: its steps (convert, plan, split and two trainings, all queued) are not submitted again, no report is
    # announced, and jobs.json keeps every other step's job (a later full run must not submit them twice)
    only = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--launcher", "slurm", "--only", "train:la:*",
                      env=env).stdout
    assert "0 jobs submitted, 5 still queued from before" in only and "the report follows" not in only
    assert json.loads((workdir / "slurm" / "jobs.json").read_text())["jobs"] == now
    (fake / "sacct").write_text("#!/bin/bash\nexit 1\n")  # no accounting: do not guess, do not submit twice
    err = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--launcher", "slurm", env=env, check=False)
    assert err.returncode == 2 and "sacct gives no state" in err.stderr and len(err.stderr.strip().splitlines()) == 1


def sleeper(folder: Path, seconds: int) -> list[str]:
    """A step's command that starts a process of its own (as a training starts data-loader workers) which writes
    its pid, sleeps, then writes ``folder/ran``: what a cancel must stop, the child as well as the command."""
    inner = (f"import os, pathlib, time; d = pathlib.Path({str(folder)!r}); (d / 'pid').write_text(str(os.getpid()));"
             f" time.sleep({seconds}); (d / 'ran').write_text('ran')")
    return [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}])"]


def assert_ended(folder: Path) -> None:
    """The sleeper's process is gone within 20 s of its step's end (a zombie not yet reaped counts as gone), well
    before its own sleep (30 s or more) would end it, and it did not get to write ``ran``. 5 s failed on a loaded
    2-core machine (a training beside two test workers): a cancel reaches the job process by a signal (SIGTERM
    forwarded by submitit's controller, or submitit's SIGINT at its time limit), whose handler then stops the
    command's group."""
    pid = int((folder / "pid").read_text())
    deadline = time.time() + 20
    while running(pid):
        if time.time() > deadline:
            pytest.fail(f"the cancelled step's command (pid {pid}) is still running")
        time.sleep(0.1)
    assert not (folder / "ran").exists()


@pytest.mark.parametrize("sig, raised", [("SIGINT", KeyboardInterrupt), ("SIGTERM", SystemExit)])
def test_a_signal_to_the_step_stops_its_commands_whole_group_at_once(tmp_path, sig, raised):
    """run_step's job gets SIGINT (submitit's own cancel or time limit, one second before SIGKILL) or SIGTERM (the
    local launcher's cancel through submitit's controller, SLURM, a user):
    the command and the process it started are gone well inside that second, and the job process ends by the
    signal's own exception (no exit code read as success)."""
    import signal
    import threading
    from nnunet_mtl.recipes.launch import run_step
    before = signal.getsignal(getattr(signal, sig))
    threading.Timer(1.5, os.kill, (os.getpid(), getattr(signal, sig))).start()
    started = time.time()
    with pytest.raises(raised):
        run_step(sleeper(tmp_path, 30), {}, str(tmp_path / "step.log"), provenance=(str(tmp_path / "made.json"), {}))
    assert time.time() - started < 2.5  # 1.5 s to the signal, then the stop itself
    assert_ended(tmp_path)
    assert signal.getsignal(getattr(signal, sig)) is before  # the job's own handler is back
    assert not (tmp_path / "made.json").exists()  # a cancelled step records nothing as made


def test_a_sigterm_while_the_command_starts_is_not_lost(tmp_path, monkeypatch):
    """run_step's handlers are in place before its command starts: submitit's job process ignores SIGTERM until
    then (its 'bypass' handler, stood in for here), so a cancel that came while the command started was lost and
    the step ran to its end."""
    import signal
    import subprocess as sp

    from nnunet_mtl.recipes import launch
    real = sp.Popen

    def popen(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here, before the command exists
        return real(*args, **kwargs)
    monkeypatch.setattr(launch.subprocess, "Popen", popen)
    before = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # submitit's bypass
    try:
        started = time.time()
        with pytest.raises(SystemExit):
            launch.run_step(sleeper(tmp_path, 5), {}, str(tmp_path / "step.log"))
        assert time.time() - started < 3
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not (tmp_path / "pid").exists()  # the command never started


class _FakeJob:
    """A submitit LocalJob as _cancel sees it: ``_process`` (the controller) and ``cancel`` (submitit's SIGINT)."""

    def __init__(self, process):
        self._process, self.cancelled = process, False

    def cancel(self, check=True):
        self.cancelled = True
        self._process.kill()

    def done(self):
        return self._process.poll() is not None


def _controller(tmp_path: Path, terms_to_end: int):
    """A stand-in controller: ends at its ``terms_to_end``-th SIGTERM (0: never), writing how many it got."""
    code = (f"import signal, sys, time, pathlib\nn = 0\ndef h(s, f):\n    global n\n    n += 1\n"
            f"    pathlib.Path({str(tmp_path / 'terms')!r}).write_text(str(n))\n"
            f"    if n == {terms_to_end}: sys.exit(0)\nsignal.signal(signal.SIGTERM, h)\n"
            f"pathlib.Path({str(tmp_path / 'ready')!r}).write_text('')\nwhile True: time.sleep(0.05)\n")
    process = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 20
    while not (tmp_path / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    return process


def test_a_cancel_repeats_its_sigterm_until_the_controller_ends(tmp_path, monkeypatch):
    """A SIGTERM that reaches submitit's controller before it has started the step (or the step before its
    handler) is lost: the cancel sends it again each second, and falls back to submitit's cancel when the controller
    still lives after CANCEL_WAIT_S."""
    from nnunet_mtl.recipes import launch
    job = _FakeJob(_controller(tmp_path, terms_to_end=2))
    started = time.time()
    launch._cancel([job])
    assert job._process.poll() == 0 and (tmp_path / "terms").read_text() == "2" and not job.cancelled
    assert time.time() - started < 5
    (tmp_path / "ready").unlink()
    monkeypatch.setattr(launch, "CANCEL_WAIT_S", 1.5)
    deaf = _FakeJob(_controller(tmp_path, terms_to_end=0))
    launch._cancel([deaf])
    assert deaf.cancelled and deaf._process.wait(timeout=10) != 0


class _SignallingExecutor:
    """A stand-in for submitit's local executor whose ``submit`` makes its job (``make``: it may raise), then gets
    a SIGTERM inside the call, as a `kill` landing while submitit starts a job's controller."""

    def __init__(self, make):
        self.make, self.job = make, None

    def update_parameters(self, **kwargs):
        pass

    def submit(self, *args):
        import signal
        try:
            self.job = self.make()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once, inside submit
            time.sleep(0.2)
        return self.job


def test_a_sigterm_while_a_job_is_submitted_still_cancels_that_job(tmp_path, monkeypatch):
    """Raised inside submitit's submit (after its controller has started), the SIGTERM left the new job out of the
    list the cancel reads: it ran on unwatched. The signal now waits until the job is in the list."""
    import signal
    from nnunet_mtl.recipes import launch
    executor = _SignallingExecutor(lambda: _FakeJob(_controller(tmp_path, terms_to_end=1)))
    monkeypatch.setattr(launch, "_local_executor", lambda ctx: executor)
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cpu")
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as raised:
            launch.run_local([Step("report", "report", "sleeps", sleeper(tmp_path, 60))], recipe, ctx)
        assert raised.value.code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
        assert executor.job._process.poll() == 0 and (tmp_path / "terms").read_text() == "1"  # its cancel reached it
        assert not executor.job.cancelled
    finally:
        executor.job._process.kill()  # the stand-in controller ends only at a SIGTERM: never left behind


def test_a_sigterm_while_a_submission_fails_still_stops_as_a_signal(tmp_path, monkeypatch):
    """The held SIGTERM is not lost when the submission itself fails: the run stops as a signal stops it."""
    import signal
    from nnunet_mtl.recipes import launch

    def fails():
        raise OSError("no job folder")
    monkeypatch.setattr(launch, "_local_executor", lambda ctx: _SignallingExecutor(fails))
    ctx = Context(workdir=tmp_path, data={}, device="cpu")
    with pytest.raises(SystemExit) as raised:
        launch.run_local([Step("report", "report", "sleeps", sleeper(tmp_path, 60))], load_recipe("synthetic"), ctx)
    assert raised.value.code == 128 + signal.SIGTERM and isinstance(raised.value.__cause__, OSError)


@pytest.mark.slow
def test_local_launcher_waits_with_a_time_limit(tmp_path):
    """submitit's local executor kills a job at its timeout_min (its default would be 2 minutes): the step fails
    with one message naming the limit and its log, and nothing after it starts."""
    from nnunet_mtl.recipes.launch import run_local
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cpu")
    # 15 s: the limit counts from the job's start, and its command (the sleeper, which writes its pid) must have
    # started by then to be seen killed with it; 3 s (0.05 min) ran out before it had, on a loaded 2-core CI machine
    slow = Step("report", "report", "sleeps", sleeper(tmp_path, 120), timeout_min=0.25)
    after = Step("report2", "report", "never", [sys.executable, "-c", f"open({str(tmp_path / 'ran2')!r}, 'w')"])
    started = time.time()
    with pytest.raises(NnunetMtlError, match="did not finish within 0.25 min"):
        run_local([slow, after], recipe, ctx)
    assert time.time() - started < 60 and not (tmp_path / "ran2").exists()
    assert step_state(slow, recipe, ctx)[0] is False
    assert_ended(tmp_path)  # killed with its job, not left sleeping to write 'ran' later


@pytest.mark.slow
@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_to_the_local_launcher_cancels_the_step_under_way(tmp_path, capfd, sigint):
    """`kill` of `nnunet_mtl recipe run`: without a handler SIGTERM ended the launcher at once and left submitit's
    local job, and the training in it, running on unwatched (a later run would start a second one beside it). Also
    when the launcher was started in the background (`nohup ... &` ignores SIGINT: the jobs inherited the ignored
    SIGINT, then submitit's cancel, and the training went on; the cancel is now a SIGTERM, the 'ignored' case keeps
    the background start covered). The launcher's output ends with its one line: submitit's controller (a process
    of its own, writing to the launcher's stderr) ends without a traceback (submitit's cancel, a SIGINT, ended it in
    a KeyboardInterrupt one)."""
    import signal
    import threading
    from nnunet_mtl.recipes.launch import run_local
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cpu")
    step = Step("report", "report", "sleeps", sleeper(tmp_path, 60))
    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)
    request = signal.getsignal(signal.SIGINT)

    def kill_when_started():
        deadline = time.time() + 30
        while not (tmp_path / "pid").exists() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=kill_when_started, daemon=True).start()
    try:
        with pytest.raises(SystemExit) as raised:
            run_local([step], recipe, ctx)
        after_int = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before_int)
    assert raised.value.code == 128 + signal.SIGTERM
    assert_ended(tmp_path)
    wait_for_no_process_naming(tmp_path)  # submitit's controller too: whatever it writes is written
    err = capfd.readouterr().err
    assert "stopped by a signal: cancelled the 1 step(s) under way" in err and "Traceback" not in err, err
    assert signal.getsignal(signal.SIGTERM) is before and after_int is request


def wait_for_no_process_naming(folder: Path, seconds: float = 20) -> None:
    """Wait until no process has ``folder`` in its command line (submitit's controller names its job folder)."""
    deadline = time.time() + seconds
    while True:
        alive = running_naming(str(folder))
        if not alive:
            return
        if time.time() > deadline:
            pytest.fail(f"processes naming {folder} still running: {alive}")
        time.sleep(0.1)


def test_nnunets_own_trainers_are_rows_without_a_head(tmp_path):
    """A baseline of plain nnU-Net (nnUNetTrainer, or a variant nnU-Net's -tr finds) trains with nnUNetv2_train and
    is predicted by nnUNetv2_predict, like a segmentation-only row; a name neither knows is still an error."""
    text = MINIMAL.replace("nnUNetTrainerLesionAware_tiny", "nnUNetTrainer_250epochs")
    recipe = load_recipe(str(write(tmp_path, text)))
    steps = {s.id: s for s in plan_steps(recipe, Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")},
                                                         device="cpu"))}
    assert steps["train:la:0"].argv[:6] == ["nnUNetv2_train", "613", "2d", "0", "-tr", "nnUNetTrainer_250epochs"]
    assert steps["predict:la:udiat"].argv[0] == "nnUNetv2_predict"
    lines = errors_of(write(tmp_path, MINIMAL.replace("nnUNetTrainerLesionAware_tiny", "nnUNetTrainerNoSuchOne")))
    assert len(lines) == 1 and lines[0].startswith("mine.toml: rows[0].trainer: 'nnUNetTrainerNoSuchOne' is not a "
                                                   "trainer"), lines


def test_a_segmentation_only_row_is_predicted_by_nnunet_per_fold_and_a_classification_only_one_by_ours(tmp_path):
    text = MINIMAL.replace('kind = "holdout"\nfraction = 0.15', 'kind = "kfold"\nfolds = 3') \
        .replace("nnUNetTrainerLesionAware_tiny", "nnUNetTrainerSegOnly_tiny")
    recipe = load_recipe(str(write(tmp_path, text)))
    ctx = Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")}, device="cpu")
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    out = tmp_path / "w/predictions/la/udiat"
    for k in range(3):
        argv = steps[f"predict:la:udiat:{k}"].argv
        assert argv[0] == "nnUNetv2_predict" and argv[argv.index("-o") + 1] == str(out / f"fold_{k}")
        assert argv[argv.index("-f") + 1:argv.index("-chk")] == [str(k)]
    ensemble = steps["predict:la:udiat"].argv
    assert ensemble[ensemble.index("-o") + 1] == str(out / "ensemble")
    assert ensemble[ensemble.index("-f") + 1:ensemble.index("-chk")] == ["0", "1", "2"]
    assert set(steps["evaluate:la:udiat"].deps) == {"predict:la:udiat:0", "predict:la:udiat:1", "predict:la:udiat:2",
                                                    "predict:la:udiat"}
    # done = one mask per input image
    images = tmp_path / "w/nnUNet_raw/Dataset602_UDIAT/imagesTs"
    images.mkdir(parents=True)
    for case in ("a", "b"):
        (images / f"{case}_0000.png").write_bytes(b"")
    (out / "fold_1").mkdir(parents=True)
    (out / "fold_1" / "a.png").write_bytes(b"")
    assert step_state(steps["predict:la:udiat:1"], recipe, ctx) == (False, f"1 of 2 masks in {out / 'fold_1'}")
    (out / "fold_1" / "b.png").write_bytes(b"")
    assert step_state(steps["predict:la:udiat:1"], recipe, ctx)[0]
    assert "--continue_prediction" in plan_steps(recipe, ctx)[[s.id for s in plan_steps(recipe, ctx)]
                                                         .index("predict:la:udiat:1")].argv
    # classification only (Zhang, Moradi, Saha's malig_only): class probabilities from nnunet_mtl predict, per fold
    recipe = load_recipe(str(write(tmp_path, text.replace("nnUNetTrainerSegOnly_tiny", "nnUNetTrainerClsOnly_tiny"))))
    steps = {s.id: s for s in plan_steps(recipe, ctx)}
    assert [k for k in steps if k.startswith("predict:")] == ["predict:la:udiat"]
    argv = steps["predict:la:udiat"].argv
    assert argv[:2] == ["nnunet_mtl", "predict"] and "--per-fold" in argv and "--save-attention" not in argv
    # its training is done when the final validation wrote its class predictions (there is no summary.json of masks)
    fold = ctx.model(recipe, "la") / "fold_2"
    (fold / "validation").mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"\x80\x02")
    assert not step_state(steps["train:la:2"], recipe, ctx)[0]
    (fold / "validation" / "class_predictions.csv").write_text("case_id\n")  # its header alone: cut short
    assert not step_state(steps["train:la:2"], recipe, ctx)[0]
    (fold / "validation" / "class_predictions.csv").write_text("case_id\na\n")
    assert step_state(steps["train:la:2"], recipe, ctx)[0]


def test_progress_of_a_running_step_is_its_logs_newest_epoch(tmp_path):
    from nnunet_mtl.recipes.launch import last_progress
    log = tmp_path / "train.log"
    assert last_progress(log) is None
    log.write_text("$ nnUNetv2_train 520 2d 0\n2026-12-04 05:31:13.97: Epoch 0 \n"
                   "2026-12-04 05:33:28.28: train_loss 0.5638 (seg 0.2405  cls 1.1493)\n"
                   "2026-12-04 05:33:28.28: Pseudo dice [np.float32(0.5774)]\n"
                   "2026-12-04 05:33:28.28: Epoch time: 134.51 s\n2026-12-04 05:33:29.00: Epoch 1 \n")
    assert last_progress(log) == "Epoch 1 "
    with open(log, "a") as f:
        f.write("2026-12-04 05:35:38.12: train_loss -0.3997 (seg -0.5607  cls 1.1794)\n")
    assert last_progress(log) == "Epoch 1 ; train_loss -0.3997 (seg -0.5607  cls 1.1794)"
    with open(log, "a") as f:  # a rerun with --c appends: until its first epoch, nothing of the earlier run shows
        f.write("\n$ nnUNetv2_train 520 2d 0 --c\n# started 2026-12-04 06:00:00\n")
    assert last_progress(log) is None
    log.write_text("fold 1/2: fold 0's model alone: 6 cases predicted now, x.csv\n")
    assert last_progress(log).startswith("fold 1/2")


@pytest.mark.slow
def test_local_launcher_with_gpus_runs_each_kind_one_per_gpu_and_every_step_once(tmp_path, monkeypatch):
    """--gpus: the trainings, then the predictions, one per listed GPU at a time (each with its
    CUDA_VISIBLE_DEVICES); the CPU steps between them (an evaluation after each prediction) still run, once, after
    what they wait for. Stand-in commands append their step and GPU to a file."""
    from nnunet_mtl.recipes.launch import run_local
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cuda")
    ran = tmp_path / "ran.txt"
    script = ("import os, sys; open(sys.argv[1], 'a').write(sys.argv[2] + ' ' + "
              "os.environ.get('CUDA_VISIBLE_DEVICES', '-') + '\\n')")

    def step(id_, kind, gpu):
        return Step(id_, kind, id_, [sys.executable, "-c", script, str(ran), id_], gpu=gpu, timeout_min=5)

    steps = [step("train:mtl:0", "train", True), step("train:mtl:1", "train", True),
             step("predict:mtl:test", "predict", True), step("evaluate:mtl:test", "evaluate", False),
             step("predict:seg_only:test", "predict", True), step("evaluate:seg_only:test", "evaluate", False)]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    run_local(steps, recipe, ctx, gpus=[0, 1])
    lines = [line.split() for line in ran.read_text().splitlines()]
    order = [name for name, _ in lines]
    assert sorted(order) == sorted(s.id for s in steps)  # each step once
    gpu_of = dict(lines)
    assert {gpu_of["train:mtl:0"], gpu_of["train:mtl:1"]} == {"0", "1"}
    assert {gpu_of["predict:mtl:test"], gpu_of["predict:seg_only:test"]} == {"0", "1"}
    # a step run one at a time sees the launching shell's GPUs (here: none set), not submitit's "" for 0 GPUs
    assert gpu_of["evaluate:mtl:test"] == gpu_of["evaluate:seg_only:test"] == "-"
    assert max(order.index("train:mtl:0"), order.index("train:mtl:1")) < order.index("predict:mtl:test")
    for row in ("mtl", "seg_only"):
        assert order.index(f"predict:{row}:test") < order.index(f"evaluate:{row}:test")


@pytest.mark.slow
def test_a_failed_step_on_one_gpu_cancels_the_others_and_says_so(tmp_path, capsys):
    """--gpus: when a training fails while another runs on the other GPU, the run stops at once with the failed
    step's error, and the running one is cancelled (not left running behind the command, not waited for)."""
    from nnunet_mtl.recipes.launch import run_local
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cuda")
    slow = Step("train:mtl:0", "train", "slow", sleeper(tmp_path, 60), gpu=True, timeout_min=5)
    failing = Step("train:mtl:1", "train", "fails", [sys.executable, "-c", "import time; time.sleep(3); exit(3)"],
                   gpu=True, timeout_min=5)
    started = time.time()
    with pytest.raises(NnunetMtlError, match="step train:mtl:1 failed with exit code 3"):
        run_local([slow, failing], recipe, ctx, gpus=[0, 1])
    assert time.time() - started < 40
    assert "cancelled 1 other step(s) still running" in capsys.readouterr().err
    assert_ended(tmp_path)


def test_a_failed_step_on_the_cpu_cancels_nothing_and_says_nothing_of_it(tmp_path, capsys):
    """One step at a time: the step that failed has ended; no 'cancelled ... still running' line about it."""
    from nnunet_mtl.recipes.launch import run_local
    recipe = load_recipe("synthetic")
    ctx = Context(workdir=tmp_path, data={}, device="cpu")
    failing = Step("train:mtl:0", "train", "fails", [sys.executable, "-c", "exit(3)"], timeout_min=5)
    with pytest.raises(NnunetMtlError, match="step train:mtl:0 failed with exit code 3"):
        run_local([failing], recipe, ctx)
    assert "cancelled" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ guidance ablations
GUIDED_ROW = '''[[rows]]
key = "guided"
label = "clinically guided"
trainer = "nnUNetTrainerRLAR_tiny"
dataset = "busi"
'''
ABLATION = '''[[ablations]]
key = "g_udiat"
row = "guided"
test_set = "udiat"
caption = "Table 5"
paper."circularity" = { delta_macro_precision = "-0.0009 ± +0.0045", delta_macro_f1 = "-0.0017 ± -0.0035" }
paper."glcm_energy" = { delta_macro_f1 = "0.0010 ± -0.0025" }
paper."edge_contrast" = { delta_macro_recall = "-0.0395 ± +0.0252" }
paper_names = { edge_contrast = "edge_intensity" }
'''


def test_ablations_are_parsed_with_the_papers_values_as_printed(tmp_path):
    from nnunet_mtl.evaluation.guidance_ablation import DELTAS
    from nnunet_mtl.recipes.schema import ABLATION_METRICS
    assert ABLATION_METRICS == DELTAS  # the recipe's metric names are ablate-guidance's keys
    recipe = load_recipe(str(write(tmp_path, MINIMAL + GUIDED_ROW + ABLATION)))
    (a,) = recipe.ablations
    assert (a.key, a.row, a.test_set, a.caption) == ("g_udiat", "guided", "udiat", "Table 5")
    assert a.paper["circularity"]["delta_macro_f1"] == "-0.0017 ± -0.0035"
    assert a.paper["glcm_energy"] == {"delta_macro_f1": "0.0010 ± -0.0025"} and a.paper_names == {
        "edge_contrast": "edge_intensity"}
    # a signed std, as Salama et al. print it, is read (its magnitude; the report keeps the printed sign)
    assert parse_paper_value("-0.0002 ± -0.0044") == (-0.0002, 0.0044)
    assert parse_paper_value("0.0010 ± -0.0025") == (0.001, 0.0025)


def test_each_wrong_ablation_field_is_one_line_all_at_once(tmp_path):
    bad = ABLATION.replace('row = "guided"', 'row = "la"').replace('test_set = "udiat"', 'test_set = "busi"') \
        .replace('caption = "Table 5"', 'caption = "Table 5"\nfolds = 3') \
        .replace('paper."glcm_energy"', 'paper."glcm_enrgy"').replace("delta_macro_recall", "delta_recall") \
        .replace('"-0.0009 ± +0.0045"', '"about -0.001"').replace('edge_intensity" }', 'edge_intensity", imc1 = 2 }')
    lines = errors_of(write(tmp_path, MINIMAL + GUIDED_ROW + bad))
    expected = [
        "ablations[0].folds: unknown field",
        "ablations[0].row: 'la' trains nnUNetTrainerLesionAware_tiny, which has no guided features; expected a "
        "clinically guided row (nnUNetTrainerClinGuided* or nnUNetTrainerRLAR*)",
        "ablations[0].test_set: 'busi' is not a test set key",
        "ablations[0].paper.circularity.delta_macro_precision: 'about -0.001'; expected a number",
        "ablations[0].paper.glcm_enrgy: not a guided feature (did you mean 'glcm_energy'?)",
        "ablations[0].paper.edge_contrast.delta_recall: not an ablation metric (did you mean 'delta_macro_recall'?)",
        "ablations[0].paper_names.imc1: not a guided feature",
        "ablations[0].paper_names.imc1: 2; expected the paper's name for it, in quotes",
    ]
    for e in expected:
        assert sum(e in line for line in lines) == 1, (e, lines)
    assert len(lines) == len(expected) and all(line.startswith("mine.toml: ablations[0].") for line in lines)
    # a guided row's own features: the 13 of Sec. 2.2, checked with the row's trainer
    lines = errors_of(write(tmp_path, MINIMAL + GUIDED_ROW + ABLATION.replace('row = "guided"', 'row = "nope"')))
    assert lines == ["mine.toml: ablations[0].row: 'nope' is not a row key; expected one of guided, la"]


def _kfold(text: str) -> str:
    return text.replace('kind = "holdout"\nfraction = 0.15', 'kind = "kfold"\nfolds = 3')


def test_an_ablation_is_one_ablate_guidance_step_after_the_rows_trainings(tmp_path):
    ctx = Context(workdir=tmp_path / "w", data={"BUSI": Path("/data/BUSI")}, device="cuda")
    raw = tmp_path / "w/nnUNet_raw/Dataset602_UDIAT"
    out = tmp_path / "w/ablations/g_udiat"
    for text, folds, marker in ((_kfold(MINIMAL + GUIDED_ROW + ABLATION), ["0", "1", "2"],
                                 "guidance_ablation_per_fold.json"),
                                (MINIMAL + GUIDED_ROW + ABLATION, ["0"], "guidance_ablation.json")):
        recipe = load_recipe(str(write(tmp_path, text)))
        steps = {s.id: s for s in plan_steps(recipe, ctx)}
        step = steps["ablate:g_udiat"]
        assert list(steps)[-2:] == ["ablate:g_udiat", "report"] and step.kind == "ablate" and step.gpu
        assert step.argv == ["nnunet_mtl", "ablate-guidance", "-i", str(raw / "imagesTs"), "-o", str(out), "-d",
                             "603", "-c", "2d", "-tr", "nnUNetTrainerRLAR_tiny", "-f", *folds, "-chk",
                             "checkpoint_final.pth", "-device", "cuda", "-npp", "2", "-nps", "2",
                             "--disable_progress_bar", "--cases", str(raw / "cases.csv")] \
            + (["--per-fold"] if len(folds) > 1 else [])
        assert step.deps == ["convert:udiat"] + [f"train:guided:{k}" for k in folds]
        assert "ablate:g_udiat" in steps["report"].deps
        assert step_state(step, recipe, ctx) == (False, str(out / marker))
        out.mkdir(parents=True, exist_ok=True)
        (out / marker).write_text("{}")
        assert step_state(step, recipe, ctx) == (True, str(out / marker))
        (out / marker).unlink()
    # the argv is what ablate-guidance's parser takes
    from nnunet_mtl.cli.main import build_parser
    args = build_parser().parse_args(steps["ablate:g_udiat"].argv[1:])
    assert args.cases == str(raw / "cases.csv") and args.per_fold is False and args.f == ["0"]
    from nnunet_mtl.recipes.launch import SlurmOptions, slurm_parameters
    assert slurm_parameters(steps["ablate:g_udiat"], recipe, [], SlurmOptions(cpus=16))["cpus_per_task"] == 16


def _fold_ablation(seed: int, features: list[str]):
    """ablate_guidance on made-up embeddings of 12 cases, 3 classes, one fold's classifier."""
    import numpy as np
    from nnunet_mtl.evaluation.guidance_ablation import ablate_guidance
    rng = np.random.default_rng(seed)
    k = len(features) + 3
    embeddings = {f"case{i:02d}": rng.normal(size=(1, 2, 1, k)) for i in range(12)}
    classifier = [(rng.normal(size=(3, k)), rng.normal(size=3) * 0.1)]
    truth = {c: i % 3 for i, c in enumerate(sorted(embeddings))}
    return ablate_guidance(embeddings, classifier, truth, ["TR1", "TR2", "TR3"], features)


def test_report_puts_our_ablation_beside_the_papers_and_lists_a_missing_one(tmp_path):
    from nnunet_mtl.evaluation.guidance_ablation import aggregate_fold_ablations, write_per_fold_ablation
    from nnunet_mtl.radiomics.features import DEFAULT_FEATURES
    from nnunet_mtl.recipes.report import write_report
    second = ABLATION.replace('key = "g_udiat"', 'key = "g_busi"').replace('caption = "Table 5"', "")
    recipe = load_recipe(str(write(tmp_path, _kfold(MINIMAL + GUIDED_ROW + ABLATION + second))))
    ctx = Context(workdir=tmp_path / "w", data={}, device="cpu")
    features = list(DEFAULT_FEATURES)
    per_fold = {k: _fold_ablation(k, features) for k in (0, 1, 2)}
    agg = aggregate_fold_ablations(per_fold, _fold_ablation(9, features))
    write_per_fold_ablation(tmp_path / "w/ablations/g_udiat", agg)
    markdown, _ = write_report(recipe, ctx)
    report = json.loads((tmp_path / "w/report/report.json").read_text())
    done, missing = report["ablations"]
    assert done["source"] == str(tmp_path / "w/ablations/g_udiat/guidance_ablation_per_fold.json")
    rows = {r["feature"]: r for r in done["rows"]}
    assert list(rows) == features  # every guided feature of ours, glcm_imc1 too (no paper value)
    circ = rows["circularity"]["delta_macro_f1"]
    ours = agg["features"][0]["delta_macro_f1"]
    assert circ["ours"]["mean"] == pytest.approx(ours["mean"]) and circ["ours"]["std"] == pytest.approx(ours["std"])
    assert circ["paper"] == "-0.0017 ± -0.0035"
    assert circ["paper_value"] == {"value": -0.0017, "std": 0.0035, "std_sign": "-"}
    assert rows["glcm_imc1"]["delta_macro_f1"]["paper"] is None
    assert rows["edge_contrast"]["paper_name"] == "edge_intensity"
    assert done["baseline"]["macro_f1"]["mean"] == pytest.approx(agg["baseline"]["macro_f1"]["mean"])
    # the Markdown: ours (mean ± std over the folds, signed) beside the paper's string, the baseline's macro F1
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| circularity |"))
    assert f"| {ours['mean']:+.4f} ± {ours['std']:.4f} | -0.0017 ± -0.0035 |" in line
    assert "| edge_contrast (paper: edge_intensity) |" in markdown
    assert "| glcm_energy | " in markdown and "| 0.0010 ± -0.0025 |" in markdown
    assert f"Baseline (every feature): macro F1 {agg['baseline']['macro_f1']['mean']:.4f} ± " in markdown
    assert "| Δ macro P ours | Δ macro P paper |" in markdown and "\nTable 5\n" in markdown
    # the one not run: listed with its step, its table still shows the paper's values
    assert missing["source"] is None and "ablation g_busi: not run yet (step ablate:g_busi)" in report["missing"]
    assert [r["feature"] for r in missing["rows"]] == ["circularity", "glcm_energy", "edge_contrast"]
    assert "not run yet (step ablate:g_busi)" in markdown and "- ablation g_busi: not run yet" in markdown


def test_report_of_a_one_fold_ablation_reads_guidance_ablation_json(tmp_path):
    from nnunet_mtl.evaluation.guidance_ablation import write_ablation
    from nnunet_mtl.radiomics.features import DEFAULT_FEATURES
    from nnunet_mtl.recipes.report import build_report
    recipe = load_recipe(str(write(tmp_path, MINIMAL + GUIDED_ROW + ABLATION)))
    ctx = Context(workdir=tmp_path / "w", data={}, device="cpu")
    baseline, rows = _fold_ablation(0, list(DEFAULT_FEATURES))
    (tmp_path / "w/ablations/g_udiat").mkdir(parents=True)
    write_ablation(tmp_path / "w/ablations/g_udiat", baseline, rows, "cases.csv")
    (a,) = build_report(recipe, ctx)["ablations"]
    cell = a["rows"][0]["delta_macro_f1"]["ours"]
    assert cell["mean"] == pytest.approx(rows[0]["delta_macro_f1"]) and cell["std"] is None
    assert a["baseline"]["macro_f1"]["mean"] == pytest.approx(baseline["macro_f1"])


def test_thyroid_recipe_ablates_the_guided_row_on_both_test_sets_with_table_5_as_printed():
    from nnunet_mtl.radiomics.features import DEFAULT_FEATURES
    recipe = load_recipe("thyroid_rlar")
    by_key = {a.key: a for a in recipe.ablations}
    assert {(a.row, a.test_set) for a in recipe.ablations} == {("guided", "thyroidxl"), ("guided", "aimi")}
    for a in recipe.ablations:
        # the paper's radiomics_glm_entropy has no counterpart; our glcm_imc1 has no paper row
        assert set(a.paper) == set(DEFAULT_FEATURES) - {"glcm_imc1"}
        assert "radiomics_glm_entropy" not in a.paper_names.values() and "glcm_imc1" not in a.paper_names
        assert a.paper_names["edge_contrast"] == "edge_intensity" and a.paper_names["elongation"] == \
            "radiomics_elongation2d"
        assert "radiomics_glm_entropy" in a.caption
    xl, aimi = by_key["guided_thyroidxl"].paper, by_key["guided_aimi"].paper
    assert xl["glcm_energy"]["delta_macro_f1"] == "0.0010 ± -0.0025"  # unsigned, as printed
    assert xl["circularity"] == {"delta_macro_precision": "-0.0009 ± +0.0045", "delta_macro_recall":
                                 "-0.0002 ± -0.0044", "delta_macro_f1": "-0.0017 ± -0.0035"}
    assert aimi["ellipticity"]["delta_macro_f1"] == "-0.0265 ± -0.0005"
    assert aimi["kurtosis"]["delta_macro_recall"] == "-0.0414 ± +0.0275"


@pytest.mark.slow
def test_the_dry_run_is_a_script_that_runs_as_run_does_and_previews_gpu_commands_anywhere(tmp_path):
    """The missing --data are named as typed; the dry run starts with set -e and exports every variable a step gets;
    -device cuda is previewed on a machine without CUDA; nothing is written."""
    from nnunet_mtl.recipes.plan import STEP_ENV_VARS
    workdir = tmp_path / "w"
    missing = recipe_cli("run", "thyroid_rlar", "--workdir", str(workdir), "--dry-run", check=False)
    assert missing.returncode == 2 and "needs --data ThyroidXL=PATH --data AIMI=PATH (" in missing.stderr
    for key in ("ThyroidXL", "AIMI"):
        (tmp_path / key).mkdir()
    out = recipe_cli("run", "thyroid_rlar", "--workdir", str(workdir), "--data", f"ThyroidXL={tmp_path / 'ThyroidXL'}",
                     "--data", f"AIMI={tmp_path / 'AIMI'}", "-device", "cuda", "--dry-run",
                     env={**{k: v for k, v in os.environ.items() if k != "nnUNet_mtl_cpu_amp"},
                          "CUDA_VISIBLE_DEVICES": "", "nnUNet_mtl_max_train_minutes": "30"}).stdout
    first, export, *rest = out.splitlines()
    assert first == "set -e" and export.startswith("export ")
    # nnU-Net's variables, then ours that are set (the time budget here: it travels to SLURM jobs too)
    assert [part.split("=")[0] for part in export.split()[1:]] == [*STEP_ENV_VARS, "nnUNet_mtl_max_train_minutes"]
    trainings = [line for line in rest if line.startswith("nnUNetv2_train ")]
    assert len(trainings) == 8 * 3 and all(line.endswith("-device cuda") for line in trainings)
    assert "-device cpu" not in out and not workdir.exists()


def test_only_selects_the_matching_steps_and_everything_they_wait_for():
    """--only: each pattern's steps and, transitively, the steps they wait for (deps and reads), in plan order; a
    pattern that matches nothing is refused with the ids it could have named."""
    steps = plan_steps(load_recipe("synthetic"), Context(workdir=Path("/w"), data={}, device="cpu"))
    ids = [s.id for s in select(steps, ["predict:seg_only:*"])]
    assert ids == ["convert:phantom", "plan:phantom", "split:phantom", "train:seg_only:0", "train:seg_only:1",
                   "predict:seg_only:test:0", "predict:seg_only:test:1", "predict:seg_only:test"]
    # two patterns: their union; a comparison brings every prediction and evaluation it reads
    ids = [s.id for s in select(steps, ["train:la:1", "compare:*"])]
    assert ids.index("train:la:1") < ids.index("compare:mtl_vs_others") and "report" not in ids
    assert {"evaluate:mtl:test", "evaluate:la:test", "train:la:0"} <= set(ids)
    assert [s.id for s in select(steps, ["*"])] == [s.id for s in steps]
    with pytest.raises(NnunetMtlError, match=r"--only 'train:nope:\*' matches no step; expected a pattern on the "
                                             r"step ids --dry-run prints \(such as 'train:"):
        select(steps, ["train:seg_only:0", "train:nope:*"])


@pytest.mark.slow
def test_only_runs_just_those_steps_and_a_bad_pattern_writes_nothing(tmp_path):
    """A real local run of one selected step (the conversion): it runs, planning does not, and no old report is
    printed; a pattern that matches nothing exits 2 with one line before the work folder is made."""
    workdir = tmp_path / "w"
    bad = recipe_cli("run", "synthetic", "--workdir", str(workdir), "--only", "train:nope", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--only 'train:nope' matches no step" in bad.stderr
    assert "Traceback" not in bad.stderr and not workdir.exists()
    (workdir / "report").mkdir(parents=True)
    (workdir / "report" / "report.md").write_text("an old report\n")
    out = recipe_cli("run", "synthetic", "--workdir", str(workdir), *ONE_WORKER, "--only", "convert:*").stdout
    assert "1 steps (--only)" in out and "an old report" not in out
    assert (workdir / "nnUNet_raw").is_dir() and not (workdir / "nnUNet_preprocessed").exists()
    assert list((workdir / "nnUNet_raw").glob("Dataset*/dataset.json"))


def test_trainings_are_fold_major_so_a_run_cut_part_way_has_whole_folds():
    """thyroid_cpu: every row's fold 0 before any row's fold 1 (a session's end leaves whole folds to compare)."""
    recipe = load_recipe("thyroid_cpu")
    steps = plan_steps(recipe, Context(workdir=Path("/w"), data={"DDTI": Path("/data/DDTI")}, device="cpu"))
    trains = [s.id for s in steps if s.kind == "train"]
    rows = [r.key for r in recipe.rows]
    assert rows == ["seg_only", "cls_only", "mtl", "guided", "rlar", "rlar_mid"]
    assert trains == [f"train:{r}:{k}" for k in (0, 1, 2) for r in rows]
    assert all(s.argv[s.argv.index("-tr") + 1].endswith("_cpu1k") for s in steps if s.kind == "train")
    assert "Class scheme: the six categories as recorded" in recipe.path.read_text()


def test_a_step_whose_every_later_use_is_done_is_not_run(tmp_path):
    """Evaluations are what a run is for: with a seed's evaluations in place (its checkpoints deleted to free disk, or
    only the evaluations restored from an archive) neither its trainings nor its predictions run again, while the
    other seeds', the conversions they need, the test set the averages and comparisons read (-d) and the report do;
    the dry run says which steps are not needed."""
    from nnunet_mtl.recipes.plan import not_needed
    recipe = load_recipe("breast_seeds")
    data = {"BrEaST": tmp_path / "BrEaST", "UDIAT": tmp_path / "UDIAT"}
    ctx = Context(workdir=tmp_path / "w", data=data, device="cpu")
    steps = plan_steps(recipe, ctx)
    rows = [r.key for r in recipe.rows]
    seed1 = {f"evaluate:{r}:udiat:seed1" for r in rows}
    skip = not_needed(steps, seed1)
    assert set(skip) == {f"{k}:{r}:{x}:seed1" for r in rows for k, x in (("train", 0), ("predict", "udiat"))}
    assert skip["train:mtl:0:seed1"] == "not needed: predict:mtl:udiat:seed1 done or not needed"
    everything = {s.id for s in steps if s.kind == "evaluate"}
    skip = not_needed(steps, everything)
    needed = {s.id for s in steps if s.id not in everything and s.id not in skip}
    # the seed averages read the test set's cases.csv, the report's galleries its images: it is converted again
    assert needed == {"convert:udiat", "report", *(f"seeds:{r}:udiat" for r in rows),
                      *(f"compare:{c.key}" for c in recipe.comparisons)}
    assert not_needed(steps, set()) == {}
    assert not set(skip) & everything  # a step done is never "not needed"
    for folder in data.values():
        folder.mkdir()
    for r in rows:
        marker = ctx.predictions(r, "udiat", 1) / "evaluation" / "summary.json"
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")
    dry = recipe_cli("run", "breast_seeds", "--workdir", str(ctx.workdir), "--data", f"BrEaST={data['BrEaST']}",
                     "--data", f"UDIAT={data['UDIAT']}", "--dry-run").stdout
    assert re.search(r"# \[\d+/\d+\] train:mtl:0:seed1 \(not needed: predict:mtl:udiat:seed1 done or not needed\)\n"
                     r"# nnUNet_results=",
                     dry)
    assert re.search(r"# \[\d+/\d+\] evaluate:mtl:udiat:seed1 \(done: ", dry)
    assert re.search(r"# \[\d+/\d+\] train:mtl:0:seed2\nnnUNet_results=", dry)
    # --only judges what is needed on the whole plan: seed 1's trainings stay not needed, seed 2's run
    dry = recipe_cli("run", "breast_seeds", "--workdir", str(ctx.workdir), "--data", f"BrEaST={data['BrEaST']}",
                     "--data", f"UDIAT={data['UDIAT']}", "--only", "train:mtl:*", "--dry-run").stdout
    assert re.search(r"# \[\d+/6\] train:mtl:0:seed1 \(not needed: predict:mtl:udiat:seed1 done or not needed\)\n",
                     dry)
    assert re.search(r"# \[\d+/6\] train:mtl:0:seed2\nnnUNet_results=", dry)


def test_the_report_draws_no_gallery_of_an_evaluation_kept_without_its_masks(tmp_path):
    """A work folder restored from the evaluations alone (the masks not kept): the report leaves that row's gallery
    out instead of stopping at its missing masks."""
    from nnunet_mtl.recipes.report import write_galleries
    recipe = load_recipe("breast_seeds")
    ctx = Context(workdir=tmp_path / "w", data={}, device="cpu")
    evaluation = ctx.predictions("mtl", "udiat", 0) / "evaluation"
    evaluation.mkdir(parents=True)
    (evaluation / "per_case.csv").write_text("case_id,dice\ncase_1,0.5\n")
    (ctx.raw / recipe.datasets["udiat"].folder / "imagesTs").mkdir(parents=True)  # the test set converted again
    assert write_galleries(recipe, ctx, tmp_path / "report" / "galleries") == {}


def test_archive_keeps_a_runs_results_without_models_or_images_and_replaces_nothing_unasked(tmp_path):
    workdir, out = tmp_path / "w", tmp_path / "kept"
    files = {"predictions/mtl/udiat/seed_1/evaluation/per_case.csv": "case_id,dice\nc1,0.5\n",
             "predictions/mtl/udiat/seed_1/evaluation/summary.json": "{}",
             "predictions/mtl/udiat/seed_1/class_predictions.csv": "case_id,predicted_class\nc1,1\n",
             "predictions/mtl/udiat/seed_1/c1.png": "mask", "predictions/mtl/udiat/evaluation/gallery.html": "<p>",
             "comparisons/birads/comparison.json": json.dumps({"rows": [dict(
                 metric="dice", label="Dice", mean_a=0.7, mean_b=0.6, difference=0.1, ci_low=0.05, ci_high=0.15,
                 test_short="Wilcoxon", p=0.01, p_holm=0.04, unit="patient", n_units=40,
                 run_a="/elsewhere/w/predictions/birads/udiat", run_b="/elsewhere/w/predictions/mtl/udiat")]}),
             "crossval/mtl/summary.json": "{}",
             "logs/steps.jsonl": "{}\n", "logs/provenance/train_mtl_0_seed1.json": "{}", "logs/train_mtl_0.log": "x",
             "report/report.md": "# r", "report/galleries/mtl__udiat.html": "<p>",
             "seeds/seed_1/nnUNet_results/D/fold_0/checkpoint_final.pth": "w", "nnUNet_raw/D/dataset.json": "{}",
             "recipe_run.json": "{}"}
    for rel, text in files.items():
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / rel).write_text(text)
    done = recipe_cli("archive", "--workdir", str(workdir), "-o", str(out)).stdout
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    # under predictions/ the evaluations only: a prediction folder's class_predictions.csv would mark it done
    assert kept == sorted(["comparisons/birads/comparison.json", "crossval/mtl/summary.json", "logs/steps.jsonl",
                           "logs/provenance/train_mtl_0_seed1.json", "report/report.md",
                           "predictions/mtl/udiat/seed_1/evaluation/per_case.csv",
                           "predictions/mtl/udiat/seed_1/evaluation/summary.json"])
    assert done.startswith(f"kept {len(kept)} files") and "recipe report NAME --workdir" in done
    # the report from the archive alone: no data folders remembered, the comparison's runs named by their rows
    # although the file holds another machine's paths
    shown = recipe_cli("report", "breast_seeds", "--workdir", str(out)).stdout
    assert "- seg_only on udiat: no evaluation yet (step seeds:seg_only:udiat)" in shown
    rows = json.loads((out / "report" / "report.json").read_text())["comparisons"][0]["rows"]
    assert (rows[0]["a"], rows[0]["b"]) == ("birads", "mtl")
    (workdir / "crossval/mtl/summary.json").write_text('{"new": 1}')
    again = recipe_cli("archive", "--workdir", str(workdir), "-o", str(out), check=False)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
    assert "exists (" in again.stderr and "--overwrite" in again.stderr
    assert (out / "crossval/mtl/summary.json").read_text() == "{}"  # nothing replaced unasked
    recipe_cli("archive", "--workdir", str(workdir), "-o", str(out), "--overwrite")
    assert (out / "crossval/mtl/summary.json").read_text() == '{"new": 1}'
    inside = recipe_cli("archive", "--workdir", str(workdir), "-o", str(workdir / "kept"), check=False)
    assert inside.returncode == 2 and "inside the work folder" in inside.stderr and not (workdir / "kept").exists()
    empty = recipe_cli("archive", "--workdir", str(tmp_path / "nothing"), "-o", str(tmp_path / "o"), check=False)
    assert empty.returncode == 2 and "does not exist" in empty.stderr


def test_the_local_launcher_scores_each_model_before_the_next_training():
    """A run cut part way leaves scored models: each seed's predictions and evaluation follow its training, the seed
    average and the comparisons follow their last inputs; with k folds each fold's validation score follows it.
    The plan's own order (the SLURM submission's) is unchanged, and every step comes after its dependencies."""
    from nnunet_mtl.recipes.plan import local_order
    recipe = load_recipe("breast_seeds")
    plan = plan_steps(recipe, Context(workdir=Path("/w"), data={"BrEaST": Path("/b"), "UDIAT": Path("/u")},
                                      device="cpu"))
    order = [s.id for s in local_order(plan)]
    assert sorted(order) == sorted(s.id for s in plan)
    assert all(order.index(d) < order.index(s.id) for s in plan for d in s.deps)
    first = order.index("train:seg_only:0:seed0")
    assert order[first:first + 4] == ["train:seg_only:0:seed0", "predict:seg_only:udiat:seed0",
                                      "evaluate:seg_only:udiat:seed0", "train:cls_only:0:seed0"]
    last = order.index("evaluate:seg_only:udiat:seed2")
    assert order[last + 1] == "seeds:seg_only:udiat" and order[-1] == "report"
    assert order.index("compare:mtl") == order.index("seeds:mtl:udiat") + 1  # seg_only and cls_only are averaged
    thyroid = plan_steps(load_recipe("thyroid_cpu"), Context(workdir=Path("/w"), data={"DDTI": Path("/d")},
                                                             device="cpu"))
    order = [s.id for s in local_order(thyroid)]
    assert order[order.index("train:mtl:1") + 1] == "validate:mtl:1"
    assert [s.id for s in thyroid if s.kind == "train"] == [i for i in order if i.startswith("train:")]
    # what is done already (not in the list) does not hold anything back
    assert [s.id for s in local_order([s for s in plan if s.id.endswith("seed2")])][:3] == \
        ["train:seg_only:0:seed2", "predict:seg_only:udiat:seed2", "evaluate:seg_only:udiat:seed2"]
