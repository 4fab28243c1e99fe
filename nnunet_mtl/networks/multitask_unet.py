"""nnU-Net's planned U-Net plus a lesion classification head on the encoder bottleneck.

Why this shape:
- ``forward(x)`` returns the segmentation logits only (one tensor, or the deep-supervision list), exactly like
  nnU-Net's own network, so nnU-Net's predictor (sliding window, test-time mirroring) works unchanged.
- ``forward(x, return_aux=True)`` additionally returns the class logits, the head's embedding h and every
  encoder stage's output (the bottleneck is the last one): trainers use this for the extra losses, and the
  class-aware predictor for the class probabilities. One encoder pass serves both tasks. With
  ``record_decoder=True`` the decoder pass also records what RLAR's hand-written gradient needs
  (``nnunet_mtl.autodiff``); the values are the same.
- ``encoder`` / ``decoder`` are registered under the same names as in nnU-Net's U-Nets, so their state_dict
  keys match a plain nnU-Net checkpoint (a pretrained nnU-Net encoder loads as is), and nnU-Net's
  ``set_deep_supervision_enabled`` (which sets ``network.decoder.deep_supervision``) keeps working.
- Everything the shape depends on (number of classes, head widths) is read from the ``nnunet_mtl`` section of
  the plans, which the trainer writes before training; nnU-Net saves those plans next to the checkpoint, so
  ``nnUNetv2_predict`` rebuilds the same network and loads it strictly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

PLANS_KEY = "nnunet_mtl"


@dataclass
class HeadConfig:
    """Shape of the classification head; stored in the plans under ``nnunet_mtl.head``."""

    num_classes: int
    hidden: int = 256          # width of the MLP's hidden layer
    embed_dim: int = 128       # K: width of the embedding h that the final linear classifier reads
    dropout: float = 0.2
    guided_dim: int = 0        # leading dimensions of h that are distilled to clinical features (RLAR); 0 = none

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


class ClassificationHead(nn.Module):
    """[global average pool, global max pool] -> BatchNorm -> MLP -> embedding h -> classifier (logits = W h + b).

    Why max pooling and batch norm: every nnU-Net encoder stage ends in instance normalization + LeakyReLU, so the
    spatial mean of each bottleneck channel is nearly the same for every image. Measured on the phantom: the
    pooled features varied 7x less across images than their mean, a plain MLP on them drove all its ReLUs
    negative under nnU-Net's SGD (lr 1e-2, momentum 0.99) and predicted one constant class (val AUC exactly
    0.5). The channel maxima keep where a feature fires strongly; batch norm standardizes each pooled feature
    across images, and LeakyReLU (nnU-Net's non-linearity) cannot die.
    The embedding is the output of a linear layer (no activation), so its leading ``guided_dim`` entries can
    regress standardized (signed) clinical features in the guided variant.
    """

    def __init__(self, in_channels: int, config: HeadConfig):
        super().__init__()
        if config.guided_dim > config.embed_dim:
            raise ValueError(f"guided_dim {config.guided_dim} exceeds embed_dim {config.embed_dim}")
        self.config = config
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(2 * in_channels),
            nn.Linear(2 * in_channels, config.hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.embed_dim),
        )
        self.classifier = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, bottleneck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # pool over all spatial axes (2D or 3D feature maps)
        flat = bottleneck.flatten(2)
        pooled = torch.cat([flat.mean(-1), flat.amax(-1)], dim=1)
        h = self.mlp(pooled)
        return self.classifier(h), h


class MultitaskUNet(nn.Module):
    """Wraps the encoder and decoder of a dynamic_network_architectures U-Net and adds a classification head."""

    def __init__(self, unet: nn.Module, head_config: HeadConfig):
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder")):
            raise TypeError(f"{type(unet).__name__} has no encoder/decoder; nnunet_mtl needs an nnU-Net U-Net")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        bottleneck_channels = self.encoder.output_channels[-1]
        self.cls_head = ClassificationHead(bottleneck_channels, head_config)
        self.head_config = head_config

    def forward(self, x: torch.Tensor, return_aux: bool = False, record_decoder: bool = False):
        skips = self.encoder(x)
        if record_decoder:  # the same decoder pass, recording what RLAR's hand-written seg gradient needs
            from nnunet_mtl.autodiff import decoder_forward
            seg, records = decoder_forward(self.decoder, skips)
        else:
            seg, records = self.decoder(skips), None
        if not return_aux:
            return seg
        logits, embedding = self.cls_head(skips[-1])
        out = {"seg": seg, "logits": logits, "embedding": embedding, "skips": skips}
        if records is not None:
            out["decoder_records"] = records
        return out

    @property
    def num_stages(self) -> int:
        return len(self.encoder.stages)


def head_config_from_plans(plans: dict) -> HeadConfig:
    section = plans.get(PLANS_KEY)
    if not section or "head" not in section:
        raise KeyError(
            f"the plans have no '{PLANS_KEY}.head' section: this model was not trained by an nnunet_mtl trainer, "
            f"or its plans.json was replaced")
    return HeadConfig.from_dict(section["head"])
