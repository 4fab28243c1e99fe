"""BI-RADS consistency regularization (Zhang, Moradi, Saha: externally validated multi-task learning via consistency
regularization using differentiable BI-RADS features, breast ultrasound; ../shared/papers/000_0d5da03fee0c3e05.txt).

Four morphological features of the *soft* lesion mask y = P(lesion) (Table 1), all differentiable w.r.t. the
segmentation logits:
- area A = mean(y) over the pixels;
- boundary roughness R = P / sqrt(sum y), with the perimeter P = sum of the Sobel edge magnitude of y;
- compactness C = clip(4 pi sum y / (P^2 + eps), 0, 1), eps = 1e-6;
- texture T = var_y(g), the y-weighted variance of the grey values g inside the lesion;
R and T are normalized to [0, 1] by running minimum / maximum statistics (exponential moving averages, momentum
0.99, updated on training batches only). The composite malignancy prior (Eq. 1) is

    phi = w^T [A, R, 1 - C, T],   w = softmax(u),   u learnable, softmax(u) = (0.15, 0.35, 0.25, 0.25) at the start,

and the loss (Eq. 2) is

    w_seg L_seg + w_cls L_cls + alpha MSE(p, phi) + alpha lambda_nt NTP + beta ||u||^2,

with p = P(malignant) of the classifier and NTP, the no-tumour penalty, the mean soft mask of samples without a
lesion (0 for the others); (w_seg, w_cls) = (0.9, 0.1), lambda_nt = 0.5, beta = 1e-3, alpha 0.17 ("best-cls") or
0.18 ("best-seg"). u and the running statistics live in :class:`BIRADSPrior`, a loss module owned by the head:
saved in every checkpoint, restored by ``--c``, loaded strictly by the predictor, free of weight decay (Eq. 2 has
its own L2 on u).

Choices where Zhang, Moradi, Saha are silent or where nnU-Net differs (docs/birads_consistency.md, each pinned by a
test in tests/test_birads.py):
- Sobel kernels scaled by 1/8, so that a sharp straight edge of length L has edge magnitudes summing to L and C of
  a disk is about 0.96 (unscaled, C of a disk would be about 0.015 and 1 - C almost constant);
- the image border counts as background: the edge magnitude is summed over the image and a one-pixel ring of
  background around it, so a lesion cut by the frame has its full outline there;
- the edge magnitude is sqrt(gx^2 + gy^2 + e) - sqrt(e) and R divides by sqrt(sum y + eps): finite gradients at an
  all-zero or all-one mask, and exactly 0 on flat regions;
- features in float32 outside autocast (sums over a 256 x 256 mask overflow float16);
- g: the network's input channel 0 (nnU-Net's per-image z-score, after augmentation): raw grey values are not in
  the batch, and the running min/max normalization absorbs the scale;
- the running min/max start from the first training batch (not from 0 and 1), over the samples the consistency
  term uses; later batches move them by 1 % (momentum 0.99); under multi-GPU training each batch's min/max is
  all-reduced first, so every rank keeps the same statistics;
- per patch: nnU-Net trains on patches, so "a sample without a lesion" is a patch whose target has no lesion pixel
  (NTP applies), and the consistency term uses the patches that contain lesion pixels of benign or malignant cases
  (a normal image gets the no-tumour penalty and no consistency term);
- partially annotated cases (cases.csv ``mask`` ``none`` or ``box``; their targets hold nnU-Net's ignore label 2,
  :mod:`nnunet_mtl.dataset.contract`): a lesion pixel is a pixel of the lesion label (1), never an ignore pixel, and
  a patch is "without a lesion" only when every one of its pixels is annotated background. So NTP applies to
  patches that are fully annotated and lesion-free (a box case's patch that lies wholly outside its box is one:
  every pixel of it is known background), never to a patch with an ignore pixel, which may hold the lesion (all of
  a ``none`` image, the inside of a box). The consistency term keeps its rule, patches with lesion pixels, which a
  ``none`` or ``box`` case never has. Why not use them anyway (the prior is computed from the *predicted* soft mask,
  and their class is known): on a patch with lesion pixels L_seg ties the soft mask to the lesion, so phi measures
  the lesion's morphology; on an unannotated patch nothing ties it (a box bounds the lesion without saying which of
  its pixels are lesion, a ``none`` patch may not even show it, since nnU-Net cannot oversample a lesion it was not
  told about), so the term would ask the classifier to agree with an unsupervised mask, and would train the decoder
  to draw whatever outline fits the class there, and its samples would move the running min/max of R and T. The
  classification loss still learns from every case (:mod:`nnunet_mtl.methods.multitask`);
- classes: {benign, malignant}, optionally normal; anything else is refused with one line.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mtl.dataset.contract import BACKGROUND_LABEL, LESION_LABEL
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.seams.heads import register_loss_module
from nnunet_mtl.seams.terms import CLASSIFICATION, LOSS_MODULE, SEGMENTATION, Batch, LossTerm, Setup

EPS = 1e-6                  # Table 1: compactness' epsilon; also inside the square root of R
EDGE_EPS = 1e-12            # inside the edge magnitude's square root
INITIAL_WEIGHTS = (0.15, 0.35, 0.25, 0.25)  # softmax(u) at the start, for (A, R, 1 - C, T) (Sec. 3.2)
MOMENTUM = 0.99             # running min/max of R and T (Table 1)
PRIOR = "birads_prior"      # the head's loss module
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


# ------------------------------------------------------------------------------------------------ Table 1
def edge_magnitude(soft: torch.Tensor) -> torch.Tensor:
    """|Sobel(y)| of a (B, H, W) soft mask on the (H + 2, W + 2) grid of the image and a ring of background around
    it (so an edge at the frame is counted on both of its sides, like any other); kernels / 8; 0 on flat regions."""
    kx = _SOBEL_X.to(soft)
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(soft[:, None], (1, 1, 1, 1)), kernels, padding=1)
    return torch.sqrt(g.square().sum(1) + EDGE_EPS) - math.sqrt(EDGE_EPS)


def birads_features(soft: torch.Tensor, grey: torch.Tensor) -> dict[str, torch.Tensor]:
    """A, P, R (not normalized), C and T (not normalized) of each sample: (B, H, W) soft mask and grey values."""
    if soft.ndim != 3 or grey.shape != soft.shape:
        raise ValueError(f"expected (B, H, W) soft mask and grey values of one shape, got {tuple(soft.shape)} and "
                         f"{tuple(grey.shape)}")
    # at least float32: sums over a 256 x 256 mask overflow float16 (float64 stays float64)
    soft, grey = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (soft, grey))
    total = soft.sum((1, 2))
    perimeter = edge_magnitude(soft).sum((1, 2))
    weights = soft / (total[:, None, None] + EPS)
    mean = (weights * grey).sum((1, 2))
    return {
        "A": soft.mean((1, 2)),
        "P": perimeter,
        "R": perimeter / torch.sqrt(total + EPS),
        "C": torch.clamp(4 * math.pi * total / (perimeter.square() + EPS), 0.0, 1.0),
        "T": (weights * (grey - mean[:, None, None]).square()).sum((1, 2)),
    }


# ------------------------------------------------------------------------------------------------ Eq. 1
@register_loss_module(PRIOR)
class BIRADSPrior(nn.Module):
    """u (Eq. 1) and the running min/max of R and T (Table 1); phi = softmax(u)^T [A, R_n, 1 - C, T_n]."""

    no_weight_decay = True  # Eq. 2 regularizes u itself (beta ||u||^2)

    def __init__(self, init_weights: Sequence[float] = INITIAL_WEIGHTS, momentum: float = MOMENTUM):
        super().__init__()
        weights = torch.tensor([float(w) for w in init_weights])
        if weights.shape != (4,) or not (weights > 0).all():
            raise ValueError(f"init_weights must be 4 positive numbers, got {list(init_weights)}")
        self.u = nn.Parameter(torch.log(weights / weights.sum()))  # softmax(u) = init_weights, exactly
        self.momentum = float(momentum)
        self.register_buffer("running_min", torch.zeros(2))  # (R, T)
        self.register_buffer("running_max", torch.ones(2))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.u, 0)

    @torch.no_grad()
    def update(self, rt: torch.Tensor) -> None:
        """Fold one training batch's (N, 2) values of R and T into the running min/max (N may be 0)."""
        import torch.distributed as dist
        low = rt.amin(0) if len(rt) else torch.full((2,), math.inf, device=rt.device)
        high = rt.amax(0) if len(rt) else torch.full((2,), -math.inf, device=rt.device)
        if dist.is_available() and dist.is_initialized():  # every rank keeps the same statistics
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.isfinite(low).all():
            return  # no sample of the batch (on any rank) has a lesion
        low, high = low.to(self.running_min), high.to(self.running_max)
        if not bool(self.initialized):
            self.running_min.copy_(low)
            self.running_max.copy_(high)
            self.initialized.fill_(True)
        else:
            self.running_min.mul_(self.momentum).add_((1 - self.momentum) * low)
            self.running_max.mul_(self.momentum).add_((1 - self.momentum) * high)

    def normalized(self, rt: torch.Tensor) -> torch.Tensor:
        """(N, 2) R and T mapped to [0, 1] by the running statistics (clipped outside them)."""
        span = (self.running_max - self.running_min).clamp_min(EPS)
        return ((rt - self.running_min) / span).clamp(0.0, 1.0)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        rt = self.normalized(torch.stack([features["R"], features["T"]], 1))
        f = torch.stack([features["A"], rt[:, 0], 1 - features["C"], rt[:, 1]], 1)  # [A, R, 1 - C, T]
        return f @ self.weights  # Eq. 1


