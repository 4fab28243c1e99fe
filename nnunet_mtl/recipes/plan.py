"""The grid of a recipe: every step is one command a user could type (``--dry-run`` prints them), with the steps it
waits for and the files that prove it done.

Work folder ``W`` (``--workdir``)::

    W/nnUNet_raw, W/nnUNet_preprocessed, W/nnUNet_results   nnU-Net's three folders (exported for every step)
    W/predictions/ROW/TESTSET/       nnunet_mtl predict (--per-fold with k folds: fold_K/ and ensemble/), and its
                                     evaluation/ (nnunet_mtl evaluate)
    W/crossval/ROW/                  k folds: fold_K/ (nnunet_mtl evaluate of the fold's own validation, the masks and
                                     classes nnU-Net's final validation wrote) and summary.json (their mean ± std)
    W/comparisons/KEY/               nnunet_mtl compare
    W/ablations/KEY/                 nnunet_mtl ablate-guidance (leave one guided feature out; --per-fold with k folds)
    W/logs/STEP.log                  each step's output; W/logs/steps.jsonl: when each step ran and how long
    W/report/                        nnunet_mtl recipe report
    W/recipe_run.json                the recipe's name, --data folders, device (a rerun and the report need no --data)

With ``seeds = [...]`` (one fold): seed S trains into W/seeds/seed_S/nnUNet_results (nnUNet_results and
nnUNet_mtl_seed set for its steps only), predicts into W/predictions/ROW/TESTSET/seed_S/, and
``nnunet_mtl average-seeds`` writes W/predictions/ROW/TESTSET/evaluation/ (the seed-averaged per-case values, which
the comparisons test, and the mean ± std over the seeds, which the report shows).

Steps, in order: ``convert:H``, ``holdout:H``, ``drop:H`` (datasets), ``plan:H`` and ``split:H`` (training datasets),
``train:ROW:K`` (fold-major: each fold, each row; ``train:ROW:0:seedS`` seed-major with seeds), with k folds
``validate:ROW:K`` and ``crossval:ROW`` (the cross-validation: each fold's model on its own validation cases, then
the mean ± std over the folds, as Salama et al. 2026 report their in-domain 3-fold CV), ``predict:ROW:TS``
and ``evaluate:ROW:TS`` (each row, each test set; ``...:seedS`` per seed, then ``seeds:ROW:TS``), ``compare:KEY``,
``ablate:KEY`` (each [[ablations]] entry: nnunet_mtl ablate-guidance of a clinically guided row on a test set),
``report``.

Provenance: when a step finishes, ``W/logs/provenance/STEP.json`` records its fingerprint (:func:`fingerprints`:
its command with the work folder, the data folders and the flags that change how, not what, it computes left out,
and the fingerprints of the steps it waits for). A rerun, a dry run and the report compare every done step's record
with the recipe as it is now: an edit that changes what a finished step computed (a split seed, a dataset option,
a trainer) is refused with one line naming the first such step and what changed, instead of reporting outputs made
by another protocol as this one's. A done step without a record (a run from before records existed) gets one.

Resuming: a step whose outputs are there is skipped (:func:`step_state`); a training with any checkpoint continues
with nnU-Net's ``--c`` (from checkpoint_final it only redoes the validation, from checkpoint_latest it goes on); a
prediction whose folder holds some masks continues with ``--continue_prediction``. An interrupted ablation is
redone from its start (ablate-guidance needs the embeddings of every test image, recorded only while it predicts;
it overwrites what the interrupted run wrote). A step is never redone because an earlier one was: delete a step's
outputs, and those of every later step made from them, to have it run again. A step that is not done but whose
every later use is done (or itself not needed) is not needed
(:func:`not_needed`): a training whose checkpoints were deleted to free disk, after its predictions were evaluated,
is not trained again, nor is a dataset converted again for it; the same holds for a work folder that holds only the
evaluations (copied from another machine, or restored from a results archive).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.evaluation.seeds import SEEDS_SUMMARY
from nnunet_mtl.recipes.schema import Recipe, trainer_class

CONFIGURATION = "2d"
# what a step sets on top of the environment it runs in (Context.env); the dry run exports the same
STEP_ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_def_n_proc",
                 "nnUNet_n_proc_DA", "PYTHONUNBUFFERED")
# ours, passed on to every step when set where the recipe runs (also to SLURM jobs, which get only what a step
# sets): the CPU precision (nnunet_mtl.precision) and the wall-clock budget of a training
OPTIONAL_STEP_ENV_VARS = ("nnUNet_mtl_cpu_amp", "nnUNet_mtl_max_train_minutes")


@dataclass
class Step:
    id: str
    kind: str                  # convert, holdout, drop, plan, split, train, validate, crossval, predict, evaluate,
    #                            seeds, compare, ablate, report
    title: str
    argv: list[str]
    deps: list[str] = field(default_factory=list)
    gpu: bool = False
    timeout_min: int = 60
    env: dict = field(default_factory=dict)   # set for this step only, on top of Context.env() (a seed's results)
    # steps whose outputs it reads besides its deps' (the dataset a -d names: its raw folder's labels and cases.csv; a
    # training's preprocessed data): its deps already lead to them, so they add nothing to its fingerprint; they count
    # for not_needed, and on SLURM as dependencies (in a restored work folder they may run again)
    reads: list[str] = field(default_factory=list)

    @property
    def waits_for(self) -> list[str]:
        """deps and reads, once each: what must be there before it runs (not_needed, SLURM's afterok)."""
        return list(dict.fromkeys([*self.deps, *self.reads]))

    def command_line(self) -> str:
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env.items()), *map(shlex.quote, self.argv)])


