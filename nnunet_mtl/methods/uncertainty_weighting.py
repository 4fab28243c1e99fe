"""Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics"): each task's loss is weighted by a learned homoscedastic uncertainty.

Kendall et al. 2018 (Sec. 3.2) derive, for a classification likelihood with a learned temperature sigma_t, the
objective (1 / sigma_t^2) L_t + log sigma_t per task. With s_t = log sigma_t^2 (the parametrisation they train, for
numerical stability) that is

    total = sum_t [ exp(-s_t) w_t L_t + s_t / 2 ]  +  the regularizer terms, with their fixed weights,

where w_t is the trainer's loss weight (1 for both tasks of nnUNetTrainerMTL). Both our tasks are classifications
(pixel-wise for the segmentation, per image for the class), so both use this form; our segmentation loss is
nnU-Net's Dice + CE rather than a pure log-likelihood, a stated deviation (the form is the common practice for
such losses). s_t starts at 0 (sigma_t = 1: the weighted sum) and is learned with the network, without weight
decay. The s_t live in the head (a loss module), so they are saved in every checkpoint, restored by ``--c`` and
logged every epoch as ``train_sigma_<task>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

from nnunet_mtl.seams.backward import BackwardRule, identity, no_autocast, unwrap
from nnunet_mtl.seams.heads import register_loss_module
from nnunet_mtl.seams.terms import StepResult

MODULE = "uncertainty"
KIND = "log_variances"


@register_loss_module(KIND)
class LogVariances(nn.Module):
    """s_t = log sigma_t^2, one per task, in ``tasks`` order."""

    no_weight_decay = True

    def __init__(self, tasks: Sequence[str] = ("seg", "cls")):
        super().__init__()
        self.tasks = list(tasks)
        self.log_variances = nn.Parameter(torch.zeros(len(self.tasks)))


def uncertainty_weighted_total(losses: dict, weights: dict, log_variances: torch.Tensor,
                               tasks: Sequence[str]) -> torch.Tensor:
    """sum_t [exp(-s_t) w_t L_t + s_t / 2] over ``tasks`` (in ``log_variances`` order) plus w_r L_r of every other
    term (Kendall et al. 2018, Sec. 3.2; see the module docstring)."""
    total = 0.0
    for k, task in enumerate(tasks):
        s = log_variances[k]
        total = total + torch.exp(-s) * weights[task] * losses[task] + 0.5 * s
    for name, loss in losses.items():
        if name not in tasks and weights.get(name, 0.0) != 0:
            total = total + weights[name] * loss
    return total


@dataclass
class UncertaintyWeighting(BackwardRule):
    """The backward rule: one backward of :func:`uncertainty_weighted_total`."""

    name: ClassVar[str] = "uncertainty weighting (Kendall et al. 2018)"
    logged: ClassVar[tuple[str, ...]] = ("sigma_seg", "sigma_cls")

    def loss_modules(self, tasks: Sequence[str]) -> dict[str, dict]:
        return {MODULE: {"kind": KIND, "tasks": list(tasks)}}

    def check(self, weights, tasks) -> None:
        if not any(weights.get(t, 0) > 0 for t in tasks):
            raise ValueError("uncertainty weighting needs at least one task with a positive loss weight")

    def describe(self, weights, tasks) -> str:
        return (f"backward: uncertainty weighting (Kendall et al. 2018): sum_t exp(-s_t) w_t L_t + s_t / 2 over "
                f"tasks {list(tasks)}, s_t = log sigma_t^2 learned from 0")

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=identity,
                 autocast=no_autocast) -> StepResult:
        module = unwrap(network).head.loss_modules[MODULE]
        with autocast():
            outputs = network(data, return_aux=True)
            losses = compute_losses(outputs)
        total = uncertainty_weighted_total(losses, weights, module.log_variances.float(), module.tasks)
        scale(total).backward()
        sigmas = torch.exp(0.5 * module.log_variances.detach())
        extras = {f"sigma_{t}": sigmas[k] for k, t in enumerate(module.tasks)}
        return StepResult({k: v.detach() for k, v in losses.items()}, total.detach(), extras)