# ------------------------------------------------------------------------------------------------ Eq. 2
def soft_lesion_mask(outputs: dict) -> torch.Tensor:
    """The lesion channel of the softmax of the full-resolution segmentation output, (B, H, W), float32."""
    seg = outputs["seg"][0] if isinstance(outputs["seg"], (list, tuple)) else outputs["seg"]
    if seg.ndim != 4:
        raise ValueError(f"BI-RADS features are defined for 2D images; got a segmentation output of shape "
                         f"{tuple(seg.shape)}")
    with torch.autocast(seg.device.type, enabled=False):
        return torch.softmax(seg.float(), 1)[:, 1]


def lesion_in_patch(batch: Batch) -> torch.Tensor:
    """(B,) whether each patch's target has a lesion pixel: the lesion label itself, so that nnU-Net's ignore label
    (2, "not annotated") never counts as lesion."""
    return (batch.seg_target[:, 0] == LESION_LABEL).flatten(1).any(1)


def annotated_lesion_free(batch: Batch) -> torch.Tensor:
    """(B,) whether each patch is known to show no lesion: every pixel of its target is annotated background. A
    patch with an ignore pixel is not (its lesion may lie there), nor is one with a lesion pixel."""
    return (batch.seg_target[:, 0] == BACKGROUND_LABEL).flatten(1).all(1)


