"""Seam 5, staged schedules: a training run as consecutive stages, each with its own loss weights, trainable parts
and optimizer settings (e.g. Fan et al.'s Algorithm 1: pre-train the localization branch, then train everything).

A trainer declares ``stages = (Stage("pretrain", epochs=0.3, weights={"cls": 0.0}, select_best=False),
Stage("joint"))``. The base trainer, at the start of every epoch, enters the stage that epoch belongs to:

- loss weights: the trainer's ``loss_weights`` updated by the stage's ``weights``;
- trainable parts: ``None`` = everything; else names of parts of the network (``"encoder"``, ``"decoder"``,
  ``"head"``, or a submodule path such as ``"head.attention"``); the other parameters get ``requires_grad = False``
  and their modules run in eval mode (dropout off, batch-norm statistics frozen);
- optimizer: ``lr`` (the stage's initial learning rate; default the trainer's ``initial_lr``) and
  ``weight_decay``; the learning rate decays over the stage's own epochs, as nnU-Net's poly schedule (for a single
  stage exactly nnU-Net's ``PolyLRScheduler``) or by cosine annealing (the trainer's ``lr_schedule``);
  ``reset_optimizer`` starts the stage with a fresh optimizer state (momentum, Adam moments);
- checkpoint selection: ``select_best=False`` stages never write ``checkpoint_best.pth`` (their head may be
  untrained); the selection score's moving average restarts at the first epoch of every stage;
- batch composition (``sampling``, for partially annotated datasets, cases.csv column ``mask``): ``"random"``
  (nnU-Net's own: cases drawn uniformly), ``"annotated"`` (only cases with a mask, full or box: Fan et al.'s stage 1)
  or ``"mixed"`` (every batch half annotated, half unannotated cases: the m labelled and m' unlabelled images of
  Fan et al.'s Algorithm 1, stage 2); see :mod:`nnunet_mtl.trainers.sampling`.

The stage index is logged every epoch (``stage``, in the checkpoint and ``progress.png``), stage changes are written
to the training log, and ``nnUNetv2_train --c`` resumes inside the right stage (the stage is a function of the
epoch; the optimizer state saved in the checkpoint belongs to it).

``epochs``: an int (that many epochs), a float in (0, 1) (that fraction of ``num_epochs``, at least 1 epoch) or
None (the rest; only the last stage). Nothing here imports nnU-Net.

Adding a stage: docs/extending.md (the example there is trained and resumed by tests/test_seams.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from torch.optim.lr_scheduler import _LRScheduler


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int | float | None = None
    weights: dict = field(default_factory=dict)
    trainable: tuple[str, ...] | None = None
    lr: float | None = None
    weight_decay: float | None = None
    reset_optimizer: bool = False
    select_best: bool = True
    sampling: str = "random"


SAMPLING_MODES = ("random", "annotated", "mixed")


@dataclass(frozen=True)
class StageSpan:
    index: int
    stage: Stage
    start: int  # first epoch
    end: int    # one past the last epoch

    def describe(self, num_stages: int) -> str:
        return f"stage {self.index + 1}/{num_stages} {self.stage.name!r} (epochs {self.start}-{self.end - 1})"


def resolve_stages(stages: Sequence[Stage], num_epochs: int) -> list[StageSpan]:
    """Epoch ranges of the stages; ValueError (one line) when they do not tile 0..num_epochs-1."""
    if not stages:
        raise ValueError("a trainer needs at least one stage")
    if num_epochs < 1:
        raise ValueError(f"num_epochs is {num_epochs}; expected at least 1")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must differ: {names}")
    spans, start = [], 0
    for i, stage in enumerate(stages):
        if stage.sampling not in SAMPLING_MODES:
            raise ValueError(f"stage {stage.name!r}: sampling {stage.sampling!r}; expected one of "
                             f"{', '.join(SAMPLING_MODES)}")
        e = stage.epochs
        if e is None:
            if i != len(stages) - 1:
                raise ValueError(f"stage {stage.name!r} has epochs=None (the rest) but is not the last stage")
            length = num_epochs - start
        elif isinstance(e, float) and not float(e).is_integer():
            if not 0 < e < 1:
                raise ValueError(f"stage {stage.name!r}: epochs={e}; a fraction of num_epochs must lie in (0, 1)")
            length = max(1, round(e * num_epochs))
        elif isinstance(e, (int, float)) and not isinstance(e, bool) and e >= 1:
            length = int(e)
        else:
            raise ValueError(f"stage {stage.name!r}: epochs={e!r}; expected an int >= 1, a fraction in (0, 1) or None")
        if i == len(stages) - 1 and e is not None and start + length != num_epochs:
            raise ValueError(f"stages {names} cover {start + length} epochs but num_epochs is {num_epochs}; give the "
                             f"last stage epochs=None")
        if length < 1 or start + length > num_epochs:
            raise ValueError(f"stages {names} need more than num_epochs={num_epochs} epochs (stage {stage.name!r} "
                             f"would start at epoch {start})")
        spans.append(StageSpan(i, stage, start, start + length))
        start += length
    return spans


def stage_at(spans: Sequence[StageSpan], epoch: int) -> StageSpan:
    for span in spans:
        if span.start <= epoch < span.end:
            return span
    return spans[-1]  # past the end (nnU-Net's final checkpoint bookkeeping): the last stage


class StagedLRScheduler(_LRScheduler):
    """The learning rate within each stage: e counts the epochs since the stage began, E is its length and lr_0 its
    ``lr`` (or ``initial_lr``). ``shape`` "poly": nnU-Net's lr_0 (1 - e / E) ** 0.9 (one stage: exactly nnU-Net's
    PolyLRScheduler); "cosine": cosine annealing lr_0 (1 + cos(pi e / E)) / 2."""

    SHAPES = ("poly", "cosine")

    def __init__(self, optimizer, initial_lr: float, spans: Sequence[StageSpan], shape: str = "poly",
                 exponent: float = 0.9):
        if shape not in self.SHAPES:
            raise ValueError(f"learning-rate schedule {shape!r}; expected one of {', '.join(self.SHAPES)}")
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.spans = list(spans)
        self.shape = shape
        self.exponent = exponent
        self.ctr = 0
        super().__init__(optimizer, -1)

    def lr_at(self, epoch: int) -> float:
        span = stage_at(self.spans, epoch)
        lr0 = span.stage.lr if span.stage.lr is not None else self.initial_lr
        progress = (epoch - span.start) / (span.end - span.start)
        if self.shape == "cosine":
            return lr0 * 0.5 * (1 + math.cos(math.pi * progress))
        return lr0 * (1 - progress) ** self.exponent

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        new_lr = self.lr_at(current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self._last_lr
