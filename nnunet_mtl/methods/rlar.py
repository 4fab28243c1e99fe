"""Representation-level adversarial regularization (RLAR; Salama et al. 2026, Sec. 2.3-2.4, Eq. 4-7).

For each task loss L_t (t in {seg, cls, clin}) take its gradient at the shared representation z (the bottleneck by
default), flatten it per sample, and penalize the alignment of every pair of tasks:

- Eq. 4: delta_t = epsilon grad_z L_t / (||grad_z L_t|| + epsilon), the task's gradient at z normalized to an
  epsilon-length direction; f_t^(i) is sample i's part of it, flattened. A cosine does not change under positive
  scaling, so the normalization drops out and the penalty is computed on the gradients directly;
- Eq. 5: sim_tt'^(i) = cos(f_t^(i), f_t'^(i));
- Eq. 6: L_RLAR = lambda_adv * P, P = mean over samples of the mean over task pairs of |sim_tt'^(i)|;
  lambda_adv = 0.1 (P lies in [0, 1]);
- Eq. 7: total = w_seg L_seg + w_cls L_cls + w_clin L_clin + L_RLAR.

Choice (Eq. 6 is ambiguous, docs/clinical_guidance_rlar.md): its sum runs over t != t' with the factor
2 / (|T| (|T| - 1)); we read it as the mean over the |T| (|T| - 1) / 2 unordered pairs, each pair once. The tasks
are the loss terms marked ``task`` with a positive weight; regularizer terms are added to the total only.
Where z is (Tables 3-4): :data:`RLAR_LAYERS`.

How one step is computed (:func:`rlar_backward`; measured in benchmarks/bench_rlar_step.py,
docs/clinical_guidance_rlar.md):
1. one forward pass of the whole network; for nnU-Net's standard decoder it records what step 2 needs
   (:mod:`nnunet_mtl.autodiff.decoder_gradient`);
2. every task's gradient at z, with a graph, so that P can be differentiated:
   - a task whose loss term acts on the segmentation output alone (:attr:`LossTerm.acts_on
     <nnunet_mtl.seams.terms.LossTerm.acts_on>` is ``("segmentation",)``, whatever the term's name; L_seg's):
     the loss's gradients at the decoder's outputs (autograd, a few element-wise operations), then the decoder's
     data gradient written out with differentiable adjoint operations: it walks only the path from the outputs to
     z. For z below the bottleneck, autograd carries it on through the encoder stages above z. Any other decoder:
     ``autograd.grad(L_seg, z, create_graph=True)``, the same values, slower;
   - every other task (cls and clin; a term that does not declare ``acts_on``): ``autograd.grad`` through the head
     (and the encoder stages above z);
3. one ``backward`` of the total: it walks the forward graph once with the summed gradients of all losses and of
   the penalty, plus the double-backward path of P.
Measured slower and dropped: step 2 also returning the task losses' parameter gradients, so that only P is
differentiated afterwards (P's gradient must flow back through the decoder's forward graph anyway).

AMP (PyTorch's gradient-penalty recipe): the gradients at z are taken of scaled losses, so fp16 gradients do not
underflow; the cosine is computed in fp32 and does not care about the scale; the total is scaled for the
backward, so the parameter gradients come out scaled exactly as in nnU-Net's step. torch.compile cannot
differentiate twice (no compile). Multi-GPU: DDP does not support double backward through its hooks, so each rank
takes this step on the module inside the wrapper, with the penalty of its own batch, and the trainer averages the
parameter gradients over the ranks afterwards (:mod:`nnunet_mtl.seams.distributed`).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, ClassVar, Sequence

import torch

from nnunet_mtl.autodiff import decoder_input_gradients, unsupported, use_fast_instance_norm
from nnunet_mtl.seams.backward import BackwardRule, identity, no_autocast, unwrap
from nnunet_mtl.seams.terms import SEGMENTATION, StepResult, acting_on_alone

ZERO_NORM = 1e-20  # below this a per-sample gradient counts as zero: its cosine is defined as 0

# where to regularize (Tables 3-4): names -> encoder stage indices, for an encoder of n stages (n-1 = bottleneck)
RLAR_LAYERS = {
    "bottleneck": lambda n: [n - 1],          # z~ of Sec. 2.3, the default
    "last": lambda n: [n - 2],                # the last encoder stage before the bottleneck
    "mid": lambda n: [(n - 1) // 2],          # the middle stage of the encoder
    "last3": lambda n: [n - 3, n - 2, n - 1],  # mean of the penalties at the last three stages
}


# ------------------------------------------------------------------------------------------------ the penalty
def pairwise_abs_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos| per sample of two (B, N) tensors (Eq. 5); 0 where either vector is zero, with a finite gradient."""
    dot = (a * b).sum(1)
    norm_product = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    valid = norm_product > ZERO_NORM
    # the denominator is replaced by 1 where invalid, so no inf/NaN can leak into the backward pass
    cosine = dot / torch.where(valid, norm_product, torch.ones_like(norm_product))
    return torch.where(valid, cosine.abs(), torch.zeros_like(cosine))