@dataclass(frozen=True)
class Context:
    """Where and how: the work folder, the user's data folders, the device, worker processes."""
    workdir: Path
    data: dict             # data key -> Path
    device: str            # cpu | cuda
    processes: int = 2

    @property
    def raw(self) -> Path:
        return self.workdir / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.workdir / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.workdir / "nnUNet_results"

    def predictions(self, row: str, test_set: str, seed: int | None = None) -> Path:
        """A row's predictions of a test set; with a seed, that seed's model's (the row's folder then holds the
        seed average's evaluation/)."""
        base = self.workdir / "predictions" / row / test_set
        return base if seed is None else base / f"seed_{seed}"

    def results_for(self, seed: int | None) -> Path:
        """nnU-Net's results folder of a seed's trainings (W/seeds/seed_S/nnUNet_results), or the shared one."""
        return self.results if seed is None else self.workdir / "seeds" / f"seed_{seed}" / "nnUNet_results"

    def seed_env(self, seed: int | None) -> dict:
        """What a step of one seed sets on top of env(): its own results folder and the trainer's seed."""
        from nnunet_mtl.trainers.mtl import SEED_VAR
        return {} if seed is None else {"nnUNet_results": str(self.results_for(seed)), SEED_VAR: str(seed)}

    def comparison(self, key: str) -> Path:
        return self.workdir / "comparisons" / key

    def crossval(self, row: str) -> Path:
        """A row's cross-validation: fold_K/ (each fold's validation scored) and summary.json (over the folds)."""
        return self.workdir / "crossval" / row

    def ablation(self, key: str) -> Path:
        return self.workdir / "ablations" / key

    def log(self, step_id: str) -> Path:
        return self.workdir / "logs" / (step_id.replace(":", "_") + ".log")

    def provenance(self, step_id: str) -> Path:
        """What produced a finished step's outputs (:func:`fingerprints`)."""
        return self.workdir / "logs" / "provenance" / (step_id.replace(":", "_") + ".json")

    def model(self, recipe: Recipe, row_key: str, seed: int | None = None) -> Path:
        row = recipe.row(row_key)
        dataset = recipe.datasets[row.dataset]
        return self.results_for(seed) / dataset.folder / f"{row.trainer}__nnUNetPlans__{CONFIGURATION}"

    def env(self) -> dict:
        """The variables every step sets on top of the environment it runs in: nnU-Net's folders, our trainers for
        nnU-Net's lookup, worker counts, unbuffered output, and our precision and time budget where set. Only these
        travel with a job: on a SLURM node the rest (CUDA_VISIBLE_DEVICES, SLURM_*, what ``--slurm-setup`` loads) is
        the node's own."""
        from nnunet_mtl.paths import command_env
        full = command_env(self.workdir, self.device, self.processes)
        return {**{k: full[k] for k in STEP_ENV_VARS},
                **{k: os.environ[k] for k in OPTIONAL_STEP_ENV_VARS if os.environ.get(k)}}


def trained_datasets(recipe: Recipe) -> list[str]:
    """Handles of the datasets some row trains on, in the recipe's order."""
    used = {r.dataset for r in recipe.rows}
    return [h for h in recipe.datasets if h in used]


