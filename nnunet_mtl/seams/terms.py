"""Seam 2, loss terms: a name, a weight (the trainer's ``loss_weights``) and a function of (network outputs, batch).

Training and validation call the same :func:`compute_losses`; the base trainer logs every term as
``train_<name>_losses`` / ``val_<name>_losses`` and draws it in ``progress.png``, with nothing else to override.
A term is an object (declared in a trainer's ``terms`` tuple, copied per training run) with:

- ``name``: the log key and the key of ``loss_weights``;
- ``task``: True for a task objective of its own (segmentation, classification, clinical guidance): RLAR and
  gradient aggregation treat each task separately; False for a regularizer, which is only added to the total;
- ``acts_on``: which of the network's outputs the loss is computed from (:data:`OUTPUTS`): a backward rule that
  treats outputs differently reads it, never the name (RLAR writes out the gradient at z of a task that acts on
  the segmentation output alone, and asks autograd for every other);
- ``__call__(outputs, batch)``: the unweighted loss (a scalar tensor);
- optionally ``setup(setup)`` (once, at train start: class weights, cached targets ...), ``head_params()`` (fields
  of the head's config this term needs, e.g. the guided width), ``loss_modules()`` (parameters/buffers the head
  owns for this term, see :mod:`nnunet_mtl.seams.heads`) and ``plans_entries()`` (what the predictor must know).

Nothing here imports nnU-Net: terms are tested without it.

Adding a term: docs/extending.md (the example there is trained by tests/test_seams.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn


@dataclass
class Setup:
    """What a term may use once, at train start."""

    cases: Any                    # nnunet_mtl.dataset.case_table.CaseTable of the training cases
    train_keys: list[str]         # this fold's training cases
    class_names: list[str]        # by class index
    device: torch.device
    log: Callable[[str], None]    # the trainer's training log
    nnunet_loss: Callable | None = None  # nnU-Net's segmentation loss (Dice + CE, deep supervision)
    preprocessed_folder: Path | None = None   # nnUNet_preprocessed/DatasetNNN_X
    raw_folder: Path | None = None            # nnUNet_raw/DatasetNNN_X, when reachable
    dataset_name: str = ""
    main_process: bool = True     # rank 0 (progress bars, shared files)
    num_processes: int = 2


@dataclass
class Batch:
    """One batch as a term sees it: nnU-Net's data and targets plus per-case lookups by nnU-Net's case keys."""

    data: torch.Tensor
    target: torch.Tensor | list          # nnU-Net's segmentation target(s), highest resolution first
    keys: Sequence[str]
    cases: Any = None                    # CaseTable
    training: bool = True
    epoch: int = 0
    stage: str = ""
    network: nn.Module | None = None     # the bare network (its head's loss modules)

    def case(self, column: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The case table's numeric ``column`` for this batch's cases, in batch order, on the data's device."""
        return self.cases.tensor(column, self.keys, device=self.data.device, dtype=dtype)

    def values(self, column: str) -> list:
        """Any column (text too, e.g. ``patient_id``) for this batch's cases, in batch order."""
        return self.cases.values(column, self.keys)

    @property
    def seg_target(self) -> torch.Tensor:
        """The full-resolution segmentation target."""
        return self.target[0] if isinstance(self.target, (list, tuple)) else self.target

    def loss_module(self, name: str) -> nn.Module:
        """A loss module owned by the network's head (declared by a term's ``loss_modules``). Under multi-GPU
        training DDP copies rank 0's buffers to the other ranks at every forward pass: a term that updates running
        statistics must all-reduce them itself (or its trainer must refuse DDP)."""
        modules = self.network.head.loss_modules
        if name not in modules:
            raise KeyError(f"the head owns no loss module {name!r} (it has: {', '.join(modules) or 'none'})")
        return modules[name]


# What a loss term is computed from, among the network's outputs (LossTerm.acts_on): name -> what it is
SEGMENTATION, CLASSIFICATION, EMBEDDING, ATTENTION, LOSS_MODULE = (
    "segmentation", "classification", "embedding", "attention", "loss_module")
