"""The gradients of one RLAR training step (thyroid paper Eq. 4-7).

What is computed:

    total = sum_t w_t L_t + lambda_adv * P,   P = mean over the chosen layers of rlar_penalty([dL_t/dz_layer for t])

and every parameter's ``.grad`` is set to d total / d theta (times the AMP loss scale when one is given).

How, and why this order (measured, see benchmarks/bench_rlar_step.py and the README's RLAR section):
1. one forward pass of the whole network (encoder once, decoder once, head once);
2. per task, ``autograd.grad(w_t L_t, z, create_graph=True)``: only the data-gradient path from the loss down to z
   is walked (no weight gradients), and recorded so that P can be differentiated;
3. one ``backward`` of the total: it walks the forward graph once with the summed gradients of all losses and of
   the penalty, plus the double-backward path of P.
We also tried the alternative the issue suggests (step 2 returns the parameter gradients of the task losses as
well, then only P is differentiated): it was 8-10 % slower here, because P's gradient has to flow back through
the decoder's forward graph anyway (the gradients at z depend on the decoder's activations), so that walk is then
done twice instead of once.

AMP (DESIGN.md, PyTorch's gradient-penalty recipe): pass ``scale`` = the grad scaler's ``scale``. The gradients at
z are taken of scaled losses, so fp16 gradients do not underflow; the cosine is computed in fp32 and does not care
about the scale; the total is scaled for the backward, so the parameter gradients come out scaled exactly as in
nnU-Net's step (unscale_, clip, step as usual).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from nnunet_mtl.losses.rlar import rlar_penalty


def _identity(x):
    return x


def rlar_penalty_at(losses: dict[str, torch.Tensor], tasks: Sequence[str], z: Sequence[torch.Tensor],
                    scale: Callable = _identity, differentiable: bool = True) -> torch.Tensor:
    """P (Eq. 6 without lambda_adv): per layer, the penalty of the tasks' gradients at that layer's output z
    (Eq. 4-5), averaged over the layers; differentiable (create_graph) unless only its value is wanted."""
    per_layer = []
    grads = {t: torch.autograd.grad(scale(losses[t]), list(z), retain_graph=True, create_graph=differentiable,
                                    allow_unused=True) for t in tasks}
    for j, zj in enumerate(z):
        # a task whose loss does not reach z has a zero gradient there: its cosines are 0 by definition
        per_layer.append(rlar_penalty([grads[t][j] if grads[t][j] is not None else torch.zeros_like(zj)
                                       for t in tasks]))
    return torch.stack(per_layer).mean()


def rlar_backward(network, data: torch.Tensor, task_losses: Callable[[dict], dict], task_weights: dict[str, float],
                  layers: Sequence[int], adv_weight: float, *, scale: Callable = _identity,
                  autocast: Callable | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward, losses, penalty and all parameter gradients (accumulated into ``.grad``) of one RLAR step.

    network: a :class:`MultitaskUNet`; task_losses(output) -> {task: unweighted loss}; task_weights: {task: w_t}
    (the penalty's tasks are those with w_t > 0); layers: encoder stage indices whose outputs are z (the penalty is
    the mean over them); autocast: a context-manager factory for the forward pass (AMP), or None.
    Returns the unweighted losses and P (without lambda_adv), detached.
    """
    layers = sorted(set(int(k) for k in layers))
    with (autocast or nullcontext)():
        output = network(data, return_aux=True)
        losses = task_losses(output)
    tasks = [t for t, w in task_weights.items() if w > 0]
    z = [output["skips"][k] for k in layers]
    # the gradient of w_t L_t has the direction of the gradient of L_t (w_t > 0): the cosines are the same
    weighted = {t: task_weights[t] * losses[t] for t in tasks}
    # at lambda_adv = 0 the penalty is only logged: no graph for a double backward
    penalty = rlar_penalty_at(weighted, tasks, z, scale, differentiable=adv_weight > 0)
    total = sum(weighted.values()) + (adv_weight * penalty if adv_weight > 0 else 0)  # Eq. 7
    scale(total).backward()
    return {k: v.detach() for k, v in losses.items()}, penalty.detach()