def plan_steps(recipe: Recipe, ctx: Context) -> list[Step]:
    """Every step of the recipe in an order that respects their dependencies."""
    steps: list[Step] = []
    timeout = recipe.timeout_min
    n = str(ctx.processes)
    rank = {"convert": 0, "holdout": 1, "drop": 2}  # a holdout copy is made from a conversion, drop-masks from either
    for handle, ds in sorted(recipe.datasets.items(), key=lambda item: rank[item[1].kind]):
        if ds.converter is not None:
            argv = ["nnunet_mtl", "convert", ds.converter]
            if ds.source is not None:
                argv.append(str(ctx.data[ds.source]))
            argv += ["-d", str(ds.id), "--name", ds.name]
            if ds.role == "test" and ds.converter != "synthetic":
                argv += ["--as", "test"]
            argv += [*ds.options, "--no-progress"]
            steps.append(Step(f"convert:{handle}", "convert", f"convert {ds.folder}", argv, timeout_min=timeout))
        elif ds.kind == "holdout":
            origin = recipe.datasets[ds.from_]
            how = (["--fraction", f"{ds.test_fraction:g}"] if ds.test_fraction is not None else
                   ["--per-class", str(ds.test_per_class)] + (["--classes", *ds.test_classes] if ds.test_classes
                                                              else []))
            argv = ["nnunet_mtl", "holdout", "-d", str(origin.id), *how, "--into", str(ds.id), "--name", ds.name,
                    "--seed", str(ds.seed)]
            steps.append(Step(f"holdout:{handle}", "holdout", f"{ds.folder}: a test set held out of {origin.folder}",
                              argv, deps=[_made(recipe, ds.from_)], timeout_min=timeout))
        else:
            origin = recipe.datasets[ds.from_]
            argv = ["nnunet_mtl", "drop-masks", "-d", str(origin.id), "--keep", f"{ds.keep:g}", "--into", str(ds.id),
                    "--name", ds.name, "--as", ds.as_kind, "--seed", str(ds.seed)]
            steps.append(Step(f"drop:{handle}", "drop", f"{ds.folder}: masks of {ds.keep:.0%} of the patients of "
                              f"{origin.folder}", argv, deps=[_made(recipe, ds.from_)], timeout_min=timeout))
    made = {h: _made(recipe, h) for h in recipe.datasets}
    for handle in trained_datasets(recipe):
        ds = recipe.datasets[handle]
        steps.append(Step(f"plan:{handle}", "plan", f"plan and preprocess {ds.folder}",
                          ["nnUNetv2_plan_and_preprocess", "-d", str(ds.id), "-c", CONFIGURATION, "-np", n,
                           "-npfp", n, "--verify_dataset_integrity"], deps=[made[handle]], timeout_min=timeout))
        split = recipe.split
        if split.kind == "file":  # a given split: the file gives the folds, nothing is drawn
            how = ["--from", str(split.file)]
        elif split.kind == "kfold":
            how = ["-k", str(split.folds), "--seed", str(split.seed)]
        else:
            how = ["--holdout", f"{split.fraction:g}"] + (["--repeats", str(split.repeats)] if split.repeats > 1
                                                          else []) + ["--seed", str(split.seed)]
        steps.append(Step(f"split:{handle}", "split", f"{split.kind} split of {ds.folder}",
                          ["nnunet_mtl", "split", "-d", str(ds.id), *how],
                          deps=[f"plan:{handle}"], timeout_min=timeout))
    folds = recipe.split.fold_ids
    gpu = ctx.device == "cuda"
    # fold-major: every row's fold 0 before any row's fold 1, so that a run stopped part-way (a session's end, a
    # budget) has whole folds to compare rather than whole rows
    # with seeds (one fold), seed-major likewise
    for k, seed in itertools.product(folds, recipe.seeds or (None,)):
        for row in recipe.rows:
            ds = recipe.datasets[row.dataset]
            argv = ["nnUNetv2_train", str(ds.id), CONFIGURATION, str(k), "-tr", row.trainer, "-device", ctx.device]
            if training_started(ctx.model(recipe, row.key, seed) / f"fold_{k}"):
                argv.append("--c")
            steps.append(Step(f"train:{row.key}:{k}{_seed_suffix(seed)}", "train",
                              f"train {row.label} ({row.trainer}), fold {k}"
                              + (f", seed {seed}" if seed is not None else ""), argv,
                              deps=[f"split:{row.dataset}"], gpu=gpu, timeout_min=timeout, env=ctx.seed_env(seed),
                              reads=[f"plan:{row.dataset}"]))
    if len(folds) > 1:  # k folds (not seeds, which have one): the cross-validation
        for row in recipe.rows:
            steps += _crossval(recipe, ctx, row, made[row.dataset])
    for row in recipe.rows:
        for ts in recipe.test_sets:
            for seed in recipe.seeds or (None,):
                steps += _predict_and_evaluate(recipe, ctx, row, ts, gpu, made[ts.dataset], seed)
            if not recipe.seeds:
                continue
            test = recipe.datasets[ts.dataset]
            runs = [str(ctx.predictions(row.key, ts.key, seed)) for seed in recipe.seeds]
            steps.append(Step(f"seeds:{row.key}:{ts.key}", "seeds", f"average {row.label} on {ts.label} over the "
                              f"seeds {', '.join(map(str, recipe.seeds))}",
                              ["nnunet_mtl", "average-seeds", *runs, "-d", str(test.id), "-o",
                               str(ctx.predictions(row.key, ts.key) / "evaluation"), "--overwrite"],
                              deps=[f"evaluate:{row.key}:{ts.key}{_seed_suffix(seed)}" for seed in recipe.seeds],
                              timeout_min=timeout, reads=[made[ts.dataset]]))
    for c in recipe.comparisons:
        test = recipe.datasets[recipe.test_set(c.test_set).dataset]
        runs = [str(ctx.predictions(r, c.test_set)) for r in (c.a, *c.b)]
        done = "seeds" if recipe.seeds else "evaluate"  # with seeds: the seed averages are compared
        steps.append(Step(f"compare:{c.key}", "compare", f"compare {c.a} with {', '.join(c.b)} on {c.test_set}",
                          ["nnunet_mtl", "compare", *runs, "-d", str(test.id), "-o", str(ctx.comparison(c.key))],
                          deps=[f"{done}:{r}:{c.test_set}" for r in (c.a, *c.b)], timeout_min=timeout,
                          reads=[made[recipe.test_set(c.test_set).dataset]]))
    for a in recipe.ablations:
        row, ts = recipe.row(a.row), recipe.test_set(a.test_set)
        ds, test = recipe.datasets[row.dataset], recipe.datasets[ts.dataset]
        # --cases: the reference classes of the test set's images (its own cases.csv, not the training dataset's)
        argv = ["nnunet_mtl", "ablate-guidance", "-i", str(ctx.raw / test.folder / "imagesTs"), "-o",
                str(ctx.ablation(a.key)), "-d", str(ds.id), "-c", CONFIGURATION, "-tr", row.trainer,
                "-f", *map(str, folds), "-chk", recipe.checkpoint, "-device", ctx.device, "-npp", n, "-nps", n,
                "--disable_progress_bar", "--cases", str(ctx.raw / test.folder / "cases.csv")]
        if len(folds) > 1:
            argv.append("--per-fold")
        steps.append(Step(f"ablate:{a.key}", "ablate", f"leave one guided feature out: {row.label} on {ts.label}",
                          argv, deps=[made[ts.dataset]] + [f"train:{row.key}:{k}" for k in folds], gpu=gpu,
                          timeout_min=timeout))
    steps.append(Step("report", "report", "report", ["nnunet_mtl", "recipe", "report", str(recipe.path if
                                                     recipe.path.parent != _shipped_folder() else recipe.name),
                                                     "--workdir", str(ctx.workdir)],
                      deps=[s.id for s in steps if s.kind in ("evaluate", "seeds", "crossval", "compare", "ablate")],
                      timeout_min=timeout, reads=sorted({made[ts.dataset] for ts in recipe.test_sets})))
    return steps


