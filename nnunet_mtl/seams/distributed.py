"""Multi-GPU training (nnU-Net's ``-num_gpus N``: one process per GPU, DDP) for the steps DDP's reducer cannot take.

DDP averages gradients over the ranks with hooks that fire while ``loss.backward()`` accumulates into ``.grad``
after a forward pass through the DDP wrapper. Three kinds of step do not fit that:

- a second differentiation (RLAR, Salama et al. 2026, Eq. 6: the penalty is a function of per-task gradients, so
  its gradient is a derivative of a derivative; DDP's hooks do not support the double backward);
- gradients written into ``.grad`` by an aggregator (TorchJD's ``jac_to_grad``), which DDP's hooks never see;
- stages that freeze parts of the network: DDP fixes the set of parameters it waits for when it wraps the
  network, so a parameter that stops getting a gradient stalls its reduction.

For these the trainer runs the backward rule on the module inside the wrapper (DDP's forward and hooks never run)
and then calls :func:`average_gradients`: the same mean over the ranks DDP computes, taken once after the step.
The initial weights are the same on every rank (DDP broadcasts rank 0's at wrapping), every rank applies the same
averaged gradient, so the weights stay the same everywhere, as under DDP. nnU-Net's networks have no buffers
that change in training (instance norm without running statistics); a term that keeps running statistics
all-reduces them itself (:class:`~nnunet_mtl.methods.birads_consistency.BIRADSPrior`).

Everything here is a no-op in a single process.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world_size() -> int:
    """The number of ranks (1 without an initialized process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_over_ranks(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its mean over the ranks; one all-reduce per dtype and device. Every rank
    must pass tensors of the same shapes in the same order."""
    if world_size() == 1 or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world_size()
        for t, mean in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(mean)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Each trainable parameter's ``.grad`` becomes the mean over the ranks (DDP's reduction: the sum divided by
    the number of ranks), a rank without a gradient for it counting as zeros. A parameter that no rank has a
    gradient for keeps ``.grad`` None (as in one process: the optimizer skips it)."""
    if world_size() == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    has = torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)
    dist.all_reduce(has)  # how many ranks have a gradient for each parameter
    reached = [p for p, n in zip(params, has.tolist()) if n > 0]
    for p in reached:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_over_ranks([p.grad for p in reached])


def averages_gradients_itself(rule, stages) -> bool:
    """Under DDP: True when a step of ``rule`` (a backward rule) with these training stages cannot go through
    DDP's reducer: a rule with ``ddp_reducer`` False, or a stage that freezes parts of the network."""
    return not rule.ddp_reducer or any(s.trainable is not None for s in stages)


def rule_step(rule, network, data, compute_losses, weights, *, average_itself: bool, **kwargs):
    """One step of the backward ``rule`` (gradients into ``.grad``; its StepResult). ``average_itself`` (``network``
    is DDP-wrapped): the rule runs on the module inside the wrapper, so DDP's forward and hooks never run, and the
    gradients are then averaged over the ranks (:func:`average_gradients`). Otherwise the rule runs on ``network``
    as it is (under DDP its backward goes through DDP's reducer)."""
    if not average_itself:
        return rule(network, data, compute_losses, weights, **kwargs)
    module = network.module
    result = rule(module, data, compute_losses, weights, **kwargs)
    average_gradients(module.parameters())
    return result
