"""The single-task baselines: the same network, data, split, augmentation and schedule, one task trained.

- **Segmentation only**: nnU-Net's U-Net with our augmentation and no classification head (head kind ``none``:
  no parameters, no logits); the loss is nnU-Net's Dice + CE (:class:`~nnunet_mtl.methods.multitask.Segmentation`).
  The best checkpoint is chosen by the pseudo Dice alone.
- **Classification only**: the encoder and the bottleneck MLP head trained with the class-balanced cross-entropy
  (:class:`~nnunet_mtl.methods.multitask.Classification`). The decoder stays in the network, so checkpoints load
  strictly into nnU-Net's architecture, but it is never run in training (``segments = False`` on the trainer: the
  training and validation forward passes stop after the encoder and the head), and its weights stay as
  initialised. ``nnunet_mtl predict`` writes class probabilities only for such a model (no masks: the decoder
  was never trained); the best checkpoint is chosen by the validation AUC alone.

The trainers are in :mod:`nnunet_mtl.trainers.baselines`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from nnunet_mtl.seams.heads import Head, HeadConfig, register_head

NO_HEAD = "none"


@dataclass(kw_only=True)
class NoHeadConfig(HeadConfig):
    kind: ClassVar[str] = NO_HEAD


@register_head
class NoHead(Head):
    """No classification head: nothing to learn, no logits (the segmentation-only baseline)."""

    config_class = NoHeadConfig

    def forward(self, skips: Sequence[torch.Tensor]) -> dict:
        return {}