def _seed_suffix(seed: int | None) -> str:
    return "" if seed is None else f":seed{seed}"


def step_seed(step_id: str) -> int | None:
    """The seed a step id names (``train:mtl:0:seed2`` -> 2), None for an unseeded step."""
    last = step_id.rsplit(":", 1)[-1]
    return int(last[4:]) if last.startswith("seed") and last[4:].isdigit() else None


def _predict_and_evaluate(recipe: Recipe, ctx: Context, row, ts, gpu: bool, test_made: str,
                          seed: int | None = None) -> list[Step]:
    """A row's prediction(s) of a test set and their evaluation (one seed's models with a seed)."""
    n, timeout, folds = str(ctx.processes), recipe.timeout_min, recipe.split.fold_ids
    ds, test = recipe.datasets[row.dataset], recipe.datasets[ts.dataset]
    suffix, env = _seed_suffix(seed), ctx.seed_env(seed)
    which = f" (seed {seed})" if seed is not None else ""
    out = ctx.predictions(row.key, ts.key, seed)
    if segmentation_only(row.trainer):  # nnunet_mtl predict adds class probabilities: no head, nnU-Net's alone
        predictions = _nnunet_predictions(recipe, ctx, row, ts, gpu, test_made, seed)
    else:
        argv = ["nnunet_mtl", "predict", "-i", str(ctx.raw / test.folder / "imagesTs"), "-o", str(out),
                "-d", str(ds.id), "-c", CONFIGURATION, "-tr", row.trainer, "-f", *map(str, folds),
                "-chk", recipe.checkpoint, "-device", ctx.device, "-npp", n, "-nps", n, "--disable_progress_bar"]
        if len(folds) > 1:
            argv.append("--per-fold")
        if has_lesion_map(row.trainer):
            argv.append("--save-attention")
        if prediction_started(out):
            argv.append("--continue_prediction")
        predictions = [Step(f"predict:{row.key}:{ts.key}{suffix}", "predict",
                            f"predict {ts.label} with {row.label}{which}", argv,
                            deps=[test_made] + [f"train:{row.key}:{k}{suffix}" for k in folds], gpu=gpu,
                            timeout_min=timeout, env=env)]
    evaluate = Step(f"evaluate:{row.key}:{ts.key}{suffix}", "evaluate",
                    f"evaluate {row.label} on {ts.label}{which}",
                    ["nnunet_mtl", "evaluate", "-pred", str(out), "-d", str(test.id), "-np", n]
                    + (["--attention"] if has_lesion_map(row.trainer) else []),
                    deps=[p.id for p in predictions], timeout_min=timeout, reads=[test_made])
    return [*predictions, evaluate]