def class_indices(class_names: Sequence[str]) -> tuple[int, int | None]:
    """(index of malignant, index of normal or None); one clear error for any other class list."""
    names = list(class_names)
    if not {"benign", "malignant"} <= set(names) or not set(names) <= {"benign", "malignant", "normal"}:
        raise NnunetMtlError(f"BI-RADS consistency needs the classes benign and malignant (and optionally normal); "
                             f"this dataset has {names}; convert it with --target malignancy (and --normal include "
                             f"for normal images)")
    return names.index("malignant"), (names.index("normal") if "normal" in names else None)


class BIRADSConsistency(LossTerm):
    """alpha MSE(p, phi) of Eq. 2 (the weight alpha is the trainer's ``loss_weights['consistency']``), averaged over
    the patches with lesion pixels of benign and malignant cases (none of a partially annotated case: module
    docstring)."""

    name, task = "consistency", False
    acts_on = (SEGMENTATION, CLASSIFICATION, LOSS_MODULE)  # phi of the soft mask, p of the logits, the prior
    partial_masks = True  # reads the lesion label only; unannotated patches are never used

    def __init__(self, init_weights: Sequence[float] = INITIAL_WEIGHTS, momentum: float = MOMENTUM):
        self.init_weights = tuple(float(w) for w in init_weights)
        self.momentum = float(momentum)

    def loss_modules(self) -> dict:
        return {PRIOR: {"kind": PRIOR, "init_weights": list(self.init_weights), "momentum": self.momentum}}

    def setup(self, setup: Setup) -> None:
        self.malignant, self.normal = class_indices(setup.class_names)

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        soft = soft_lesion_mask(outputs)
        with torch.autocast(soft.device.type, enabled=False):
            classes = batch.case("class")
            used = lesion_in_patch(batch)
            if self.normal is not None:
                used = used & (classes != self.normal)
            features = birads_features(soft, batch.data[:, 0])
            prior = batch.loss_module(PRIOR)
            if batch.training:
                prior.update(torch.stack([features["R"], features["T"]], 1)[used].detach())
            phi = prior(features)
            p = torch.softmax(outputs["logits"].float(), 1)[:, self.malignant]
            squared = (p - phi).square()
            if not bool(used.any()):
                return (squared * 0).sum()  # exactly 0, connected to the graph
            return squared[used].mean()


class NoTumourPenalty(LossTerm):
    """NTP of Eq. 2: per sample the mean soft mask if its patch is annotated background throughout, else 0; mean over
    the batch (weight alpha lambda_nt). "Throughout": a patch with an ignore pixel (a ``none`` case, or one that
    overlaps its box) is not known to be lesion-free, so it is not penalized for predicting lesion there."""

    name, task = "ntp", False
    acts_on = (SEGMENTATION,)
    partial_masks = True  # penalizes only patches whose every pixel is annotated background

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        soft = soft_lesion_mask(outputs)
        empty = annotated_lesion_free(batch)
        return (soft.mean((1, 2)) * empty.to(soft)).mean()


class PriorWeightDecay(LossTerm):
    """||u||^2 of Eq. 2 (weight beta)."""

    name, task = "prior_l2", False
    acts_on = (LOSS_MODULE,)
    partial_masks = True  # reads no target

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        return batch.loss_module(PRIOR).u.square().sum()


def loss_weights(alpha: float, lambda_nt: float = 0.5, w_seg: float = 0.9, w_cls: float = 0.1,
                 beta: float = 1e-3) -> dict[str, float]:
    """Eq. 2's weights by term name: the consistency term alpha, the no-tumour penalty alpha lambda_nt."""
    return {"seg": w_seg, "cls": w_cls, "consistency": alpha, "ntp": alpha * lambda_nt, "prior_l2": beta}
