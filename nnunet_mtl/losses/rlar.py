"""Representation-level adversarial regularization (RLAR, thyroid paper Sec. 2.3, Eq. 4-6).

For each task loss L_t (t in {seg, cls, clin}) take its gradient at the shared representation z, flatten it per
sample, and penalize the alignment of every pair of tasks: the mean over samples of the mean over unordered task
pairs of |cos(g_t, g_t')|. Eq. 4 normalizes g_t to an epsilon-length direction first; a cosine does not change
under positive scaling, so that step drops out and the penalty is computed on g_t directly.

Choice (Eq. 6 is ambiguous): its sum runs over t != t' with the factor 2 / (|T| (|T| - 1)); we read it as the
mean over the |T| (|T| - 1) / 2 unordered pairs (each pair once), as the issue states.
"""
from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch

ZERO_NORM = 1e-20  # below this a per-sample gradient counts as zero: its cosine is defined as 0


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