def _crossval(recipe: Recipe, ctx: Context, row, made: str) -> list[Step]:
    """Each fold's model on its own validation cases (the masks and classes nnU-Net's final validation wrote into
    fold_K/validation, scored against labelsTr and cases.csv by nnunet_mtl evaluate), then the mean ± std and t-based
    95 % CI over the folds (evaluate --aggregate). Written under W/crossval/ROW, nothing into nnUNet_results."""
    n, timeout, folds = str(ctx.processes), recipe.timeout_min, recipe.split.fold_ids
    ds, out = recipe.datasets[row.dataset], ctx.crossval(row.key)
    steps = [Step(f"validate:{row.key}:{k}", "validate", f"score {row.label}'s fold {k} model on its validation cases",
                  ["nnunet_mtl", "evaluate", "-pred", str(ctx.model(recipe, row.key) / f"fold_{k}" / "validation"),
                   "-d", str(ds.id), "-o", str(out / f"fold_{k}"), "-np", n],
                  deps=[f"train:{row.key}:{k}"], timeout_min=timeout, reads=[made]) for k in folds]
    steps.append(Step(f"crossval:{row.key}", "crossval", f"cross-validation of {row.label}: mean ± std over the "
                      f"{len(folds)} folds", ["nnunet_mtl", "evaluate", "--aggregate",
                                              *(str(out / f"fold_{k}" / "summary.json") for k in folds),
                                              "-o", str(out / "summary.json"), "--overwrite"],
                      deps=[s.id for s in steps], timeout_min=timeout))
    return steps


def ablation_file(recipe: Recipe) -> str:
    """What ablate-guidance writes last in its output folder: the mean ± std over folds (k folds, --per-fold) or
    the one model's table."""
    return "guidance_ablation_per_fold.json" if len(recipe.split.fold_ids) > 1 else "guidance_ablation.json"

def _made(recipe: Recipe, handle: str) -> str:
    """The step that writes a dataset."""
    kind = recipe.datasets[handle].kind
    return f"{kind}:{handle}"


def has_lesion_map(trainer: str) -> bool:
    """Whether the trainer's model predicts a lesion map besides the mask (Fan et al.'s LA-Net): its rows are
    predicted with --save-attention and evaluated with --attention (attention_iou, Fan et al.'s JSI)."""
    cls = trainer_class(trainer)
    return cls is not None and getattr(getattr(cls, "head", None), "kind", None) == "lesion_aware"


def segments(trainer: str) -> bool:
    """Whether the trainer's model predicts masks (a classification-only one, nnUNetTrainerClsOnly, does not)."""
    return bool(getattr(trainer_class(trainer), "segments", True))


def segmentation_only(trainer: str) -> bool:
    """Whether the trainer has no classification head (its model predicts masks only: nnUNetv2_predict): ours
    without one (nnUNetTrainerSegOnly*) and nnU-Net's own (nnUNetTrainer, its variants, nnUNet_extTrainer's)."""
    cls = trainer_class(trainer)
    return cls is not None and getattr(getattr(cls, "head", None), "kind", "none") == "none"


