"""Seam 3, backward rules: how one training step turns the loss terms into parameter gradients.

The base trainer zeroes the gradients, calls the rule, then takes nnU-Net's optimizer step (unscale, clip at 12,
step). AMP is handled there once: the rule gets ``autocast`` (a context-manager factory for the forward pass; a
no-op off CUDA) and ``scale`` (the grad scaler's ``scale``, or the identity) and must leave ``.grad`` equal to
``scale`` times the gradient it means.

A rule is a dataclass instance declared on a trainer (``backward = WeightedSum()``), copied per training run, with:

- ``__call__(network, data, compute_losses, weights, *, tasks, scale, autocast) -> StepResult``: one forward pass
  (``network(data, return_aux=True)``), ``compute_losses(outputs)`` -> {term: unweighted loss} (a
  :class:`~nnunet_mtl.seams.terms.TermLosses`: also what each term ``acts_on``, never to be read off its name),
  gradients into ``.grad``. ``tasks`` names the terms that are task objectives (:attr:`LossTerm.task`).
  ``network`` is the trainer's network as nnU-Net holds it (possibly DDP- or compile-wrapped; :func:`unwrap` gives
  the module);
- optional ``setup(network, log)`` once the network is built, ``loss_modules(tasks)`` (parameters the rule learns,
  owned by the head), ``check(weights, tasks)`` (raise ValueError when
  the rule cannot work with these weights), ``describe(weights, tasks)`` (one line for the training log);
- class flags ``compiles`` (torch.compile may be used), ``ddp_reducer`` (multi-GPU: True, the rule's one backward
  through the DDP-wrapped network lets DDP's reducer average the gradients; False, the trainer gives the rule the
  module inside the wrapper and averages the gradients over the ranks after the step,
  :mod:`nnunet_mtl.seams.distributed`), ``needs_encoder_gradient``
  (gradients at the encoder's outputs: a stage may not freeze the encoder), ``logged`` (names of the values of
  :attr:`StepResult.extras`, logged as ``train_<name>``).

Implemented: :class:`WeightedSum` (nnU-Net's step for the weighted total), :class:`GradientAggregation` (the slot
for gradient-aggregation baselines such as TorchJD's ``mtl_backward`` + an aggregator), and RLAR
(:class:`nnunet_mtl.methods.rlar.RLAR`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

import torch
from torch import nn

from nnunet_mtl.seams.terms import StepResult, weighted_total


def identity(x):
    return x


def no_autocast():
    from contextlib import nullcontext
    return nullcontext()


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(network, nn.parallel.DistributedDataParallel):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


@dataclass
class BackwardRule:
    name: ClassVar[str] = ""
    compiles: ClassVar[bool] = True
    ddp_reducer: ClassVar[bool] = True  # False: under DDP the trainer averages the gradients after the step
    needs_encoder_gradient: ClassVar[bool] = False  # True: stages may not freeze the encoder (gradients at z)
    logged: ClassVar[tuple[str, ...]] = ()
    # the rule works on the terms' losses only (it reads no mask itself), so partially annotated cases are the
    # terms' business (LossTerm.partial_masks); a rule that reads targets itself sets False unless it knows them
    partial_masks: ClassVar[bool] = True

    def validate(self) -> None:
        """When the trainer is created: raise ValueError for a setting that cannot work."""

    def setup(self, network: nn.Module, log: Callable[[str], None]) -> None:
        """Once, after nnU-Net built (and possibly wrapped) the network."""

    def loss_modules(self, tasks: Sequence[str]) -> dict[str, dict]:
        """Parameters the rule learns (say, one log-variance per task), declared like a term's loss modules
        (``{name: {"kind": ..., **params}}``): the head builds them, so they are in every checkpoint and in the
        optimizer, and the rule reaches them as ``unwrap(network).head.loss_modules[name]``."""
        return {}

    def check(self, weights: Mapping[str, float], tasks: Sequence[str]) -> None:
        """Raise ValueError with a one-line reason when this rule cannot train with ``weights``."""

    def describe(self, weights: Mapping[str, float], tasks: Sequence[str]) -> str:
        return f"backward: {self.name}"

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=identity,
                 autocast=no_autocast) -> StepResult:
        raise NotImplementedError


@dataclass
class WeightedSum(BackwardRule):
    """total = sum_t w_t L_t; one backward of the (scaled) total: nnU-Net's own step, with more terms."""

    name: ClassVar[str] = "weighted sum"

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=identity,
                 autocast=no_autocast) -> StepResult:
        with autocast():
            outputs = network(data, return_aux=True)
            losses = compute_losses(outputs)
            total = weighted_total(losses, weights)
        scale(total).backward()
        return StepResult({k: v.detach() for k, v in losses.items()}, total.detach())


