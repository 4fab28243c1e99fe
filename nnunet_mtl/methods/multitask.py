"""Vanilla multitask learning: nnU-Net's segmentation plus a classification head on the encoder's bottleneck.

total = w_seg L_seg + w_cls L_cls, with
- L_seg: nnU-Net's own loss (Dice + cross-entropy over the deep-supervision outputs), unchanged;
- L_cls: cross-entropy of the class logits, class-balanced: weight n / (C n_c) per class over the training fold.

This is the thyroid paper's "Vanilla Multitask" baseline (Salama et al. 2026, Sec. 3) and every other method's
starting point. The head (:class:`BottleneckMLPHead`, kind ``bottleneck_mlp``):
[global average pool, global max pool] of the bottleneck -> BatchNorm -> Linear -> LeakyReLU -> Dropout -> Linear
-> embedding h (K entries) -> logits = W h + b (Salama et al. 2026, Eq. 1).

Why max pooling and batch norm: every nnU-Net encoder stage ends in instance normalization + LeakyReLU, so the
spatial mean of each bottleneck channel is nearly the same for every image. Measured on the phantom: the pooled
features varied 7x less across images than their mean, a plain MLP on them drove all its ReLUs negative under
nnU-Net's SGD (lr 1e-2, momentum 0.99) and predicted one constant class (val AUC exactly 0.5). The channel maxima
keep where a feature fires strongly; batch norm standardizes each pooled feature across images, and LeakyReLU
(nnU-Net's non-linearity) cannot die. The embedding is the output of a linear layer (no activation), so its
leading ``guided_dim`` entries can regress standardized (signed) clinical features (clinical guidance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_mtl.seams.heads import Head, HeadConfig, register_head
from nnunet_mtl.seams.terms import CLASSIFICATION, SEGMENTATION, Batch, LossTerm, Setup


# ------------------------------------------------------------------------------------------------ the head
@dataclass(kw_only=True)
class BottleneckMLPConfig(HeadConfig):
    kind: ClassVar[str] = "bottleneck_mlp"
    hidden: int = 256          # width of the MLP's hidden layer
    embed_dim: int = 128       # K: width of the embedding h that the final linear classifier reads
    dropout: float = 0.2
    guided_dim: int = 0        # leading entries of h distilled to clinical features (clinical guidance); 0 = none


@register_head
class BottleneckMLPHead(Head):
    config_class = BottleneckMLPConfig

    def __init__(self, encoder_channels: Sequence[int], config: BottleneckMLPConfig):
        super().__init__(encoder_channels, config)
        if config.guided_dim > config.embed_dim:
            raise ValueError(f"guided_dim {config.guided_dim} exceeds embed_dim {config.embed_dim}")
        in_channels = self.encoder_channels[-1]
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(2 * in_channels),
            nn.Linear(2 * in_channels, config.hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.embed_dim),
        )
        self.classifier = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, skips: Sequence[torch.Tensor]) -> dict:
        flat = skips[-1].flatten(2)  # pool over all spatial axes (2D or 3D feature maps)
        pooled = torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)
        h = self.mlp(pooled)
        return {"logits": self.classifier(h), "embedding": h}


# ------------------------------------------------------------------------------------------------ the losses
def class_weights_from_counts(counts) -> np.ndarray:
    """'Balanced' weights n / (C * n_c) (as sklearn's class_weight='balanced'); a class absent from the fold gets
    weight 1 (it never occurs as a target, so its weight does not matter, but it must be finite)."""
    counts = np.asarray(counts, dtype=np.float64)
    total, num_classes = counts.sum(), len(counts)
    weights = np.ones(num_classes)
    present = counts > 0
    weights[present] = total / (num_classes * counts[present])
    return weights


class Segmentation(LossTerm):
    """L_seg: nnU-Net's loss on the decoder's outputs (Dice + CE, deep supervision)."""

    name = "seg"
    acts_on = (SEGMENTATION,)
    partial_masks = True  # nnU-Net's loss masks the ignore label (Dice) and skips it (CE)

    def setup(self, setup: Setup) -> None:
        self._loss = setup.nnunet_loss

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        return self._loss(outputs["seg"], batch.target)


class Classification(LossTerm):
    """L_cls: cross-entropy of the class logits against the case's class (``balanced``: weights n / (C n_c) from
    the training fold's class counts)."""

    name = "cls"
    acts_on = (CLASSIFICATION,)
    partial_masks = True  # reads the class only

    def __init__(self, balanced: bool = True):
        self.balanced = balanced

    def setup(self, setup: Setup) -> None:
        counts = np.bincount(setup.cases.values("class", setup.train_keys), minlength=len(setup.class_names))
        weights = class_weights_from_counts(counts) if self.balanced else np.ones(len(counts))
        setup.log("classification: classes " + ", ".join(
            f"{n} (n={c}, weight={w:.3f})" for n, c, w in zip(setup.class_names, counts, weights)))
        self._loss = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=setup.device))

    def __call__(self, outputs: dict, batch: Batch) -> torch.Tensor:
        return self._loss(outputs["logits"].float(), batch.case("class"))