def _nnunet_predictions(recipe: Recipe, ctx: Context, row, ts, gpu: bool, test_made: str,
                        seed: int | None = None) -> list[Step]:
    """nnUNetv2_predict for a segmentation-only row: with k folds each fold's model alone into OUT/fold_K and all
    of them into OUT/ensemble (the layout nnunet_mtl evaluate reads as per-fold), with one fold into OUT (one
    seed's model with a seed)."""
    ds, test = recipe.datasets[row.dataset], recipe.datasets[ts.dataset]
    out, folds = ctx.predictions(row.key, ts.key, seed), recipe.split.fold_ids
    seeded = _seed_suffix(seed)
    n = str(ctx.processes)
    runs = [(f":{k}", out / f"fold_{k}", [k]) for k in folds] + [("", out / "ensemble", folds)] if len(folds) > 1 \
        else [("", out, folds)]
    steps = []
    for suffix, folder, use in runs:
        argv = ["nnUNetv2_predict", "-i", str(ctx.raw / test.folder / "imagesTs"), "-o", str(folder), "-d",
                str(ds.id), "-c", CONFIGURATION, "-tr", row.trainer, "-f", *map(str, use), "-chk", recipe.checkpoint,
                "-device", ctx.device, "-npp", n, "-nps", n, "--disable_progress_bar"]
        if prediction_started(folder):
            argv.append("--continue_prediction")
        which = (f"fold {use[0]}'s model" if len(use) == 1 and len(folds) > 1 else
                 f"seed {seed}'s model" if seed is not None else "the fold ensemble")
        steps.append(Step(f"predict:{row.key}:{ts.key}{suffix}{seeded}", "predict",
                          f"predict {ts.label} with {row.label} ({which}; masks only: nnUNetv2_predict)", argv,
                          deps=[test_made] + [f"train:{row.key}:{k}{seeded}" for k in use], gpu=gpu,
                          timeout_min=recipe.timeout_min, env=ctx.seed_env(seed)))
    return steps


def _shipped_folder() -> Path:
    return Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------ state
def training_started(fold: Path) -> bool:
    return any((fold / c).is_file() for c in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"))


def prediction_started(out: Path) -> bool:
    return out.is_dir() and any(out.rglob("*.png"))


def _dataset_json(folder: Path) -> dict:
    try:
        return json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}


def local_order(steps: list[Step]) -> list[Step]:
    """The order the local launcher runs ``steps`` (and the dry run prints them): the plan's, except that whatever a
    finished training makes possible (its fold's validation score, its predictions and their evaluation, a seed
    average or comparison whose last input that was) runs before the next training. A run cut part way (a session's
    end, a budget) so leaves every finished model scored rather than trained and unused. Steps outside ``steps`` are
    taken as done; ``steps`` in plan order."""
    ids = {s.id for s in steps}
    placed: set[str] = set()
    rest, out = list(steps), []
    while rest:
        ready = [s for s in rest if all(d not in ids or d in placed for d in s.deps)]
        pick = next((s for s in ready if s.kind != "train"), ready[0])
        rest.remove(pick)
        placed.add(pick.id)
        out.append(pick)
    return out


def select(steps: list[Step], patterns: list[str]) -> list[Step]:
    """The steps whose id matches one of the shell-style ``patterns`` (``--only``: ``*`` any text, ``?`` one
    character, ``[...]`` a set) and every step they wait for, directly or through others, in plan order. A pattern
    that matches no step is refused before anything runs, naming the three ids closest to it."""
    from difflib import get_close_matches
    from fnmatch import fnmatchcase
    by_id = {s.id: s for s in steps}
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [s.id for s in steps if fnmatchcase(s.id, pattern)]
        if not hits:
            near = get_close_matches(pattern, list(by_id), n=3, cutoff=0.0)
            raise NnunetMtlError(f"--only {pattern!r} matches no step; expected a pattern on the step ids --dry-run "
                                 f"prints (such as {', '.join(map(repr, near))}; '*' for any text)")
        chosen.update(hits)
    stack = list(chosen)
    while stack:
        for dep in by_id[stack.pop()].waits_for:
            if dep in by_id and dep not in chosen:
                chosen.add(dep)
                stack.append(dep)
    return [s for s in steps if s.id in chosen]


def selected(steps: list[Step], only: set[str] | None) -> list[Step]:
    """The steps a run shows and counts: all of them, or with ``only`` (the ids :func:`select` gave) those."""
    return [s for s in steps if only is None or s.id in only]


NOT_NEEDED = "not needed: "  # how not_needed's reasons start (the launcher and the dry run print them as they are)


