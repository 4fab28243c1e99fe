"""The gradients of one RLAR training step (thyroid paper Eq. 4-7).

What is computed:

    total = sum_t w_t L_t + lambda_adv * P,   P = mean over the chosen layers of rlar_penalty([dL_t/dz_layer for t])

and every parameter's ``.grad`` is set to d total / d theta (times the AMP loss scale when one is given).

How, and why (measured, see benchmarks/bench_rlar_step.py and the README's "RLAR step"):
1. one forward pass of the whole network (encoder once, decoder once, head once); for nnU-Net's standard decoder
   it records what step 2 needs (``nnunet_mtl.autodiff.decoder_gradient``);
2. every task's gradient at z, with a graph, so that P can be differentiated:
   - seg: the loss's gradients at the decoder's outputs (autograd, a few element-wise operations), then the
     decoder's data gradient written out with differentiable adjoint operations: it walks only the path from the
     outputs to z, with operations whose derivatives PyTorch computes with its ordinary kernels. For z below the
     bottleneck, autograd carries it on through the encoder stages above z. Any other decoder:
     ``autograd.grad(L_seg, z, create_graph=True)``, the same values, slower;
   - cls and clin: ``autograd.grad`` through the head (and the encoder stages above z);
3. one ``backward`` of the total: it walks the forward graph once with the summed gradients of all losses and of
   the penalty, plus the double-backward path of P.
Measured slower and dropped: step 2 also returning the task losses' parameter gradients, so that only P is
differentiated afterwards (P's gradient must flow back through the decoder's forward graph anyway, because the
gradients at z depend on the decoder's activations, so that walk is then done twice instead of once).

AMP (DESIGN.md, PyTorch's gradient-penalty recipe): pass ``scale`` = the grad scaler's ``scale``. The gradients at
z are taken of scaled losses, so fp16 gradients do not underflow; the cosine is computed in fp32 and does not care
about the scale; the total is scaled for the backward, so the parameter gradients come out scaled exactly as in
nnU-Net's step (unscale_, clip, step as usual).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from nnunet_mtl.autodiff import decoder_input_gradients, unsupported
from nnunet_mtl.losses.rlar import rlar_penalty


def _identity(x):
    return x


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _seg_gradients(output: dict, decoder, loss: torch.Tensor, layers: Sequence[int], differentiable: bool,
                   autocast: Callable) -> list[torch.Tensor | None]:
    """dL_seg/dz at each layer, through the written-out decoder gradient (needs ``output['decoder_records']``)."""
    skips = output["skips"]
    top = len(skips) - 1
    outputs = output["seg"] if isinstance(output["seg"], (list, tuple)) else [output["seg"]]
    # the loss's gradient at each decoder output; None where its deep-supervision weight is 0
    seeds = torch.autograd.grad(loss, outputs, retain_graph=True, create_graph=differentiable, allow_unused=True)
    lowest = min(layers)
    with autocast(), torch.set_grad_enabled(differentiable):
        direct = decoder_input_gradients(decoder, output["decoder_records"], seeds, range(lowest, top))
    # below the bottleneck, z also reaches the output through the encoder stages above it
    total = {top: direct[top]}
    for k in range(top - 1, lowest - 1, -1):
        through = None if total[k + 1] is None else torch.autograd.grad(
            skips[k + 1], skips[k], total[k + 1], retain_graph=True, create_graph=differentiable)[0]
        total[k] = _add(direct.get(k), through)
    return [total[k] for k in layers]


def task_gradients(losses: dict[str, torch.Tensor], tasks: Sequence[str], output: dict, layers: Sequence[int], *,
                   decoder=None, scale: Callable = _identity, differentiable: bool = True,
                   autocast: Callable | None = None) -> dict[str, list[torch.Tensor]]:
    """{task: [dL_t/dz for z = output['skips'][k], k in layers]} (Eq. 4 before normalization), with a graph unless
    ``differentiable`` is False. The segmentation gradient is written out when ``output`` has the decoder's
    records (and ``decoder`` is given), else asked of autograd. A task that does not reach z gets zeros."""
    z = [output["skips"][k] for k in layers]
    grads = {}
    for t in tasks:
        if t == "seg" and decoder is not None and output.get("decoder_records") is not None:
            grads[t] = _seg_gradients(output, decoder, scale(losses[t]), layers, differentiable,
                                      autocast or nullcontext)
        else:
            grads[t] = torch.autograd.grad(scale(losses[t]), z, retain_graph=True, create_graph=differentiable,
                                           allow_unused=True)
    # a task whose loss does not reach z has a zero gradient there: its cosines are 0 by definition
    return {t: [g if g is not None else torch.zeros_like(zj) for g, zj in zip(gs, z)] for t, gs in grads.items()}


def rlar_penalty_at(losses: dict[str, torch.Tensor], tasks: Sequence[str], output: dict, layers: Sequence[int],
                    **kwargs) -> torch.Tensor:
    """P (Eq. 6 without lambda_adv): per layer, the penalty of the tasks' gradients at that layer's output z
    (Eq. 4-5), averaged over the layers. Keyword arguments as :func:`task_gradients`."""
    grads = task_gradients(losses, tasks, output, layers, **kwargs)
    return torch.stack([rlar_penalty([grads[t][j] for t in tasks]) for j in range(len(layers))]).mean()


def written_out_seg_gradient(network) -> str | None:
    """None if the RLAR step writes out this network's segmentation gradient, else why it asks autograd."""
    return unsupported(network.decoder)


def rlar_backward(network, data: torch.Tensor, task_losses: Callable[[dict], dict], task_weights: dict[str, float],
                  layers: Sequence[int], adv_weight: float, *, scale: Callable = _identity,
                  autocast: Callable | None = None,
                  fast: bool | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward, losses, penalty and all parameter gradients (accumulated into ``.grad``) of one RLAR step.

    network: a :class:`MultitaskUNet`; task_losses(output) -> {task: unweighted loss}; task_weights: {task: w_t}
    (the penalty's tasks are those with w_t > 0); layers: encoder stage indices whose outputs are z (the penalty is
    the mean over them); autocast: a context-manager factory for the forward pass (AMP), or None; fast: write out
    the segmentation gradient (None: whenever :func:`written_out_seg_gradient` allows; False: autograd only).
    Returns the unweighted losses and P (without lambda_adv), detached.
    """
    layers = sorted(set(int(k) for k in layers))
    if fast is None:
        fast = written_out_seg_gradient(network) is None
    with (autocast or nullcontext)():
        output = network(data, return_aux=True, record_decoder=fast)
        losses = task_losses(output)
    tasks = [t for t, w in task_weights.items() if w > 0]
    # the gradient of w_t L_t has the direction of the gradient of L_t (w_t > 0): the cosines are the same
    weighted = {t: task_weights[t] * losses[t] for t in tasks}
    # at lambda_adv = 0 the penalty is only logged: no graph for a double backward
    penalty = rlar_penalty_at(weighted, tasks, output, layers, decoder=network.decoder if fast else None,
                              scale=scale, differentiable=adv_weight > 0, autocast=autocast)
    total = sum(weighted.values()) + (adv_weight * penalty if adv_weight > 0 else 0)  # Eq. 7
    scale(total).backward()
    return {k: v.detach() for k, v in losses.items()}, penalty.detach()
