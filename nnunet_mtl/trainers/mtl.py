"""nnUNetTrainerMTL: nnU-Net's trainer with a classification head, and the base every nnunet_mtl trainer composes.

This is the one place that overrides nnU-Net's ``train_step``, ``validation_step`` and epoch hooks. A trainer is
a declaration of five seams (docs/extending.md):

- ``head``: the head's config (:mod:`nnunet_mtl.seams.heads`); ``num_classes`` comes from the dataset, fields a
  term needs (``head_params``) are filled in; written into the plans, so the predictor rebuilds it;
- ``terms`` and ``loss_weights``: the loss terms (:mod:`nnunet_mtl.seams.terms`) and their weights (``loss_weights``
  dicts are merged along the class hierarchy, so a variant names only what it changes);
- ``backward``: the backward rule (:mod:`nnunet_mtl.seams.backward`);
- ``stages``: the staged schedule (:mod:`nnunet_mtl.seams.stages`);
- ``schedule``: nnU-Net attributes set after nnU-Net's ``__init__`` (``num_epochs``, ``initial_lr``, ...; merged
  along the class hierarchy like ``loss_weights``), plus ``optimizer_name`` (``sgd``: nnU-Net's SGD with Nesterov
  momentum 0.99; ``adamw``) and ``fixed_batch_size``.

Found by nnU-Net's own ``nnUNetv2_train`` / ``nnUNetv2_predict`` through ``nnUNet_extTrainer`` (see README).
Everything else is nnU-Net's: planner, data loader, augmentation (except the ultrasound-aware mirroring and
rotation below), deep supervision, poly learning rate, AMP, checkpoints, final validation.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from time import time
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_mtl import __version__, precision
from nnunet_mtl.atomic import atomic_path, remove_stale_temporaries
from nnunet_mtl.dataset.case_table import CaseTable, copy_if_changed
from nnunet_mtl.dataset.contract import read_class_labels
from nnunet_mtl.dataset.splits import (DEFAULT_NUM_FOLDS, check_splits_grouped, describe_splits,
                                       grouped_stratified_splits, read_splits, write_splits)
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.outputs import check_output_file, check_output_folder
from nnunet_mtl.processes import children_die_with_this_process
from nnunet_mtl.evaluation.classification import classification_metrics
from nnunet_mtl.methods.multitask import BottleneckMLPConfig, Classification, Segmentation
from nnunet_mtl.methods.single_task import NO_HEAD
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet, head_config_from_plans
from nnunet_mtl.seams.backward import WeightedSum, unwrap
from nnunet_mtl.seams.distributed import averages_gradients_itself, rule_step
from nnunet_mtl.seams.stages import Stage, StagedLRScheduler, resolve_stages, stage_at
from nnunet_mtl.seams.terms import Batch, Setup, check_weights, compute_losses, weighted_total
from nnunet_mtl.trainers.progress_logger import MultitaskLocalLogger
from nnunet_mtl.trainers.tensorboard_logger import TensorBoardLogger, tensorboard_enabled
from nnunet_mtl.trainers.schedules import (BreastPaperSchedule, CPU1kSchedule, CPU4kSchedule, CPUSchedule, DemoSchedule,
                                          FanPaperSchedule, ThyroidPaperSchedule, TinySchedule)


def _check_results_folder(plans: dict) -> None:
    """nnUNet_results/DatasetNNN_X can be written (nnU-Net's __init__ creates the trainer's folder in it and would
    fail with a traceback on a file or a read-only mount)."""
    results = os.environ.get("nnUNet_results")
    if results and plans.get("dataset_name"):
        try:
            check_output_folder(Path(results) / plans["dataset_name"], "nnUNet_results folder")
        except NnunetMtlError as e:
            fail(str(e))


def _folders_nnunet_creates(plans: dict, trainer: str, configuration: str, fold) -> list[Path]:
    """The results folders (dataset, trainer, fold) that do not exist yet: nnU-Net's __init__ creates them and
    its log file, before any of our checks can run."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        fold_folder = Path(get_output_folder(plans["dataset_name"], trainer, plans["plans_name"], configuration,
                                             fold))
    except Exception:  # nnUNet_results unset or the dataset unknown: nnU-Net reports it itself
        return []
    return [f for f in (fold_folder.parent.parent, fold_folder.parent, fold_folder) if not f.exists()]


