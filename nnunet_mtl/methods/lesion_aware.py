"""Lesion-aware attention and disentangled semi-supervised training (Fan et al., "Joint localization and
classification of breast tumors on ultrasound images using a novel auxiliary attention-based framework";
../shared/papers/002_d3271bb37fa0c35c.txt).

The network (Fan et al., Sec. 2.1, Fig. 1-2), as a head beside nnU-Net's decoder (:class:`LesionAwareHead`, kind
``lesion_aware``): nnU-Net's encoder is the feature extractor FEX (Eq. 1) and gives the stage outputs f_1 ... f_n;
the lesion-aware network LA-Net (Eq. 2) refines each with one shared CBAM (Woo et al. 2018: channel attention from
average- and max-pooled descriptors through one shared MLP with reduction 16, then spatial attention from a 7 x 7
convolution over the channel-wise average and maximum), squeezes it to one channel, resizes it to f_n's size,
concatenates the n maps and predicts the lesion map P = sigmoid(BN(conv(f_merge))) at f_n's resolution; the
mask-attention module (MAM, Eq. 3) enhances the bottleneck, f_att = f_n + f_n * P, and the classifier (Eq. 4) is a
global average pool and one linear layer. nnU-Net's decoder stays the segmentation output, so ``nnUNetv2_predict``
is unchanged; P is an extra output (``nnunet_mtl predict --save-attention``).

The losses (Fan et al., Sec. 2.2, Eq. 5-6), all cross-entropies:

- L_loc (Eq. 5): binary cross-entropy of P against the ground-truth lesion map, on annotated cases
  (:class:`Localization`, term ``loc``);
- L'_loc's second part (Eq. 6): the same on unannotated cases against pseudo-labels 1[P > tau], computed from P
  itself and detached (:class:`PseudoLocalization`, term ``pseudo_loc``);
- L_cls (Eq. 6): cross-entropy of the class (nnunet_mtl's :class:`~nnunet_mtl.methods.multitask.Classification`,
  unweighted as in Fan et al.).

L_hyb (Eq. 6) = lambda L_cls + (1 - lambda) (L_loc + alpha L'_loc), to which nnunet_mtl adds w_seg L_seg (nnU-Net's
Dice + CE on the decoder, annotated pixels only through the ignore label): :func:`loss_weights`. Algorithm 1's two
stages are the trainer's schedule (``nnunet_mtl.trainers.lesion_aware``).

Choices where Fan et al. are silent, or where nnU-Net differs (docs/lesion_aware.md; each pinned by a test in
tests/test_lesion_aware.py):

- stages: the deepest ``stages`` = 4 encoder outputs (Fan et al., Sec. 3.2: n = 4 ResNet stages, each halving the
  size), f_n = nnU-Net's bottleneck; fewer when the encoder has fewer;
- channel counts: CBAM is shared across stages (Sec. 3.2) but the stages differ in width, so each stage is first
  projected by its own 1 x 1 convolution to ``width`` channels (default: the narrowest of the stages read); the
  squeeze convolution (1 x 1, width -> 1) is shared like CBAM;
- resizing to f_n's size: area averaging (the mean of the finer cells each coarse cell covers), not bilinear
  sampling, which would skip most finer cells when shrinking by 4 or 8;
- supervision of P at its resolution (:func:`localization_targets`): the ground-truth lesion map resized to P's
  grid is binary, as Eq. 5-6 treat it (one cross-entropy for the annotation and for the binarized pseudo-label): a
  cell is lesion when at least half of its pixels are lesion (full masks) or inside the box (box annotations, Fan
  et al.'s F-MBUD kind), and a sample whose lesion fills no cell by half marks the cell that holds most of it, so
  that a small lesion is never lost. Why binary and not the area fraction: with fractions as targets P learns the
  fraction (a lesion smaller than a cell never exceeds the fraction it covers), so P > tau = 0.8 almost never holds
  and every pseudo-label of Eq. 6 would be background (measured on the demo's phantom: no cell above 0.5 with
  fraction targets);
- pseudo-labels: 1[P > tau] on every cell of an unannotated case (cells at or below tau are pseudo-background),
  the per-cell binary cross-entropy averaged over the cells and the unannotated cases of the batch;
- classifier: global average pool -> BatchNorm -> linear. The batch norm is ours: nnU-Net's stages end in instance
  normalization, so the pooled bottleneck varies little across images (see methods/multitask.py); without it the
  linear layer sees nearly constant inputs;
- ablations (Fan et al., Fig. 8-11): ``channel_attention`` / ``spatial_attention`` off removes CAM / SAM from CBAM;
  ``mask_attention`` off classifies the plain bottleneck (f_att = f_n), P still trained by L_loc.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mtl.dataset.contract import IGNORE_LABEL, LESION_LABEL, MASK_KINDS
from nnunet_mtl.seams.heads import Head, HeadConfig, register_head
from nnunet_mtl.seams.terms import ATTENTION, SEGMENTATION, Batch, LossTerm, Setup

TAU, ALPHA, LAMBDA = 0.8, 0.1, 0.5  # Fan et al., Sec. 3.3
FULL, BOX, NONE = (MASK_KINDS.index(k) for k in ("full", "box", "none"))


# ------------------------------------------------------------------------------------------------ CBAM
class ChannelAttention(nn.Module):
    """CAM: M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))), one MLP C -> C / r -> C (ReLU) for both; F * M_c."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.sigmoid(self.mlp(flat.mean(-1)) + self.mlp(flat.amax(-1)))  # (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None]