def rlar_penalty(task_grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 6 without lambda_adv: mean over samples of the mean over unordered task pairs of |cos|.

    ``task_grads``: one tensor per task, all of shape (B, ...) (the gradient of each task loss at z). Computed in
    float32 (or float64 for float64 input) (under AMP the gradients may be fp16 and scaled; the cosine ignores scale).
    """
    if len(task_grads) < 2:
        raise ValueError(f"RLAR needs at least two task gradients, got {len(task_grads)}")
    shapes = {tuple(g.shape) for g in task_grads}
    if len(shapes) != 1:
        raise ValueError(f"task gradients must have one shape, got {sorted(shapes)}")
    # Eq. 4: f_t^(i), flattened per sample; at least float32 (fp16 dot products over a whole feature map overflow)
    flat = [g.reshape(g.shape[0], -1) for g in task_grads]
    flat = [f.float() if f.dtype in (torch.float16, torch.bfloat16) else f for f in flat]
    pairs = [pairwise_abs_cosine(flat[i], flat[j]) for i, j in combinations(range(len(flat)), 2)]  # Eq. 5
    return torch.stack(pairs, 1).mean(1).mean(0)  # Eq. 6: mean over pairs, then over samples


# ------------------------------------------------------------------------------------------------ gradients at z
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
                   decoder=None, scale: Callable = identity, differentiable: bool = True,
                   autocast: Callable | None = None,
                   segmentation_tasks: Sequence[str] = ()) -> dict[str, list[torch.Tensor]]:
    """{task: [dL_t/dz for z = output['skips'][k], k in layers]} (Eq. 4 before normalization), with a graph unless
    ``differentiable`` is False. The gradient of a task in ``segmentation_tasks`` (its loss is computed from the
    segmentation output alone) is written out when ``output`` has the decoder's records (and ``decoder`` is given);
    every other gradient is asked of autograd. A task that does not reach z gets zeros."""
    z = [output["skips"][k] for k in layers]
    grads = {}
    for t in tasks:
        if t in segmentation_tasks and decoder is not None and output.get("decoder_records") is not None:
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


def why_seg_gradient_not_written_out(network) -> str | None:
    """None if the RLAR step can write out the segmentation gradient at z of this network's decoder, else the reason
    it asks autograd (a decoder that :mod:`nnunet_mtl.autodiff` does not know)."""
    return unsupported(network.decoder)


def rlar_backward(network, data: torch.Tensor, task_losses: Callable[[dict], dict], task_weights: dict[str, float],
                  layers: Sequence[int], adv_weight: float, *, tasks: Sequence[str] | None = None,
                  scale: Callable = identity, autocast: Callable | None = None, fast: bool | None = None,
                  segmentation_tasks: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward, losses, penalty and all parameter gradients (accumulated into ``.grad``) of one RLAR step.

    network: a :class:`~nnunet_mtl.networks.multitask_unet.MultitaskUNet`; task_losses(output) -> {term: unweighted
    loss}; task_weights: {term: w_t}; tasks: the terms whose gradients the penalty compares (default: every term
    with w_t > 0; the others with w_t > 0 are only added to the total, terms with w_t = 0 not at all); layers:
    encoder stage indices whose outputs are z (the penalty is the mean over them); autocast: a context-manager
    factory for the forward pass (AMP), or None; fast: write out the segmentation gradient (None: whenever
    :func:`why_seg_gradient_not_written_out` finds no reason against it; False: autograd); segmentation_tasks: the
    terms computed from the segmentation output alone, whose gradient is written out (None: those that declare it,
    ``acts_on``, in the :class:`~nnunet_mtl.seams.terms.TermLosses` that ``task_losses`` returns; none for a plain
    dict). Returns the unweighted losses and P (without lambda_adv), detached.
    """
    layers = sorted(set(int(k) for k in layers))
    if fast is None:
        fast = why_seg_gradient_not_written_out(network) is None
    with (autocast or nullcontext)():
        output = network(data, return_aux=True, record_decoder=fast)
        losses = task_losses(output)
    if segmentation_tasks is None:
        segmentation_tasks = acting_on_alone(losses, SEGMENTATION)
    if tasks is None:
        tasks = [t for t, w in task_weights.items() if w > 0]
    tasks = [t for t in tasks if task_weights[t] > 0]
    # the gradient of w_t L_t has the direction of the gradient of L_t (w_t > 0): the cosines are the same
    weighted = {t: task_weights[t] * losses[t] for t in task_weights if task_weights[t] > 0}
    # at lambda_adv = 0 the penalty is only logged: no graph for a double backward
    penalty = rlar_penalty_at(weighted, tasks, output, layers, decoder=network.decoder if fast else None,
                              scale=scale, differentiable=adv_weight > 0, autocast=autocast,
                              segmentation_tasks=segmentation_tasks)
    total = sum(weighted.values()) + (adv_weight * penalty if adv_weight > 0 else 0)  # Eq. 7
    scale(total).backward()
    return {k: v.detach() for k, v in losses.items()}, penalty.detach()


# ------------------------------------------------------------------------------------------------ the backward rule
@dataclass
class RLAR(BackwardRule):
    """Eq. 7's gradients: the weighted terms plus ``adv_weight`` times the penalty at ``layer`` (:data:`RLAR_LAYERS`).
    ``fast`` False: every gradient from plain autograd (the same values, slower; for checking). Which tasks' gradients
    at z are written out follows the terms' ``acts_on`` (those computed from the segmentation output alone), never
    their names; the training log says which, at the first step and whenever it changes."""

    name: ClassVar[str] = "RLAR"
    compiles: ClassVar[bool] = False       # torch.compile cannot differentiate twice
    # multi-GPU: DDP's hooks do not support the double backward; each rank takes this step on its own batch (its
    # own penalty, as nnU-Net's per-rank losses) and the trainer averages the gradients (nnunet_mtl.seams.distributed)
    ddp_reducer: ClassVar[bool] = False
    needs_encoder_gradient: ClassVar[bool] = True  # the gradients at z
    logged: ClassVar[tuple[str, ...]] = ("rlar_penalty",)

    layer: str = "bottleneck"
    adv_weight: float = 0.1    # lambda_adv (Eq. 6)
    fast: bool = True
    _encoder_stages: list = field(default_factory=list, repr=False)  # the encoder stages whose outputs are z
    _autograd_reason: str | None = field(default=None, repr=False)   # None: the decoder's gradient is written out
    _log: Callable[[str], None] | None = field(default=None, init=False, repr=False, compare=False)
    _logged_choice: str | None = field(default=None, init=False, repr=False, compare=False)

    def validate(self) -> None:
        if self.layer not in RLAR_LAYERS:
            raise ValueError(f"RLAR layer is {self.layer!r}; expected one of {list(RLAR_LAYERS)}")
        if not self.adv_weight >= 0:
            raise ValueError(f"RLAR adv_weight is {self.adv_weight!r}; expected a number >= 0")

    def setup(self, network, log) -> None:
        net = unwrap(network)
        n = len(net.encoder.stages)
        self._log, self._logged_choice = log, None
        self._encoder_stages = RLAR_LAYERS[self.layer](n)
        if min(self._encoder_stages) < 0:
            raise ValueError(f"RLAR layer {self.layer!r} needs at least 3 encoder stages; this plan's network has {n}")
        if not self.fast:
            self._autograd_reason = "fast is False"
        else:
            self._autograd_reason = why_seg_gradient_not_written_out(net)  # None: written out
            # instance norm's closed-form double backward (same parameters, state_dict and values) where autograd
            # differentiates twice: the encoder stages above the lowest z, and the decoder when it is not written
            # out. Nowhere else, so that the step's other parts stay exactly the multitask trainer's.
            for stage in net.encoder.stages[min(self._encoder_stages) + 1:]:
                use_fast_instance_norm(stage)
            if self._autograd_reason is not None:
                use_fast_instance_norm(net.decoder)

    @property
    def encoder_stages(self) -> list[int]:
        """The encoder stage indices whose outputs are z (set by :meth:`setup`)."""
        return list(self._encoder_stages)

    @property
    def autograd_reason(self) -> str | None:
        """Why the decoder's gradient at z comes from autograd for every task; None when it is written out for the
        tasks that act on the segmentation output alone."""
        return self._autograd_reason

    @property
    def written_out(self) -> bool:
        return self._autograd_reason is None

    def check(self, weights, tasks) -> None:
        active = [t for t in tasks if weights[t] > 0]
        if len(active) < 2:
            raise ValueError(f"RLAR compares the gradients of at least two tasks, but only {active or 'none'} has a "
                             f"positive loss weight; expected two of {list(tasks)} with a weight > 0")

    def describe(self, weights, tasks) -> str:
        return (f"RLAR: lambda_adv {self.adv_weight}, layer {self.layer} = encoder stage(s) {self._encoder_stages}; "
                f"tasks {[t for t in tasks if weights[t] > 0]}; segmentation gradient at z: "
                + ("written out (nnunet_mtl.autodiff) for the tasks whose terms act on the segmentation output alone "
                   "(LossTerm.acts_on), autograd for the others" if self.written_out
                   else f"autograd ({self._autograd_reason})"))

    def describe_choice(self, losses, weights, tasks) -> str:
        """One line: the tasks whose gradient at z this step writes out, and those it asks autograd for."""
        active = [t for t in tasks if weights[t] > 0]
        written = [t for t in acting_on_alone(losses, SEGMENTATION) if t in active] if self.written_out else []
        autograd = [t for t in active if t not in written]
        return (f"RLAR: gradient at z written out (nnunet_mtl.autodiff) for {written or 'no task'}, from autograd "
                f"for {autograd or 'no task'}"
                + ("" if self.written_out else f" ({self._autograd_reason})"))

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=identity,
                 autocast=no_autocast) -> StepResult:
        def losses_and_choice(outputs):
            losses = compute_losses(outputs)
            choice = self.describe_choice(losses, weights, tasks)
            if choice != self._logged_choice and self._log is not None:
                self._log(choice)
            self._logged_choice = choice
            return losses

        losses, penalty = rlar_backward(unwrap(network), data, losses_and_choice, dict(weights),
                                        self._encoder_stages, self.adv_weight, tasks=list(tasks), scale=scale,
                                        autocast=autocast, fast=self.written_out)
        total = sum(weights[t] * v for t, v in losses.items()) + self.adv_weight * penalty  # Eq. 7
        return StepResult(losses, total, {"rlar_penalty": penalty})