def _remove_start_up_folders(created: list[Path], log_file) -> None:
    """Undo nnU-Net's start-up after a refusal: its log file, then the folders it created, each only when empty
    (anything else in them is left alone)."""
    if log_file and Path(log_file).parent in created:
        Path(log_file).unlink(missing_ok=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def pretrained_weights_argument(argv: list[str]) -> str | None:
    """The file nnUNetv2_train's ``-pretrained_weights`` names (nnU-Net passes it to run_training, not to the
    trainer), or None."""
    if "-pretrained_weights" in argv:
        i = argv.index("-pretrained_weights")
        return argv[i + 1] if i + 1 < len(argv) else None
    return None


SPLIT_LEAK_VAR = "nnUNet_mtl_allow_split_leak"


def split_leak_allowed() -> bool:
    """Whether a fold with a case or patient on both sides trains anyway (nnUNet_mtl_allow_split_leak=1: e.g. to
    reproduce a paper that split by image); unset or 0: refused."""
    return os.environ.get(SPLIT_LEAK_VAR, "0").strip() in ("1", "true", "True")


def fail(message: str):
    """Stop nnUNetv2_train with one readable line instead of a traceback (SystemExit prints it, exit code 1)."""
    raise SystemExit(f"nnunet_mtl: error: {message}")


def merged_along_mro(cls: type, attribute: str) -> dict:
    """The ``attribute`` dicts of ``cls`` and its bases, merged (a subclass' entries win)."""
    merged = {}
    for klass in reversed(cls.__mro__):
        value = klass.__dict__.get(attribute)
        if isinstance(value, dict):
            merged.update(value)
    return merged


def gather(values: Sequence) -> list:
    """All ranks' ``values`` concatenated in rank order under multi-GPU training (DDP); ``values`` otherwise."""
    values = list(values)
    if not (dist.is_available() and dist.is_initialized()):
        return values
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def epoch_means(collated: dict, keys: Sequence[str]) -> dict[str, float]:
    """Per key the mean over the epoch's steps (and over all ranks under DDP)."""
    return {k: float(np.mean(np.asarray(gather(collated[k]), dtype=np.float64))) for k in keys}


def validation_classification(collated: dict, class_names: Sequence[str]) -> dict:
    """The classification metrics of one validation epoch (all ranks' patches), by the same definitions as
    ``nnunet_mtl evaluate`` (:func:`nnunet_mtl.evaluation.classification.classification_metrics`)."""
    probs = np.stack(gather(collated["cls_probs"]))
    y = np.asarray(gather(collated["cls_target"]), dtype=int)
    return classification_metrics(y, probs.argmax(1), probs, list(class_names))



TIME_BUDGET_VAR = "nnUNet_mtl_max_train_minutes"


def time_budget_seconds() -> float | None:
    """The wall-clock budget of one nnUNetv2_train run (``nnUNet_mtl_max_train_minutes``, minutes > 0; unset: none):
    training stops after the first epoch that ends past it, as early stopping does (checkpoint_final is that epoch's,
    nnU-Net's final validation follows). A run resumed with --c gets the budget anew."""
    value = os.environ.get(TIME_BUDGET_VAR, "").strip()
    if not value:
        return None
    try:
        minutes = float(value)
    except ValueError:
        minutes = float("nan")
    if not (minutes > 0 and np.isfinite(minutes)):
        raise NnunetMtlError(f"{TIME_BUDGET_VAR} is {value!r}; expected a number of minutes > 0 (or unset)")
    return 60.0 * minutes


SEED_VAR = "nnUNet_mtl_seed"


def training_seed() -> int | None:
    """The training seed (``nnUNet_mtl_seed``, an integer >= 0; unset: none, nnU-Net's own unseeded draw). A recipe
    with ``seeds = [...]`` sets it per training. It seeds Python's, NumPy's and torch's generators of the training
    process before the network is built: the initial weights and the main process' draws follow it. nnU-Net's
    data-augmentation workers draw their own seeds, so a seed names a training draw and fixes its initialization; it
    does not make a training reproducible bit for bit."""
    value = os.environ.get(SEED_VAR, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise NnunetMtlError(f"{SEED_VAR} is {value!r}; expected an integer >= 0 (or unset)")
    return int(value)


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def selection_ema(previous: list[float], score: float, restart: bool) -> float:
    """The selection EMA after this epoch: nnU-Net's smoothing of its EMA Dice (0.9 old + 0.1 new), restarted at
    the first epoch of every stage. An undefined score (NaN: a pseudo Dice over validation patches without one
    annotated lesion pixel, which a partially annotated dataset can give) leaves the EMA where it was instead of
    turning it NaN for the rest of training."""
    last = previous[-1] if len(previous) and not restart else float("nan")
    if not np.isfinite(score):
        return float(last)
    return float(score) if not np.isfinite(last) else float(0.9 * last + 0.1 * score)


# ------------------------------------------------------------------ checkpoints after a kill
# the files nnUNetv2_train --c looks for, in its order (nnunetv2/run/run_training.py, maybe_load_checkpoint)
RESUME_ORDER = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def probe_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(the checkpoint, None) when torch can read ``path``, else (None, why). Memory-mapped, so the tensors are not
    read: a torch checkpoint is a zip whose directory is at its end, so a file cut short (a kill during a
    non-atomic write, a full disk, an interrupted copy) fails at once. A file of torch's pre-1.6 format, which cannot
    be mapped, is read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True), None
    except Exception:
        try:
            return torch.load(path, map_location="cpu", weights_only=False), None
        except Exception as e:
            detail = (str(e).strip().splitlines() or [""])[0][:160]
            return None, f"{type(e).__name__}{': ' + detail if detail else ''}"


def unreadable_checkpoint_message(path: Path, why: str) -> str:
    """The one line that refuses an unreadable checkpoint: which file, why, what is intact beside it, and what to
    do (nnU-Net's --c takes the first of RESUME_ORDER that exists, readable or not)."""
    intact = []
    for name in RESUME_ORDER:
        other = path.with_name(name)
        if other.name == path.name or not other.is_file():
            continue
        checkpoint, error = probe_checkpoint(other)
        if error is None:
            epochs = checkpoint.get("current_epoch") if isinstance(checkpoint, dict) else None
            done = f" ({epochs} epoch{'' if epochs == 1 else 's'} done)" if isinstance(epochs, int) else ""
            intact.append(name + done)
    beside = (f"intact beside it: {', '.join(intact)}" if intact else
              "no other checkpoint beside it can be read (--c without one starts a new training)")
    return (f"checkpoint {path} cannot be read ({why}): cut short or damaged, so it is not loaded; {beside}. "
            f"Delete it and rerun: nnUNetv2_train --c takes the first of {', '.join(RESUME_ORDER)} that exists")


def remove_stale_checkpoint_temporaries(folder: Path) -> None:
    """Remove the temporary files of checkpoints in ``folder`` left by a process killed while it saved one."""
    for name in RESUME_ORDER:
        remove_stale_temporaries(folder / name)


class nnUNetTrainerMTL(nnUNetTrainer):
    # ------------------------------------------------------------------ the composition
    head = BottleneckMLPConfig(hidden=256, embed_dim=128, dropout=0.2)
    terms = (Segmentation(), Classification())
    loss_weights = {"seg": 1.0, "cls": 1.0}
    backward = WeightedSum()
    stages = (Stage("train"),)
    schedule: dict = {}
    optimizer_name: str = "sgd"
    fixed_batch_size: int | None = None  # None: nnU-Net's planned batch size
    # False: classification only: the decoder stays in the network (checkpoints load strictly) but is never run
    segments: bool = True
    # ultrasound-aware augmentation: the image has a depth direction (skin on top)
    ultrasound_augmentation: bool = True
    max_rotation_degrees: float = 15.0
    # patient-grouped, class-stratified split written when splits_final.json is missing
    num_split_folds: int = DEFAULT_NUM_FOLDS
    # checkpoint selection (checkpoint_best.pth): "mtl_score", the EMA of w * pseudo Dice + (1 - w) * AUC (balanced
    # accuracy where AUC is undefined); or "val_loss", the lowest weighted total validation loss
    selection: str = "mtl_score"
    selection_seg_weight: float = 0.5
    # stop when the selection score has not improved for this many epochs (None: never; the best checkpoint stays)
    early_stopping_patience: int | None = None
    lr_schedule: str = "poly"  # nnU-Net's poly decay, or "cosine" annealing (per stage, see nnunet_mtl.seams.stages)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        _check_results_folder(plans)
        created = _folders_nnunet_creates(plans, type(self).__name__, configuration, fold)
        super().__init__(plans, configuration, fold, dataset_json, device)
        try:
            for name, value in merged_along_mro(type(self), "schedule").items():
                setattr(self, name, value)
            trainer = self.__class__.__name__
            self.terms = [copy.deepcopy(t) for t in type(self).terms]
            self.backward_rule = copy.deepcopy(type(self).backward)
            try:
                for term in self.terms:
                    term.validate()
                self.backward_rule.validate()
                self.base_loss_weights = type(self).resolved_loss_weights()
            except (ValueError, NnunetMtlError) as e:
                fail(f"{trainer}: {e}")
            self.task_names = [t.name for t in self.terms if t.task]
            try:  # the forward pass's precision (nnunet_mtl.precision): nnU-Net's on CUDA, bfloat16 on a CPU with it
                self._autocast_factory = precision.autocast_for(self.device)
                self._time_budget_s = time_budget_seconds()
                self.training_seed = training_seed()
                if self.training_seed is not None:  # before initialize() builds the network: its weights follow
                    seed_everything(self.training_seed)
                self._run_started: float | None = None  # set when run_training starts the epochs
            except NnunetMtlError as e:
                fail(str(e))
            self.loss_weights_now = dict(self.base_loss_weights)
            dataset_name = self.plans_manager.dataset_name
            try:
                self.class_labels = read_class_labels(dataset_json, source=f"dataset.json of {dataset_name}")
            except NnunetMtlError as e:
                fail(str(e))
            if self.label_manager.has_regions or list(self.label_manager.foreground_labels) != [1]:
                fail(f"{dataset_name} uses region-based labels or more than one foreground label; nnunet_mtl "
                     f"expects labels {{background: 0, lesion: 1}}, plus ignore: 2 for a partially annotated "
                     f"dataset")
            self.class_names = [n for n, _ in sorted(self.class_labels.items(), key=lambda kv: kv[1])]
            self.num_cls_classes = len(self.class_names)
            # Everything the network's shape depends on goes into the plans: nnU-Net saves them as plans.json next to
            # the checkpoints, and the predictor rebuilds the network from them.
            try:
                head = self.head_config(self.num_cls_classes)
            except ValueError as e:
                fail(f"{trainer}: {e}")
            section = {"head": head.to_dict(), "class_labels": self.class_labels, "trainer": trainer,
                       "version": __version__}
            for term in self.terms:
                section.update(term.plans_entries())
            if not self.segments:
                section["segments"] = False  # the predictors build the network without its decoder pass
            self.plans_manager.plans[PLANS_KEY] = section
            self.logger.local_logger = MultitaskLocalLogger(
                term_names=[t.name for t in self.terms], extra_keys=[f"train_{k}" for k in self.backward_rule.logged])
            try:
                if tensorboard_enabled() and self.local_rank == 0:
                    self.logger.loggers.append(TensorBoardLogger(self.output_folder))
                    self.logger.loggers[-1].update_config({"trainer": trainer, "fold": fold,
                                                           "configuration": configuration, **section})
            except NnunetMtlError as e:
                fail(str(e))
            if self.selection not in ("mtl_score", "val_loss"):
                fail(f"{trainer}.selection is {self.selection!r}; expected 'mtl_score' or 'val_loss'")
            self.cases: CaseTable | None = None
            self._train_keys: list[str] | None = None
            self._stage_spans = None
            self._stage = None                # the StageSpan entered last
            self._stage_flags_applied = False
            self._frozen_modules: list[nn.Module] = []
            self._batch_composition = "random"  # how the training loader draws cases now (a stage's sampling)
            self._batch_kinds = np.zeros(3, dtype=np.int64)  # this epoch's batches: cases per mask kind
            self._check_inputs_before_training()
        except SystemExit:  # a one-line refusal: leave no trace of the start-up (nnU-Net made a folder and a log)
            _remove_start_up_folders(created, getattr(self, 'log_file', None))
            raise

    # ------------------------------------------------------------------ the declaration, resolved
    @classmethod
    def resolved_loss_weights(cls) -> dict[str, float]:
        """``loss_weights`` merged along the class hierarchy, restricted to this trainer's terms and checked."""
        names = [t.name for t in cls.terms]
        for klass in cls.__mro__:
            own = klass.__dict__.get("loss_weights")
            if isinstance(own, dict):
                their_terms = [t.name for t in getattr(klass, "terms", ())]
                unknown = [n for n in own if n not in their_terms]
                if unknown:
                    raise ValueError(f"{klass.__name__}.loss_weights names {', '.join(unknown)}, which is not one of "
                                     f"its terms {their_terms}")
        weights = {n: w for n, w in merged_along_mro(cls, "loss_weights").items() if n in names}
        check_weights(cls.terms, weights, f"{cls.__name__}.loss_weights")
        for stage in cls.stages:
            unknown = [n for n in stage.weights if n not in names]
            if unknown:
                raise ValueError(f"stage {stage.name!r} sets the weight of {', '.join(unknown)}, which is not a term "
                                 f"of {cls.__name__} ({names})")
            check_weights(cls.terms, {**weights, **stage.weights}, f"{cls.__name__} stage {stage.name!r}")
        return weights

    @classmethod
    def head_config(cls, num_classes: int):
        """The head this trainer builds for a dataset with ``num_classes`` classes (also used by
        ``nnunet_mtl pretrained`` to shape a head before training): the declared head, with the fields and the loss
        modules its terms ask for."""
        params, modules = {}, dict(cls.head.loss_modules)
        for term in cls.terms:
            params.update(term.head_params())
            modules.update(term.loss_modules())
        modules.update(cls.backward.loss_modules([t.name for t in cls.terms if t.task]))
        return cls.head.with_params(num_classes=num_classes, loss_modules=modules, **params)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        try:
            head = head_config_from_plans(plans_manager.plans)
        except KeyError as e:
            fail(str(e.args[0]))
        unet = get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)
        network = MultitaskUNet(unet, head)
        network.segments = (plans_manager.plans.get(PLANS_KEY) or {}).get("segments", True)
        return network

    def describe_composition(self) -> str:
        head = unwrap(self.network).head_config if self.network is not None else self.head_config(self.num_cls_classes)
        terms = ", ".join(f"{t.name} x {self.base_loss_weights[t.name]:g}{'' if t.task else ' (regularizer)'}"
                          for t in self.terms)
        stages = "; ".join(s.describe(len(self._stage_spans)) for s in self._stage_spans)
        return (f"nnunet_mtl {type(self).__name__}: head {head.kind}; terms {terms}; backward "
                f"{self.backward_rule.name}; optimizer {self.optimizer_name}; {stages}")

    # ------------------------------------------------------------------ data: classes, splits, augmentation
    def _raw_dataset_folder(self) -> Path | None:
        """This dataset's folder in nnUNet_raw, or None when nnUNet_raw is unset or lacks it (training needs only
        the preprocessed data)."""
        from nnunet_mtl.paths import find_dataset_folder
        raw_root = os.environ.get("nnUNet_raw")
        if not raw_root:
            return None
        try:
            return find_dataset_folder(self.plans_manager.dataset_name, Path(raw_root))
        except NnunetMtlError:
            return None

    def _case_table_path(self) -> Path:
        """cases.csv beside the preprocessed data (copied there from nnUNet_raw, the source of truth, atomically)."""
        pre = Path(self.preprocessed_dataset_folder_base) / "cases.csv"
        raw = self._raw_dataset_folder()
        raw_csv = raw / "cases.csv" if raw is not None else None
        if raw_csv is not None and raw_csv.is_file():
            copy_if_changed(raw_csv, pre)
            self._case_table_source = raw_csv  # what the user edits: errors name it, not the copy
        if not pre.is_file():
            fail(f"no cases.csv for {self.plans_manager.dataset_name}: looked in {pre} and in nnUNet_raw; expected "
                 f"the case table written by 'nnunet_mtl convert' (columns case_id, split, class, patient_id)")
        return pre

    def _load_case_table(self) -> None:
        if self.cases is not None:
            return
        path = self._case_table_path()
        try:
            self.cases = CaseTable.from_csv(path, self.class_labels, split="train",
                                            preprocessed_folder=Path(self.preprocessed_dataset_folder))
        except NnunetMtlError as e:
            source = getattr(self, "_case_table_source", None)
            fail(str(e).replace(str(path), str(source)) if source is not None else str(e))

    def _check_inputs_before_training(self) -> None:
        """What the inputs alone can tell, in __init__ (before nnU-Net loads data or writes more than its log):
        the case table, and an existing splits_final.json with its fold. nnU-Net's preprocessing must have run."""
        if not Path(self.preprocessed_dataset_folder).is_dir():
            return  # nnU-Net says so itself, in its own words
        self._load_case_table()
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold == "all" or not splits_file.exists():
            return
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        self._read_split_file(splits_file, infer_dataset_class(self.preprocessed_dataset_folder).get_identifiers(
            self.preprocessed_dataset_folder))

    def _read_split_file(self, splits_file: Path, identifiers) -> list[dict]:
        """splits_final.json, checked (:func:`read_splits`), and holding this trainer's fold; refused in one line
        otherwise (nnU-Net would silently train on a random 80:20 split that ignores patients)."""
        try:
            splits = read_splits(splits_file, identifiers)
        except NnunetMtlError as e:
            fail(str(e))
        if self.fold >= len(splits):
            fail(f"fold {self.fold} requested but {splits_file} defines {len(splits)} folds (0..{len(splits) - 1})")
        return splits

    def do_split(self):
        self._load_case_table()
        if self.dataset_class is None:
            from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        identifiers = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        missing = [i for i in identifiers if i not in self.cases]
        if missing:
            fail(f"{len(missing)} preprocessed case(s) have no 'train' row in cases.csv (e.g. {missing[0]}); "
                 f"expected one row per training case")
        classes = self.cases.column("class")
        patients = self.cases.column("patient_id")
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold != "all":
            if not splits_file.is_file():
                try:
                    check_output_file(splits_file, "split file")
                except NnunetMtlError as e:
                    fail(str(e))
                splits = grouped_stratified_splits(identifiers, [patients[i] for i in identifiers],
                                                   [classes[i] for i in identifiers], num_folds=self.num_split_folds)
                write_splits(splits, splits_file)
                self.print_to_log_file(
                    f"Created a {self.num_split_folds}-fold split grouped by patient and stratified by class:\n"
                    + describe_splits(splits, {k: self.class_names[v] for k, v in classes.items()}))
            splits = self._read_split_file(splits_file, identifiers)
            try:
                check_splits_grouped(splits, patients, folds=[self.fold])
            except NnunetMtlError as e:
                if not split_leak_allowed():
                    fail(f"{splits_file}: {e} (the validation would score what was trained on); set "
                         f"{SPLIT_LEAK_VAR}=1 to train anyway")
                self.print_to_log_file(f"WARNING: {e} ({SPLIT_LEAK_VAR}=1: training anyway)")
        tr_keys, val_keys = super().do_split()
        self._train_keys = list(tr_keys)
        return tr_keys, val_keys

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.ultrasound_augmentation or len(self.configuration_manager.patch_size) != 2:
            return rotation, dummy_2d, initial_patch_size, mirror_axes
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
        # No vertical flips (axis 0 = depth): a scanner never shows the skin line at the bottom. Horizontal flips
        # (axis 1) are a valid probe orientation. The same axes are saved for test-time mirroring.
        mirror_axes = (1,)
        angle = np.deg2rad(self.max_rotation_degrees)
        rotation = (-angle, angle)
        initial_patch_size = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                            (0.85, 1.25))
        self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.fixed_batch_size is not None:
            if self.is_ddp:  # nnU-Net has split its planned batch over the ranks; that split is kept
                self.print_to_log_file(f"fixed_batch_size {self.fixed_batch_size} is not applied under multi-GPU "
                                       f"training: nnU-Net's per-rank batch size {self.batch_size} is used")
            else:
                self.batch_size = int(self.fixed_batch_size)

    # ------------------------------------------------------------------ network, optimizer, stages
    def _stage_plan(self):
        if self._stage_spans is None:
            try:
                self._stage_spans = resolve_stages(type(self).stages, self.num_epochs)
            except ValueError as e:
                fail(f"{type(self).__name__}.stages: {e}")
        return self._stage_spans

    def initialize(self):
        super().initialize()  # the network reads `segments` from the plans section set in __init__
        try:
            self.backward_rule.setup(self.network, self.print_to_log_file)
        except ValueError as e:
            fail(f"{type(self).__name__}: {e}")
        self._check_pretrained_weights(pretrained_weights_argument(sys.argv))

    def _check_pretrained_weights(self, path: str | None) -> None:
        """``nnUNetv2_train ... -pretrained_weights FILE`` loads FILE right after this initialize, with nnU-Net's
        assertion on the first missing key (``Key cls_head... is missing``): a plain nnU-Net checkpoint has no
        class head. Said here in one line, with the command that adds one."""
        if path is None or not Path(path).is_file():
            return  # nnU-Net names a missing file itself
        from nnunet_mtl.networks.multitask_unet import HEAD_PREFIX
        try:
            weights = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("network_weights")
        except Exception:  # noqa: BLE001 - an unreadable file: nnU-Net's loader says so itself
            return
        ours = [k for k in unwrap(self.network).state_dict() if k.startswith(HEAD_PREFIX)]
        if isinstance(weights, dict) and ours and not any(k.startswith(HEAD_PREFIX) for k in weights):
            dataset = self.plans_manager.dataset_name
            fail(f"-pretrained_weights {path} has no classification head (a plain nnU-Net checkpoint?); expected "
                 f"one with ours: nnunet_mtl pretrained -i {path} -tr {type(self).__name__} -d {dataset} -o "
                 f"pretrained_with_head.pth, then -pretrained_weights pretrained_with_head.pth")

    def get_dataloaders(self):
        """nnU-Net's loaders; the augmentation workers they fork (here, and again when a stage restarts them) are
        killed by the kernel when this process dies, even by SIGKILL (see
        `nnunet_mtl.processes.children_die_with_this_process`)."""
        children_die_with_this_process()
        return super().get_dataloaders()

    def _do_i_compile(self):
        # a rule that differentiates twice (RLAR) cannot run under torch.compile
        return type(self).backward.compiles and super()._do_i_compile()

    def configure_optimizers(self):
        spans = self._stage_plan()
        stage = stage_at(spans, self.current_epoch).stage
        network = unwrap(self.network)
        no_decay = {id(p) for p in network.head.no_weight_decay_parameters()}
        groups = [{"params": [p for p in self.network.parameters() if id(p) not in no_decay]}]
        if no_decay:
            groups.append({"params": [p for p in self.network.parameters() if id(p) in no_decay], "weight_decay": 0.0,
                           "no_weight_decay": True})
        lr, weight_decay = self._stage_hyperparameters(stage)
        if self.optimizer_name == "sgd":  # nnU-Net's
            optimizer = torch.optim.SGD(groups, lr, weight_decay=weight_decay, momentum=0.99, nesterov=True)
        elif self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
        else:
            fail(f"{type(self).__name__}.optimizer_name is {self.optimizer_name!r}; expected 'sgd' or 'adamw'")
        try:
            scheduler = StagedLRScheduler(optimizer, self.initial_lr, spans, shape=self.lr_schedule)
        except ValueError as e:
            fail(f"{type(self).__name__}.lr_schedule: {e}")
        return optimizer, scheduler

    def _stage_hyperparameters(self, stage: Stage) -> tuple[float, float]:
        """(initial learning rate, weight decay) of a stage: its own, else the trainer's."""
        return (stage.lr if stage.lr is not None else self.initial_lr,
                stage.weight_decay if stage.weight_decay is not None else self.weight_decay)

    def _trained_parameter_ids(self, trainable) -> set[int]:
        """ids of the parameters of the parts a stage trains (``trainable`` names, not None)."""
        network = unwrap(self.network)
        try:
            return {id(p) for name in trainable for p in network.part_parameters(name)}
        except KeyError as e:
            fail(f"{type(self).__name__}.stages: {e.args[0]}")

    def _apply_trainable(self, trainable) -> None:
        network = unwrap(self.network)
        if trainable is None:
            for p in network.parameters():
                p.requires_grad_(True)
            self._frozen_modules = []
            return
        keep = self._trained_parameter_ids(trainable)
        for p in network.parameters():
            p.requires_grad_(id(p) in keep)

        def frozen(name: str) -> bool:  # part_parameters: the decoder's reference to the encoder is not the decoder's
            params = network.part_parameters(name)
            return bool(params) and not any(p.requires_grad for p in params)

        def parent(name: str) -> str:
            return name.rpartition(".")[0]

        # the largest fully frozen submodules: they run in eval mode (dropout off, batch-norm statistics kept)
        self._frozen_modules = [m for name, m in network.named_modules()
                                if name and frozen(name) and not (parent(name) and frozen(parent(name)))]

    def _enter_stage(self, epoch: int) -> None:
        span = stage_at(self._stage_plan(), epoch)
        if self._stage is not None and span.index == self._stage.index and self._stage_flags_applied:
            return
        transition = self._stage is not None and span.index != self._stage.index
        resumed = self._stage is not None and not transition
        stage = span.stage
        self._stage = span
        self.loss_weights_now = {**self.base_loss_weights, **stage.weights}
        self._apply_trainable(stage.trainable)
        if transition and stage.reset_optimizer:
            self.optimizer, self.lr_scheduler = self.configure_optimizers()
        lr, weight_decay = self._stage_hyperparameters(stage)
        for group in self.optimizer.param_groups:
            if not group.get("no_weight_decay"):
                group["weight_decay"] = weight_decay
        self._apply_batch_composition(stage.sampling)
        self._stage_flags_applied = True
        if len(self._stage_spans) > 1 or transition or resumed:
            self.print_to_log_file(
                f"{'resumed in ' if resumed else 'entering '}{span.describe(len(self._stage_spans))}: loss weights "
                f"{self.loss_weights_now}, trainable {list(stage.trainable) if stage.trainable else 'everything'}, "
                f"lr {lr:g} ({self.lr_schedule} over the stage), weight decay "
                f"{weight_decay:g}{', fresh optimizer state' if transition and stage.reset_optimizer else ''}"
                f"{'' if stage.select_best else ', no best-checkpoint selection'}")

    def _annotated_training_keys(self) -> tuple[list[str], list[str]]:
        """(cases with a mask, full or box; cases without one) of this fold's training cases."""
        from nnunet_mtl.dataset.contract import MASK_KINDS
        kinds = self.cases.column("mask")
        none = MASK_KINDS.index("none")
        return [k for k in self._train_keys if kinds[k] != none], [k for k in self._train_keys if kinds[k] == none]

    def _apply_batch_composition(self, mode: str) -> None:
        """Draw the training batches by ``mode`` (a stage's sampling; :mod:`nnunet_mtl.trainers.sampling`)."""
        if mode == self._batch_composition or self.dataloader_train is None:
            return
        from nnunet_mtl.trainers.sampling import batch_counts, set_batch_composition
        annotated, unannotated = self._annotated_training_keys()
        try:
            m, m_prime = batch_counts(self.batch_size, len(annotated), len(unannotated), mode) \
                if mode != "random" else (None, None)
            set_batch_composition(self.dataloader_train, mode, annotated, unannotated)
        except ValueError as e:
            fail(f"{type(self).__name__} ({self.plans_manager.dataset_name}, fold {self.fold}): {e}")
        self._batch_composition = mode
        self.print_to_log_file(
            f"batches: {mode} ({len(annotated)} annotated, {len(unannotated)} unannotated training cases)"
            + (f": {m} annotated + {m_prime} unannotated per batch of {self.batch_size}" if m is not None else
               ": nnU-Net's uniform draw"))

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (its own save_checkpoint writes it, same content), written atomically: into a hidden
        temporary file beside ``filename``, renamed over it once complete. nnU-Net's torch.save writes in place, so
        a kill during it (checkpoint_best is saved whenever the score improves) would leave a truncated file that
        ``--c`` picks and cannot load, with the previous good one already overwritten; now a kill leaves the previous
        checkpoint intact and a ``.NAME.PID.HEX.tmp`` file, which nnU-Net never looks for and the next save or
        ``--c`` removes. Other ranks and ``--disable_checkpointing``: nnU-Net's behaviour (nothing written)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        target = Path(filename)
        remove_stale_checkpoint_temporaries(target.parent)
        with atomic_path(target) as tmp:
            super().save_checkpoint(str(tmp))

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's load, after checking that the file can be read at all. nnU-Net's ``--c`` chooses the file by
        existence only (final, then latest, then best) and would stop with torch's traceback on a truncated one (a
        checkpoint written before saves were atomic, a full disk, a cut copy). Refused with one line instead, naming
        the file and the intact checkpoints beside it, rather than falling back to one of them by itself: our saves
        are atomic, so an unreadable file is damage from outside that a person should look at, and the fallback
        would silently redo epochs (from checkpoint_best, possibly many) or retrain a finished model whose
        checkpoint_final is damaged. Deleting the file makes ``--c`` take the next one."""
        if isinstance(filename_or_checkpoint, (str, os.PathLike)):
            path = Path(filename_or_checkpoint)
            if self.local_rank == 0:
                remove_stale_checkpoint_temporaries(path.parent)
            _, why = probe_checkpoint(path) if path.is_file() else (None, None)  # a missing file: nnU-Net's error
            if why is not None:
                fail(unreadable_checkpoint_message(path, why))
            filename_or_checkpoint = str(path)
        super().load_checkpoint(filename_or_checkpoint)
        # the saved optimizer state belongs to the stage of the last finished epoch; its flags are re-applied at the
        # start of the next epoch (a stage change there is a regular transition)
        self._stage = stage_at(self._stage_plan(), max(self.current_epoch - 1, 0))
        self._stage_flags_applied = False

    def on_train_start(self):
        spans = self._stage_plan()
        for span in spans:
            try:
                self.backward_rule.check({**self.base_loss_weights, **span.stage.weights}, self.task_names)
            except ValueError as e:
                fail(f"{type(self).__name__} ({span.stage.name!r}): {e}")
        super().on_train_start()
        self._check_stages_against_rule(spans)
        self._load_case_table()
        if self.output_folder_base is not None:  # the table the model was trained with, next to it
            copy_if_changed(self._case_table_path(), Path(self.output_folder_base) / "cases.csv")
        self._check_mask_annotation()
        self._setup_terms()
        self.print_to_log_file(self.describe_composition())
        self.print_to_log_file(self.backward_rule.describe(self.base_loss_weights, self.task_names))
        self.print_to_log_file(precision.describe(self.device))
        if self.training_seed is not None:
            self.print_to_log_file(f"training seed {self.training_seed} ({SEED_VAR}): initial weights and the main "
                                   f"process' draws; nnU-Net's augmentation workers seed themselves")
        if self._time_budget_s is not None:
            self.print_to_log_file(f"time budget: training stops after the first epoch that ends past "
                                   f"{self._time_budget_s / 60:g} minutes ({TIME_BUDGET_VAR})")

    def _check_stages_against_rule(self, spans) -> None:
        """A rule that needs gradients at the encoder's outputs (RLAR, gradient aggregation) cannot train a stage
        that freezes part of the encoder."""
        if not self.backward_rule.needs_encoder_gradient:
            return
        encoder = {id(p) for p in unwrap(self.network).encoder.parameters()}
        for span in spans:
            if span.stage.trainable is not None and not encoder <= self._trained_parameter_ids(span.stage.trainable):
                fail(f"{type(self).__name__}: stage {span.stage.name!r} freezes part of the encoder, but its backward "
                     f"rule ({self.backward_rule.name}) takes gradients at the encoder's outputs; expected the stage "
                     f"to train the whole encoder")

    def _check_mask_annotation(self) -> None:
        """Training cases whose mask is a box or missing (cases.csv column mask) are trained through nnU-Net's ignore
        label: nnU-Net's loss learns from their annotated pixels only (none for a missing mask, the background
        outside a box), the classification loss from every case. That needs the ignore label in dataset.json and
        terms that all know such cases (``partial_masks``); anything else would train them as full outlines or as
        lesion-free images, and is refused."""
        from nnunet_mtl.dataset.contract import MASK_KINDS
        kinds = self.cases.column("mask")
        partial = sorted(k for k in self._train_keys if kinds[k] != 0)
        if not partial:
            return
        dataset = self.plans_manager.dataset_name
        example = f"e.g. {partial[0]}: {MASK_KINDS[kinds[partial[0]]]!r}"
        if not self.label_manager.has_ignore_label:
            fail(f"{len(partial)} training case(s) of {dataset} are not fully annotated (cases.csv column mask, "
                 f"{example}) but its dataset.json declares no ignore label; expected labels {{background: 0, "
                 f"lesion: 1, ignore: 2}} with those cases' masks set to ignore (nnunet_mtl drop-masks writes such "
                 f"datasets)")
        unaware = [t.name for t in self.terms if not t.partial_masks]
        if unaware or not self.backward_rule.partial_masks:
            what = f"its term(s) {', '.join(unaware)}" if unaware else f"its backward rule ({self.backward_rule.name})"
            fail(f"{len(partial)} training case(s) of {dataset} are not fully annotated (cases.csv column mask, "
                 f"{example}); {type(self).__name__} cannot train them: {what} would read them as full outlines "
                 f"or lesion-free images; expected mask 'full' for every training case, or a trainer whose terms "
                 f"handle partial masks")
        counts = {kind: sum(MASK_KINDS[kinds[k]] == kind for k in partial) for kind in MASK_KINDS[1:]}
        self.print_to_log_file(
            f"partially annotated: {len(self._train_keys) - len(partial)} of {len(self._train_keys)} training cases "
            f"have a full mask, " + ", ".join(f"{n} mask '{kind}'" for kind, n in counts.items() if n)
            + "; the segmentation loss learns from annotated pixels only (nnU-Net's ignore label), the "
              "classification loss from every case")

    def _setup_terms(self) -> None:
        from nnunetv2.configuration import default_num_processes
        raw = self._raw_dataset_folder()

        def setup_all(main: bool):
            setup = Setup(cases=self.cases, train_keys=list(self._train_keys), class_names=list(self.class_names),
                          device=self.device, log=self.print_to_log_file, nnunet_loss=self.loss,
                          preprocessed_folder=Path(self.preprocessed_dataset_folder_base),
                          raw_folder=raw if main else None, dataset_name=self.plans_manager.dataset_name,
                          main_process=main, num_processes=min(default_num_processes, 8))
            for term in self.terms:
                try:
                    term.setup(setup)
                except NnunetMtlError as e:
                    fail(str(e))

        # shared files (caches) are written by the main process; the others read them after a barrier
        if self.local_rank == 0:
            setup_all(True)
        if self.is_ddp:
            dist.barrier()
            if self.local_rank != 0:
                setup_all(False)

    # ------------------------------------------------------------------ one step
    def _to_device(self, batch):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    def _autocast(self):
        # nnU-Net's float16 autocast on CUDA; bfloat16 autocast on a CPU that computes it natively
        # (nnunet_mtl.precision)
        return self._autocast_factory()

    def _scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss

    def _batch(self, data, target, keys, training: bool) -> Batch:
        return Batch(data=data, target=target, keys=list(keys), cases=self.cases, training=training,
                     epoch=self.current_epoch, stage=self._stage.stage.name if self._stage else "",
                     network=unwrap(self.network))

    def compute_losses(self, outputs: dict, batch: Batch) -> dict[str, torch.Tensor]:
        return compute_losses(self.terms, outputs, batch)

    def compute_gradients(self, batch: dict):
        """One batch's forward pass, losses and parameter gradients (in ``.grad``, zeroed first; scaled under CUDA
        AMP) by the backward rule, without the optimizer step; the rule's :class:`StepResult`."""
        data, target = self._to_device(batch)
        context = self._batch(data, target, batch["keys"], training=True)
        self.optimizer.zero_grad(set_to_none=True)
        # multi-GPU: a step DDP's reducer cannot take runs on the module inside the wrapper and its gradients are
        # averaged over the ranks afterwards (nnunet_mtl.seams.distributed)
        itself = self.is_ddp and averages_gradients_itself(self.backward_rule, type(self).stages)
        return rule_step(self.backward_rule, self.network, data, lambda outputs: self.compute_losses(outputs, context),
                         self.loss_weights_now, average_itself=itself, tasks=self.task_names, scale=self._scale,
                         autocast=self._autocast)

    def train_step(self, batch: dict) -> dict:
        self._batch_kinds += np.bincount(self.cases.values("mask", batch["keys"]), minlength=3)[:3]
        result = self.compute_gradients(batch)
        self.optimizer_step()
        return {"loss": result.total.float().cpu().numpy(),
                **{f"{k}_loss": v.float().cpu().numpy() for k, v in result.losses.items()},
                **{k: v.float().cpu().numpy() for k, v in result.extras.items()}}

    def optimizer_step(self) -> None:
        """nnU-Net's step on gradients already in .grad (scaled when AMP is on): unscale, clip at 12, step."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()

    def validation_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        context = self._batch(data, target, batch["keys"], training=False)
        with self._autocast():
            output = self.network(data, return_aux=True)
            losses = self.compute_losses(output, context)
            total = weighted_total(losses, self.loss_weights_now)
        result = {"loss": total.detach().float().cpu().numpy(),
                  **{f"{k}_loss": v.detach().float().cpu().numpy() for k, v in losses.items()}}
        if "seg" in output:
            seg = output["seg"][0] if self.enable_deep_supervision else output["seg"]
            # pseudo Dice as in nnU-Net: hard prediction vs target on the validation patches
            predicted = torch.zeros(seg.shape, device=seg.device, dtype=torch.float16)
            predicted.scatter_(1, seg.argmax(1)[:, None], 1)
            axes = [0] + list(range(2, seg.ndim))
            target, mask = context.seg_target, None
            if self.label_manager.has_ignore_label:  # as nnU-Net's own pseudo Dice: ignore pixels count nowhere
                mask = (target != self.label_manager.ignore_label).float()
                target = torch.where(mask.bool(), target, torch.zeros_like(target))
            tp, fp, fn, _ = get_tp_fp_fn_tn(predicted, target, axes=axes, mask=mask)
            result.update(tp_hard=tp.detach().cpu().numpy()[1:], fp_hard=fp.detach().cpu().numpy()[1:],
                          fn_hard=fn.detach().cpu().numpy()[1:])
        else:  # classification only: no pseudo Dice (NaN, never selected on)
            nan = np.full(len(self.label_manager.foreground_labels), np.nan)
            result.update(tp_hard=nan, fp_hard=nan, fn_hard=nan)
        if "logits" in output:
            result["cls_probs"] = list(torch.softmax(output["logits"].float(), 1).detach().cpu().numpy())
            result["cls_target"] = context.case("class").cpu().tolist()
        return result

    # ------------------------------------------------------------------ epoch hooks
    def on_train_epoch_start(self):
        self._enter_stage(self.current_epoch)
        super().on_train_epoch_start()  # network.train(), learning rate of this epoch
        for module in self._frozen_modules:
            module.eval()
        self.logger.log("stage", self._stage.index, self.current_epoch)
        self._batch_kinds[:] = 0

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)  # train_losses: the weighted total
        outputs = collate_outputs(train_outputs)
        means = epoch_means(outputs, [f"{t.name}_loss" for t in self.terms] + list(self.backward_rule.logged))
        for term in self.terms:
            self.logger.log(f"train_{term.name}_losses", means[f"{term.name}_loss"], self.current_epoch)
        for key in self.backward_rule.logged:
            self.logger.log(f"train_{key}", means[key], self.current_epoch)
        full, box, none = np.sum(gather([self._batch_kinds]), axis=0)
        if box or none or self._batch_composition != "random":
            self.print_to_log_file(
                f"batches of stage {self._stage.stage.name!r} ({self._batch_composition}): {full + box} annotated "
                f"cases ({full} full, {box} box) and {none} unannotated over {len(train_outputs)} steps")

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)  # pseudo Dice; val_losses: the weighted total
        outputs = collate_outputs(val_outputs)
        means = epoch_means(outputs, [f"{t.name}_loss" for t in self.terms])
        for term in self.terms:
            self.logger.log(f"val_{term.name}_losses", means[f"{term.name}_loss"], self.current_epoch)
        scores = validation_classification(outputs, self.class_names) if "cls_probs" in outputs else \
            {"macro_f1": float("nan"), "auc": float("nan"), "balanced_accuracy": float("nan")}
        self.logger.log("val_macro_f1", scores["macro_f1"], self.current_epoch)
        self.logger.log("val_auc", scores["auc"], self.current_epoch)
        self.logger.log("val_balanced_accuracy", scores["balanced_accuracy"], self.current_epoch)
        cls_score = scores["auc"] if np.isfinite(scores["auc"]) else scores["balanced_accuracy"]
        dice = self.logger.get_value("mean_fg_dice", step=-1)
        w = self.selection_seg_weight  # a part with weight 0 (a single-task baseline's missing task) is left out
        score = sum(weight * value for weight, value in ((w, dice), (1 - w, cls_score)) if weight > 0)
        self.logger.log("mtl_score", float(score), self.current_epoch)
        previous = self.logger.get_value("ema_mtl_score", step=None)
        restart = self._stage is not None and self.current_epoch == self._stage.start
        if not np.isfinite(score):
            self.print_to_log_file("the selection score is undefined this epoch (no annotated lesion pixel in the "
                                   "validation patches, or one class only): its EMA keeps its last value")
        self.logger.log("ema_mtl_score", selection_ema(previous, float(score), restart), self.current_epoch)

    def selection_description(self) -> str:
        if self.selection == "val_loss":
            return "lowest validation loss (the weighted total)"
        w = self.selection_seg_weight
        if w == 1:
            return "EMA of the pseudo Dice"
        if w == 0:
            return "EMA of the AUC (balanced accuracy where AUC is undefined)"
        return f"EMA of {w:g} x pseudo Dice + {1 - w:g} x AUC (balanced accuracy where AUC is undefined)"

    def _selection_scores(self) -> list[float]:
        """Per logged epoch the selection score, higher is better (NaN where the epoch's stage is not selectable)."""
        log = self.logger.get_value
        values = log("ema_mtl_score", step=None) if self.selection == "mtl_score" else \
            [-v for v in log("val_losses", step=None)]
        spans = self._stage_plan()
        return [float(v) if stage_at(spans, e).stage.select_best else float("nan") for e, v in enumerate(values)]

    def early_stop_reason(self) -> str | None:
        """Why training stops now, or None: the wall-clock budget of this run is spent
        (``nnUNet_mtl_max_train_minutes``), or the selection score has not improved for early_stopping_patience
        epochs."""
        budget, started = self._time_budget_s, self._run_started
        if budget is not None and started is not None and time() - started >= budget:
            return (f"time budget: {TIME_BUDGET_VAR}={budget / 60:g} minutes of training spent after "
                    f"{self.current_epoch} epochs; the last epoch's weights are the final checkpoint")
        if self.early_stopping_patience is None:
            return None
        scores = np.asarray(self._selection_scores(), dtype=float)
        if not np.isfinite(scores).any():
            return None
        best = int(np.nanargmax(scores))
        waited = len(scores) - 1 - best
        if waited < self.early_stopping_patience:
            return None
        return (f"early stopping: the {self.selection_description()} has not improved for {waited} epochs (best at "
                f"epoch {best}; patience {self.early_stopping_patience})")

    def on_epoch_end(self):
        # Same bookkeeping as nnU-Net's on_epoch_end, but the best checkpoint is chosen by the multitask score.
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        get = lambda k: self.logger.get_value(k, step=-1)  # noqa: E731
        self.print_to_log_file("train_loss", np.round(get("train_losses"), 4), "(" + "  ".join(
            f"{t.name} {get(f'train_{t.name}_losses'):.4f}" for t in self.terms) + ")")
        self.print_to_log_file("val_loss", np.round(get("val_losses"), 4), "(" + "  ".join(
            f"{t.name} {get(f'val_{t.name}_losses'):.4f}" for t in self.terms) + ")")
        self.print_to_log_file("Pseudo dice", [np.round(i, 4) for i in get("dice_per_class_or_region")])
        self.print_to_log_file(f"val AUC {get('val_auc'):.4f}  macro F1 {get('val_macro_f1'):.4f}  "
                               f"balanced acc {get('val_balanced_accuracy'):.4f}")
        extras = [f"train_{k} {get(f'train_{k}'):.4f}" for k in self.backward_rule.logged]
        if extras:
            self.print_to_log_file("  ".join(extras))
        self.print_to_log_file(f"Epoch time: "
                               f"{np.round(get('epoch_end_timestamps') - get('epoch_start_timestamps'), 2)} s")

        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_latest.pth"))
        score = get("ema_mtl_score") if self.selection == "mtl_score" else -get("val_losses")
        selectable = self._stage is None or self._stage.stage.select_best
        if selectable and np.isfinite(score) and (self._best_ema is None or score > self._best_ema):
            self._best_ema = score
            value = score if self.selection == "mtl_score" else -score  # the loss itself (nnU-Net's Dice part is < 0)
            self.print_to_log_file(f"New best ({self.selection_description()}): {np.round(value, 4)}")
            self.save_checkpoint(str(Path(self.output_folder) / "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
            for logger in self.logger.loggers:
                if isinstance(logger, TensorBoardLogger) and logger.writer is not None:
                    logger.writer.flush()  # an epoch's values visible in TensorBoard when it ends
        self.current_epoch += 1

    def run_training(self):
        """nnU-Net's training loop, which can stop early (``early_stopping_patience``; decided from the logged
        scores, so a run resumed with --c after it stopped does not train on)."""
        self.on_train_start()
        self._run_started = time()
        for epoch in range(self.current_epoch, self.num_epochs):
            reason = self.early_stop_reason()
            if reason is not None:
                self.print_to_log_file(reason)
                break
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        self.on_train_end()

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (its masks, ``--npz`` probabilities and ``summary.json`` in ``validation/``,
        written by its own code), in one pass that also gives the class probabilities of the same cases
        (``validation/class_predictions.csv``), so a cross-validation can be evaluated for both tasks with
        ``nnunet_mtl evaluate``.

        nnU-Net builds its predictor inside ``perform_actual_validation`` by calling the name ``nnUNetPredictor`` of
        its trainer module; for that call the name gives our predictor instead (:class:`ValidationPredictor`: the
        same sliding window, plus the class softmax the network computes in the same forward passes, and CPU
        autocast by :mod:`nnunet_mtl.precision`). Should nnU-Net's loop not predict exactly the fold's validation
        cases in the order it is known to (the dataset's sorted identifiers, split over ranks), the class
        probabilities come from a second pass over the cases, as before, and the log says so."""
        head = unwrap(self.network).head_config.kind != NO_HEAD
        if not self.segments:
            self.print_to_log_file("classification only: no segmentation of the validation cases (the decoder was "
                                   "never trained); class probabilities only")
            if self.local_rank == 0 and head:
                self.write_validation_class_predictions()
            return
        _, val_keys = self.do_split()
        if self.is_ddp:  # the keys nnU-Net gives this rank, in the order its dataset class sorts them
            val_keys = val_keys[self.local_rank:: dist.get_world_size()]
        cases = sorted(val_keys)
        with _nnunet_validation_predictor(cases if head else None) as made:
            super().perform_actual_validation(save_probabilities)
        if not head:
            return
        predictor = made[0] if made else None
        predicted = list(predictor.class_probabilities.items()) if predictor is not None else []
        complete = predictor is not None and predictor.validation_complete()
        if self.is_ddp:
            complete = all(gather([complete]))
            predicted = gather(predicted)
        if self.local_rank != 0:
            return
        if not complete:
            self.print_to_log_file("nnU-Net's validation did not predict the fold's validation cases as expected: the "
                                   "class probabilities come from a second pass over them")
            self.write_validation_class_predictions()
            return
        self._write_class_predictions(dict(predicted), predictor.class_names)

    def _write_class_predictions(self, probabilities: dict, class_names) -> Path:
        from nnunet_mtl.inference.class_predictions import write_class_predictions
        out = Path(self.output_folder) / "validation" / "class_predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_class_predictions(out, class_names, probabilities, merge_existing=False)  # the fold's validation set
        self.print_to_log_file(f"validation class probabilities: {out}")
        return out

    def write_validation_class_predictions(self) -> Path:
        """The class probabilities of the fold's validation cases from a pass of their own (a classification-only
        model, whose decoder nnU-Net's validation does not run; or the fallback above)."""
        from nnunet_mtl.inference.predictor import MultitaskPredictor
        self.set_deep_supervision_enabled(False)
        network = unwrap(self.network)
        network.eval()
        # the same predictor as `nnunet_mtl predict` (sliding window, test-time mirroring), on preprocessed data
        predictor = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                       perform_everything_on_device=True, device=self.device, verbose=False,
                                       verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        _, val_keys = self.do_split()
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                         folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        for key in val_keys:
            data, _, _, _ = dataset_val.load_case(key)
            predictor.predict_preprocessed_case(key, torch.from_numpy(np.asarray(data)))
        self.set_deep_supervision_enabled(True)
        return self._write_class_predictions(predictor.class_probabilities, predictor.class_names)


class _nnunet_validation_predictor:
    """While open, nnU-Net's trainer module builds :class:`ValidationPredictor` (``cases``: the validation cases in
    nnU-Net's order; None: a model without a class head, which gets CPU autocast only) where it builds
    ``nnUNetPredictor``; the predictors it made are listed in the value of ``with``. The name is restored on exit,
    whatever happens."""

    def __init__(self, cases: list[str] | None):
        self.cases, self.made = cases, []

    def __enter__(self) -> list:
        import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module
        from nnunet_mtl.inference.predictor import CPUAutocastPredictor, ValidationPredictor
        self.module, self.original = module, module.nnUNetPredictor

        def build(*args, **kwargs):
            predictor = ValidationPredictor(*args, cases=self.cases, **kwargs) if self.cases is not None else \
                CPUAutocastPredictor(*args, **kwargs)
            self.made.append(predictor)
            return predictor

        module.nnUNetPredictor = build
        return self.made

    def __exit__(self, *exc) -> None:
        self.module.nnUNetPredictor = self.original


# ---------------------------------------------------------------------------------------------- variants
class nnUNetTrainerMTL_nnUNetDA(nnUNetTrainerMTL):
    """nnU-Net's default 2D augmentation (rotations up to 180 degrees, flips along both axes, also at test time)."""
    ultrasound_augmentation = False


class nnUNetTrainerMTL_demo(DemoSchedule, nnUNetTrainerMTL):
    """The demo's short CPU schedule."""


class nnUNetTrainerMTL_tiny(TinySchedule, nnUNetTrainerMTL):
    """Smoke tests."""


class nnUNetTrainerMTL_cpu(CPUSchedule, nnUNetTrainerMTL):
    """The real-data CPU recipe's short schedule."""


class nnUNetTrainerMTL_cpu1k(CPU1kSchedule, nnUNetTrainerMTL):
    """The real-data comparisons' CPU budget: 1,000 iterations (docs/results.md)."""


class nnUNetTrainerMTL_cpu4k(CPU4kSchedule, nnUNetTrainerMTL):
    """The learning-curve schedule (4,000 iterations, a validation curve every 50)."""


class nnUNetTrainerMTL_paper(ThyroidPaperSchedule, nnUNetTrainerMTL):
    """The 'Vanilla Multitask' baseline of Salama et al. 2026 with their schedule."""


class nnUNetTrainerMTL_breastpaper(BreastPaperSchedule, nnUNetTrainerMTL):
    """The multitask baseline with Zhang, Moradi, Saha's schedule (their own seg_malig row, 0.9 L_seg + 0.1 L_cls
    with plain BCE, is nnUNetTrainerBIRADS_alpha0_paper)."""


class nnUNetTrainerMTL_fanpaper(FanPaperSchedule, nnUNetTrainerMTL):
    """The multitask baseline with Fan et al.'s schedule, next to the lesion-aware rows."""


def define_variant(base: type, name: str, namespace: dict, doc: str = "", bases: tuple = (), **attributes) -> type:
    """A trainer variant generated in a loop (say one per layer or per weight), defined as a module-level class of
    ``namespace``'s module so that nnU-Net's lookup finds it and it pickles like a written one."""
    cls = type(name, (*bases, base), {"__doc__": doc or None, "__module__": namespace["__name__"],
                                      "__qualname__": name, **attributes})
    if name in namespace:
        raise ValueError(f"trainer {name} is defined twice")
    namespace[name] = cls
    return cls