class SpatialAttention(nn.Module):
    """SAM: M_s(F) = sigmoid(conv_k([mean_c F; max_c F])), a k x k convolution (k = 7); F * M_s."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"spatial attention kernel {kernel_size}; expected an odd size")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


class CBAM(nn.Module):
    """Channel attention, then spatial attention (Woo et al. 2018); either may be switched off (ablations)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, channel: bool = True,
                 spatial: bool = True):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction) if channel else nn.Identity()
        self.spatial = SpatialAttention(kernel_size) if spatial else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


# ------------------------------------------------------------------------------------------------ LA-Net (Eq. 2)
def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` (B, C, h, w) at ``size``: area averaging when shrinking, bilinear when growing, as is when equal."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(a >= b for a, b in zip(x.shape[2:], size)):
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class LesionAwareNet(nn.Module):
    """LA-Net: per-stage projection, shared CBAM, shared squeeze, resize to f_n, concatenate, conv + BN: the logit of
    P."""

    def __init__(self, stage_channels: Sequence[int], width: int, reduction: int, kernel_size: int,
                 channel_attention: bool, spatial_attention: bool):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in stage_channels)
        self.cbam = CBAM(width, reduction, kernel_size, channel_attention, spatial_attention)
        self.squeeze = nn.Conv2d(width, 1, 1)
        n = len(stage_channels)
        self.fuse = nn.Conv2d(n, 1, 3, padding=1)
        self.norm = nn.BatchNorm2d(1)

    def squeezed(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each stage refined by CBAM and squeezed to one channel, resized to the last stage's size."""
        size = features[-1].shape[2:]
        return [resize_to(self.squeeze(self.cbam(project(f))), size) for f, project in zip(features, self.project)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.norm(self.fuse(torch.cat(self.squeezed(features), 1)))  # f_merge -> conv -> BN


@dataclass(kw_only=True)
class LesionAwareConfig(HeadConfig):
    kind: ClassVar[str] = "lesion_aware"
    stages: int = 4                  # n: how many of the deepest encoder outputs LA-Net reads (f_n = the bottleneck)
    width: int = 0                   # channels after each stage's projection (0: the narrowest stage read)
    reduction: int = 16              # CAM's MLP reduction r
    spatial_kernel: int = 7          # SAM's convolution
    channel_attention: bool = True   # CAM (ablation: False)
    spatial_attention: bool = True   # SAM (ablation: False)
    mask_attention: bool = True      # MAM, Eq. 3 (ablation: False = classify f_n itself)


@register_head
class LesionAwareHead(Head):
    """Returns ``logits`` (Eq. 4), ``embedding`` (the normalized pooled f_att the linear classifier reads),
    ``attention`` (P, (B, 1, h, w) at f_n's resolution, Eq. 2) and ``attention_logits`` (P before the sigmoid)."""

    config_class = LesionAwareConfig

    def __init__(self, encoder_channels: Sequence[int], config: LesionAwareConfig):
        super().__init__(encoder_channels, config)
        if config.stages < 1:
            raise ValueError(f"lesion_aware head: stages = {config.stages}; expected at least 1")
        self.num_read = min(config.stages, len(self.encoder_channels))
        read = self.encoder_channels[-self.num_read:]
        width = config.width or min(read)
        self.attention = LesionAwareNet(read, width, config.reduction, config.spatial_kernel,
                                        config.channel_attention, config.spatial_attention)
        bottleneck = self.encoder_channels[-1]
        self.pool_norm = nn.BatchNorm1d(bottleneck)
        self.classifier = nn.Linear(bottleneck, config.num_classes)

    def forward(self, skips: Sequence[torch.Tensor]) -> dict:
        f_n = skips[-1]
        if f_n.ndim != 4:
            raise ValueError(f"the lesion_aware head is 2D; got a bottleneck of shape {tuple(f_n.shape)}")
        logit = self.attention(skips[-self.num_read:])
        p = torch.sigmoid(logit)
        f_att = f_n + f_n * p if self.config.mask_attention else f_n  # Eq. 3
        h = self.pool_norm(f_att.mean((2, 3)))
        return {"logits": self.classifier(h), "embedding": h, "attention": p, "attention_logits": logit}


# ------------------------------------------------------------------------------------------------ Eq. 5-6
def localization_targets(target: torch.Tensor, kinds: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """(binary target of P on its grid (B, 1, h, w), whether each sample has one (B,)) from nnU-Net's full-resolution
    target (B, 1, H, W) and the cases' mask kinds. The region is a full mask's lesion or a box's inside (its ignore
    region); a cell is 1 when the region covers at least half of it, and a sample whose region covers no cell by
    half but is not empty gets its best-covered cell(s) as 1. An unannotated case has no target (all 0, unused)."""
    target = target.float() if target.shape[1] == 1 else target[:, :1].float()
    lesion = (target == LESION_LABEL).float()
    inside_box = (target == IGNORE_LABEL).float()
    is_box = (kinds == BOX).view(-1, 1, 1, 1)
    annotated = kinds != NONE
    region = torch.where(is_box, inside_box, lesion) * annotated.view(-1, 1, 1, 1)
    fraction = resize_to(region, size)  # area averaging: the covered fraction of each cell
    cells = fraction >= 0.5
    most = fraction.flatten(1).amax(1).view(-1, 1, 1, 1)
    small = ~cells.flatten(1).any(1).view(-1, 1, 1, 1) & (most > 0)
    return (cells | (small & (fraction == most))).float(), annotated


def bce_per_sample(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over each sample's cells, (B,), float32 (outside autocast)."""
    with torch.autocast(logit.device.type, enabled=False):
        return F.binary_cross_entropy_with_logits(logit.float(), target.float(), reduction="none").flatten(1).mean(1)


def mean_over(values: torch.Tensor, used: torch.Tensor, connected: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``used`` samples; an exact 0 connected to the graph when none is used."""
    if not bool(used.any()):
        return (connected.float() * 0).sum()
    return values[used].mean()


def localization_loss(logit: torch.Tensor, target: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """L_loc (Fan et al., Eq. 5): BCE of P against the ground truth on its grid, over the annotated samples."""
    soft, annotated = localization_targets(target, kinds, logit.shape[2:])
    return mean_over(bce_per_sample(logit, soft), annotated, logit)


def pseudo_labels(logit: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """binarize(P', tau) of Eq. 6: 1 where P > tau, else 0; detached (the pseudo-label is a target, not a path)."""
    return (torch.sigmoid(logit.detach().float()) > tau).float()


def pseudo_localization_loss(logit: torch.Tensor, kinds: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """The unlabelled part of L'_loc (Fan et al., Eq. 6): BCE of P against 1[P > tau] over the unannotated samples."""
    return mean_over(bce_per_sample(logit, pseudo_labels(logit, tau)), kinds == NONE, logit)


class Localization(LossTerm):
    """L_loc (Eq. 5), and the labelled part of L'_loc (Eq. 6): the lesion map P against the annotation."""

    name = "loc"
    acts_on = (ATTENTION,)
    partial_masks = True

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        return localization_loss(outputs["attention_logits"], batch.seg_target, batch.case("mask"))


class _Threshold:
    """The pseudo-label threshold tau of a term on the unannotated cases (Eq. 6's binarize): its value and check."""

    def __init__(self, tau: float = TAU):
        self.tau = float(tau)

    def validate(self) -> None:
        if not 0 < self.tau < 1:
            raise ValueError(f"pseudo-label threshold tau = {self.tau}; expected a number in (0, 1)")


class PseudoLocalization(_Threshold, LossTerm):
    """alpha's term of Eq. 6: P of unannotated cases against its own pseudo-labels 1[P > tau] (weight (1 - lambda)
    alpha)."""

    name, task = "pseudo_loc", False
    acts_on = (ATTENTION,)
    partial_masks = True

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        return pseudo_localization_loss(outputs["attention_logits"], batch.case("mask"), self.tau)


class PseudoSegmentation(_Threshold, LossTerm):
    """Our extension (variant ``_pseudoseg``): the decoder learns on unannotated cases from its own thresholded
    softmax, lesion where P(lesion) > tau, background elsewhere (the binarization of Eq. 6 applied to the decoder),
    detached, at every deep-supervision output. A separate call of nnU-Net's loss on those samples only: nnU-Net's
    batch Dice pools the whole batch, and annotated and pseudo-labelled samples in one call would blur each other."""

    name, task = "pseudo_seg", False
    acts_on = (SEGMENTATION,)
    partial_masks = True

    def setup(self, setup: Setup) -> None:
        self._loss = setup.nnunet_loss

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        seg = outputs["seg"]
        seg = list(seg) if isinstance(seg, (list, tuple)) else [seg]
        unannotated = batch.case("mask") == NONE
        if not bool(unannotated.any()):
            return (seg[0].float() * 0).sum()
        chosen = [s[unannotated] for s in seg]
        with torch.no_grad():
            targets = [(torch.softmax(s.float(), 1)[:, LESION_LABEL:LESION_LABEL + 1] > self.tau).to(s.dtype)
                       for s in chosen]
        if not isinstance(outputs["seg"], (list, tuple)):
            return self._loss(chosen[0], targets[0])
        return self._loss(chosen, targets)


def loss_weights(lam: float = LAMBDA, alpha: float = ALPHA, w_seg: float = 1.0, pseudo_seg: float | None = None
                 ) -> dict[str, float]:
    """Eq. 6's weights by term name, plus nnU-Net's segmentation loss: w_seg L_seg + lambda L_cls + (1 - lambda)
    L_loc + (1 - lambda) alpha L'_loc (and alpha w_seg for the decoder's pseudo-labels when ``pseudo_seg`` is not
    None, the ``_pseudoseg`` variant)."""
    if not 0 <= lam <= 1:
        raise ValueError(f"lambda = {lam}; Eq. 6 needs lambda in [0, 1]")
    weights = {"seg": w_seg, "cls": lam, "loc": 1 - lam, "pseudo_loc": (1 - lam) * alpha}
    if pseudo_seg is not None:
        weights["pseudo_seg"] = pseudo_seg
    return weights
