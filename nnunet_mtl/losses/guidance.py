"""Clinical guidance loss (thyroid paper Sec. 2.2, Eq. 3): L_clin = || h_tirads - r ||_2^2.

h_tirads is the leading slice of the head's embedding (Eq. 2: h = [h_tirads, h_deep]); r the standardized
radiomics targets of the case. Squared L2 norm per sample (summed over the guided features), averaged over the
samples that have a lesion; images without a lesion have no targets and are left out. A batch without any lesion
gives an exact zero that stays connected to the graph (so per-task gradients exist and are zero, never NaN).
"""
from __future__ import annotations

import torch


def clinical_guidance_loss(h_tirads: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """h_tirads, targets: (B, F); valid: (B,) bool (sample has a lesion and finite targets)."""
    h = h_tirads.float()
    if not bool(valid.any()):
        return (h * 0).sum()
    per_sample = ((h[valid] - targets[valid].float()) ** 2).sum(1)  # Eq. 3, squared L2 norm per sample
    return per_sample.mean()