def not_needed(steps: list[Step], done: dict) -> dict[str, str]:
    """{step id: why} for the steps that are not done but need not run: every step that waits for one (directly, or
    through other steps that need not run either) is done. Outputs are what a run is for, so a step is needed only
    when it has no later use (a comparison, the report) or a later use that is itself needed; a step ``done`` holds
    is never in the answer. ``steps`` in plan order (a step's dependencies before it)."""
    users: dict[str, list[str]] = {s.id: [] for s in steps}
    for s in steps:
        for d in s.waits_for:
            if d in users:
                users[d].append(s.id)
    needed: set[str] = set()
    skip: dict[str, str] = {}
    for s in reversed(steps):  # every user of a step comes after it
        if s.id in done:
            continue
        if not users[s.id] or any(u in needed for u in users[s.id]):
            needed.add(s.id)
        else:
            skip[s.id] = (f"{NOT_NEEDED}{', '.join(users[s.id][:3])}{' ...' if len(users[s.id]) > 3 else ''} done "
                          f"or not needed")
    return skip


def step_state(step: Step, recipe: Recipe, ctx: Context) -> tuple[bool, str]:
    """(done, why): whether the step's outputs are all there, naming the file that shows it (or what is missing)."""
    kind, parts, seed = step.kind, step.id.split(":"), step_seed(step.id)
    if kind in ("convert", "drop", "holdout"):
        ds = recipe.datasets[parts[1]]
        marker = ctx.raw / ds.folder / {"convert": "dataset.json", "drop": "partial_report.json",
                                        "holdout": "holdout_report.json"}[kind]
        return has_content(marker), str(marker)
    if kind == "plan":
        ds = recipe.datasets[parts[1]]
        folder = ctx.preprocessed / ds.folder
        plans = folder / "nnUNetPlans.json"
        expected = _dataset_json(ctx.raw / ds.folder).get("numTraining")
        data = folder / f"nnUNetPlans_{CONFIGURATION}"
        have = len(list(data.glob("*.pkl"))) if data.is_dir() else 0
        done = has_content(plans) and expected is not None and have == expected
        return done, f"{plans} and {have} of {expected} preprocessed cases in {data}"
    if kind == "split":
        ds = recipe.datasets[parts[1]]
        path = ctx.preprocessed / ds.folder / "splits_final.json"
        if not has_content(path, parse=False):
            return False, str(path)
        try:
            folds = len(json.loads(path.read_text()))
        except ValueError:
            raise NnunetMtlError(f"{path} is not readable JSON; remove it to have the split written again") from None
        if folds < len(recipe.split.fold_ids):
            raise NnunetMtlError(f"{path} has {folds} fold(s) but the recipe's split has {len(recipe.split.fold_ids)}"
                                 f"; expected the recipe's split (remove the file, and any trained folds, to redo it)")
        return True, str(path)
    if kind == "train":
        fold = ctx.model(recipe, parts[1], seed) / f"fold_{parts[2]}"
        # the final validation's last file: nnU-Net's summary.json, or for a classification-only model (no masks to
        # score) our class_predictions.csv
        last = "summary.json" if segments(recipe.row(parts[1]).trainer) else "class_predictions.csv"
        final, summary = fold / "checkpoint_final.pth", fold / "validation" / last
        return has_content(final) and has_content(summary), f"{final} and {summary}"
    if kind == "predict" and step.argv[0] == "nnUNetv2_predict":  # a segmentation-only row: one mask per image
        folder = Path(step.argv[step.argv.index("-o") + 1])
        inputs = Path(step.argv[step.argv.index("-i") + 1])
        expected = len(list(inputs.glob("*_0000.png"))) if inputs.is_dir() else None
        have = len([p for p in folder.glob("*.png")]) if folder.is_dir() else 0
        return expected is not None and expected > 0 and have == expected, \
            f"{have} of {expected if expected is not None else '?'} masks in {folder}"
    if kind == "predict":
        out = ctx.predictions(parts[1], parts[2], seed)
        if len(recipe.split.fold_ids) == 1:
            return has_content(out / "class_predictions.csv"), str(out / "class_predictions.csv")
        marker = out / "ensemble" / "class_predictions.csv"  # per-fold: the ensemble is written last
        return has_content(marker) and has_content(out / "per_fold.json"), str(marker)
    if kind == "seeds":
        marker = ctx.predictions(parts[1], parts[2]) / "evaluation" / SEEDS_SUMMARY
        return has_content(marker), str(marker)
    if kind in ("validate", "crossval"):
        marker = ctx.crossval(parts[1]) / (f"fold_{parts[2]}" if kind == "validate" else "") / "summary.json"
        return has_content(marker), str(marker)
    if kind == "evaluate":
        out = ctx.predictions(parts[1], parts[2], seed) / "evaluation"
        marker = out / ("per_fold_summary.json" if len(recipe.split.fold_ids) > 1 else "summary.json")
        return has_content(marker), str(marker)
    if kind == "compare":
        marker = ctx.comparison(parts[1]) / "comparison.json"
        return has_content(marker), str(marker)
    if kind == "ablate":
        marker = ctx.ablation(parts[1]) / ablation_file(recipe)
        return has_content(marker), str(marker)
    return False, "always run"