@dataclass
class GradientAggregation(BackwardRule):
    """The slot for gradient-aggregation baselines.

    One forward pass; then ``aggregate(losses, features, shared_parameters)`` with
    - ``losses``: the weighted task losses (terms with ``task`` and a positive weight), scaled for AMP: each is
      ``scale`` times the loss, so a degree-1 homogeneous aggregator (a sum, UPGrad, PCGrad, MGDA) returns ``scale``
      times its aggregate, as the optimizer step expects; one that is not (Nash-MTL) must divide by the scale first;
    - ``features``: every encoder output that the decoder and the head read, as a cut of the graph (the network's
      ``feature_cut``: each output also feeds the next encoder stage, and only the aliases the decoder and the head
      read make the gradients at the features partial derivatives through which every parameter's gradient passes
      exactly once), so that no skip connection's gradient is lost and none is counted twice;
    - ``shared_parameters``: the encoder's trainable parameters.
    ``aggregate`` must add to ``.grad`` of every parameter: the aggregated gradient for the shared parameters and
    the tasks' plain gradients for the task-specific ones (decoder, head). TorchJD's ``mtl_backward(losses,
    features)`` followed by ``jac_to_grad(shared_parameters, aggregator)`` is such a function. Regularizer terms
    (``task`` False) are not aggregated: their plain gradient is added. A step whose losses are not finite (AMP's
    first steps overflow) falls back to the weighted sum, whose inf/NaN gradients make the grad scaler skip it and
    lower its scale, as in nnU-Net's own step. No torch.compile (an aggregator may take per-task Jacobians).
    Multi-GPU: DDP's reducer sees only what ``backward`` produces, not what an aggregator writes into ``.grad``, so
    the trainer averages the gradients over the ranks after the step (``ddp_reducer`` False); an aggregator may
    average its inputs over the ranks first (TorchJD's Jacobians:
    :func:`nnunet_mtl.methods.gradient_aggregation.torchjd_step`).
    """

    name: ClassVar[str] = "gradient aggregation"
    compiles: ClassVar[bool] = False
    ddp_reducer: ClassVar[bool] = False
    needs_encoder_gradient: ClassVar[bool] = True
    aggregate: Callable[[list, list, list], None] | None = None
    label: str = ""

    def aggregate_gradients(self, losses: list, features: list, shared: list) -> None:
        """The aggregation step (``aggregate`` by default; a subclass may override this method instead)."""
        self.aggregate(losses, features, shared)

    def check(self, weights, tasks) -> None:
        if self.aggregate is None and type(self).aggregate_gradients is GradientAggregation.aggregate_gradients:
            raise ValueError("GradientAggregation needs an aggregate function")
        if len([t for t in tasks if weights[t] > 0]) < 1:
            raise ValueError("gradient aggregation needs at least one task with a positive loss weight")

    def describe(self, weights, tasks) -> str:
        return f"backward: gradient aggregation ({self.label or getattr(self.aggregate, '__name__', 'custom')}) " \
               f"of tasks {[t for t in tasks if weights[t] > 0]} at every encoder output"

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=identity,
                 autocast=no_autocast) -> StepResult:
        with autocast():
            outputs = network(data, return_aux=True, feature_cut=True)
            losses = compute_losses(outputs)
        total = weighted_total(losses, weights)
        if not all(bool(torch.isfinite(v).all()) for v in losses.values()):
            scale(total).backward()
            return StepResult({k: v.detach() for k, v in losses.items()}, total.detach())
        task_losses = [scale(weights[t] * losses[t]) for t in losses if t in tasks and weights[t] > 0]
        others = [weights[t] * losses[t] for t in losses if t not in tasks]
        if others:  # regularizers: plain gradients, accumulated before the aggregation frees the graph
            scale(sum(others)).backward(retain_graph=True)
        shared = [p for p in unwrap(network).encoder.parameters() if p.requires_grad]
        self.aggregate_gradients(task_losses, list(outputs["skips"]), shared)
        return StepResult({k: v.detach() for k, v in losses.items()}, total.detach())