OUTPUTS = {
    SEGMENTATION: "outputs['seg']: nnU-Net's decoder logits (a list over the deep-supervision scales in training)",
    CLASSIFICATION: "outputs['logits']: the head's class logits",
    EMBEDDING: "outputs['embedding']: the embedding the head's linear classifier reads",
    ATTENTION: "outputs['attention'] / outputs['attention_logits']: a head's lesion map",
    LOSS_MODULE: "batch.loss_module(name): parameters and buffers the head owns for the term",
}


class LossTerm:
    name: ClassVar[str] = ""
    task: ClassVar[bool] = True
    # every network output the loss is computed from (keys of OUTPUTS); () = not declared, which a backward rule
    # must read as "any of them" (RLAR then takes the term's gradient at z from autograd)
    acts_on: ClassVar[tuple[str, ...]] = ()
    # True: the term knows cases whose mask is a box or missing (cases.csv column mask; their label maps hold nnU-Net's
    # ignore label, see nnunet_mtl.dataset.contract): it never reads an ignore pixel as lesion or background. A
    # trainer refuses such cases unless every one of its terms (and its backward rule) knows them.
    partial_masks: ClassVar[bool] = False

    def validate(self) -> None:
        """When the trainer is created: raise ValueError (or NnunetMtlError) for a setting that cannot work."""

    def setup(self, setup: Setup) -> None:
        """Once per training run, before the first step."""

    def head_params(self) -> dict:
        return {}

    def loss_modules(self) -> dict[str, dict]:
        return {}

    def plans_entries(self) -> dict:
        return {}

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TermLosses(dict):
    """{term name: unweighted loss}, a dict that also carries each term's declaration :attr:`LossTerm.acts_on` as
    ``acts_on`` ({term name: tuple of outputs}): what a backward rule gets from ``compute_losses``, so it knows what
    each loss is computed from without going by the terms' names."""

    def __init__(self, losses: Mapping[str, torch.Tensor], acts_on: Mapping[str, tuple[str, ...]]):
        super().__init__(losses)
        self.acts_on = dict(acts_on)


def compute_losses(terms: Sequence[LossTerm], outputs: dict, batch: Batch) -> TermLosses:
    """{term name: unweighted loss}, in the order of ``terms`` (training and validation alike), with the terms'
    ``acts_on`` (:class:`TermLosses`)."""
    return TermLosses({term.name: term(outputs, batch) for term in terms},
                      {term.name: tuple(term.acts_on) for term in terms})


def acting_on_alone(losses: Mapping[str, torch.Tensor], output: str) -> list[str]:
    """The terms of ``losses`` (a :class:`TermLosses`) that declare they are computed from ``output`` alone
    (``acts_on == (output,)``); none for a plain dict, which carries no declaration."""
    acts_on = getattr(losses, "acts_on", {})
    return [name for name in losses if tuple(acts_on.get(name, ())) == (output,)]


def weighted_total(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum_t w_t L_t, in the order of ``losses`` (a term with weight 0 still contributes 0 * L_t, so that under the
    weighted-sum rule its parameters get a (zero) gradient, which multi-GPU training expects of every parameter)."""
    return sum(weights[name] * loss for name, loss in losses.items())


def check_weights(terms: Sequence[LossTerm], weights: Mapping[str, float], where: str) -> None:
    """Every term has a finite, non-negative weight and every weight names a term (ValueError otherwise)."""
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two loss terms share a name: {names}")
    missing = [n for n in names if n not in weights]
    unknown = [n for n in weights if n not in names]
    if missing or unknown:
        raise ValueError(f"{where}: loss_weights {dict(weights)} do not match the terms {names}"
                         + (f" (no weight for {', '.join(missing)})" if missing else "")
                         + (f" (no term {', '.join(unknown)})" if unknown else ""))
    for name, w in weights.items():
        if not (isinstance(w, (int, float)) and w >= 0 and w == w and w != float("inf")):
            raise ValueError(f"{where}: loss weight of {name!r} is {w!r}; expected a finite number >= 0")


@dataclass
class StepResult:
    """What a backward rule returns: the unweighted losses and the total (both detached), and extra values to log
    as ``train_<name>`` (e.g. RLAR's penalty)."""

    losses: dict[str, torch.Tensor]
    total: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