def has_content(path: Path, parse: bool = True) -> bool:
    """A marker that proves a step done: a non-empty file; a JSON file that parses to an object or a list; a CSV with
    a header and at least one row. A file emptied or cut short (a kill, a full disk, a hand edit) does not count."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return False
        if not parse:
            return True
        if path.suffix == ".json":
            return isinstance(json.loads(path.read_text(encoding="utf-8")), (dict, list))
        if path.suffix == ".csv":
            with open(path, encoding="utf-8") as f:
                return sum(1 for line, _ in zip(f, range(2)) if line.strip()) == 2
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return True


# flags that change how a step runs, not what it computes: left out of its fingerprint (with their values)
_HOW_FLAGS = {"-np": 1, "-npp": 1, "-nps": 1, "-npfp": 1, "-j": 1, "-device": 1, "--continue_prediction": 0,
              "--disable_progress_bar": 0, "--no-progress": 0, "--c": 0, "--overwrite": 0}


def _normalized(step: Step, ctx: Context) -> list[str]:
    """The step's command and seed variables with the work folder as ``<W>``, each data folder as ``<data:KEY>``
    and the how-flags left out: what decides the step's outputs, wherever the run lives."""
    places = sorted([(str(ctx.workdir), "<W>"), *((str(p), f"<data:{k}>") for k, p in ctx.data.items())],
                    key=lambda kv: -len(kv[0]))

    def place(token: str) -> str:
        for path, name in places:
            if token == path or token.startswith(path + os.sep):
                return name + token[len(path):]
        return token
    out, skip = [], 0
    for token in step.argv:
        if skip:
            skip -= 1
            continue
        if token in _HOW_FLAGS:
            skip = _HOW_FLAGS[token]
            continue
        out.append(place(token))
    return out + [f"{k}={place(v)}" for k, v in sorted(step.env.items())]


def fingerprints(steps: list[Step], ctx: Context) -> dict[str, dict]:
    """{step id: {"fingerprint", "command"}}: the hash of the step's normalized command (:func:`_normalized`) and of
    its dependencies' fingerprints, so that a change upstream (a split seed) reaches every step made from it."""
    out: dict[str, dict] = {}
    for step in steps:  # in order: a step's dependencies come before it
        command = _normalized(step, ctx)
        text = json.dumps([command, [out[d]["fingerprint"] for d in step.deps if d in out]])
        out[step.id] = {"fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16], "command": command}
    return out


def _what_changed(before: list[str], now: list[str]) -> str:
    """The tokens of a command that differ between two runs, shortly."""
    gone = [t for t in before if t not in now]
    new = [t for t in now if t not in before]
    if not gone and not new:
        return "a step it depends on changed"
    return f"was {' '.join(gone[:6]) or '(nothing)'}, now {' '.join(new[:6]) or '(nothing)'}"


def check_provenance(steps: list[Step], done: dict, ctx: Context, adopt: bool = True) -> int:
    """Every done step's recorded fingerprint against the recipe as it is now (module docstring); the first step
    that differs is refused with one line. A done step without a record gets one when ``adopt`` (the outputs of a
    run from before records existed are taken as the recipe's). Returns how many records were adopted."""
    prints = fingerprints(steps, ctx)
    adopted = 0
    for step in steps:
        if step.id not in done:
            continue
        path = ctx.provenance(step.id)
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            recorded = None
        if not isinstance(recorded, dict) or "fingerprint" not in recorded:
            if adopt:
                write_provenance(path, prints[step.id])
                adopted += 1
            continue
        if recorded["fingerprint"] != prints[step.id]["fingerprint"]:
            raise NnunetMtlError(
                f"step {step.id} is done, but by another protocol than the recipe's now "
                f"({_what_changed(recorded.get('command') or [], prints[step.id]['command'])}); expected the recipe "
                f"as it ran (undo the edit), another --workdir, or its outputs removed to redo it ({path} records "
                f"what made them)")
    return adopted


def write_provenance(path: Path, record: dict) -> None:
    """A step's provenance record, atomically (written by the step's job when its command succeeded)."""
    from nnunet_mtl.atomic import write_text_atomic
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(record, indent=1), path)


def executable(argv: list[str]) -> list[str]:
    """argv with its command taken from this Python's environment (the dry run prints the short names, which are
    the same commands on the user's PATH)."""
    from nnunet_mtl.paths import venv_command
    return [venv_command(argv[0]), *argv[1:]]
