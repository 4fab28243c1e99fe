"""A predictor whose lesion map is known (not a test module): test heads registered here, a MultitaskPredictor on
tests/network_helpers.py's U-Net with one of them, the two images it is tested on and a sequential prediction.

``KnownAttentionHead`` returns a constant attention map or sigmoid(1x1 conv of the bottleneck), which a test can
recompute tile by tile; ``NoAttentionHead`` returns none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from nnunet_mtl.evaluation.shared import ATTENTION_FOLDER
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet
from nnunet_mtl.seams.heads import Head, HeadConfig, register_head
from tests.network_helpers import make_plans, make_unet

CLASS_LABELS = {"benign": 0, "malignant": 1}  # the class labels of make_predictor's plans and dataset.json


# ------------------------------------------------------------------------------------------------ heads
@dataclass(kw_only=True)
class KnownAttentionConfig(HeadConfig):
    kind: ClassVar[str] = "test_known_attention"
    constant: float = -1.0  # >= 0: P is this value everywhere; else sigmoid(1x1 conv of the bottleneck)


@register_head
class KnownAttentionHead(Head):
    """Logits from the pooled bottleneck; ``attention`` (B, 1, h, w) at the bottleneck's resolution, as the
    lesion-aware head returns it."""

    config_class = KnownAttentionConfig

    def __init__(self, encoder_channels, config):
        super().__init__(encoder_channels, config)
        self.classifier = nn.Linear(encoder_channels[-1], config.num_classes)
        self.squeeze = nn.Conv2d(encoder_channels[-1], 1, 1)

    def forward(self, skips):
        f = skips[-1]
        if self.config.constant >= 0:
            p = torch.full((f.shape[0], 1, *f.shape[2:]), self.config.constant, device=f.device)
        else:
            p = torch.sigmoid(self.squeeze(f))
        return {"logits": self.classifier(f.mean((2, 3))), "attention": p}


@dataclass(kw_only=True)
class NoAttentionConfig(HeadConfig):
    kind: ClassVar[str] = "test_no_attention"


@register_head
class NoAttentionHead(Head):
    """Logits from the pooled bottleneck, no attention map."""

    config_class = NoAttentionConfig

    def __init__(self, encoder_channels, config):
        super().__init__(encoder_channels, config)
        self.classifier = nn.Linear(encoder_channels[-1], config.num_classes)

    def forward(self, skips):
        return {"logits": self.classifier(skips[-1].mean((2, 3)))}


# ------------------------------------------------------------------------------------------------ a predictor
def make_predictor(head_config, folds=1, mirroring=True):
    """A MultitaskPredictor on tests/network_helpers.py's 2D U-Net (patch 32) with ``head_config``; ``folds``
    parameter sets that differ in the attention's 1x1 convolution (seeded)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mtl.inference.predictor import MultitaskPredictor
    torch.manual_seed(0)
    network = MultitaskUNet(make_unet(deep_supervision=False), head_config)
    network.eval()
    plans = make_plans()
    plans[PLANS_KEY] = {"head": head_config.to_dict(), "class_labels": CLASS_LABELS}
    plans["foreground_intensity_properties_per_channel"] = {"0": {}}  # z-scoring needs no statistics
    plans_manager = PlansManager(plans)
    parameters = []
    for k in range(folds):
        state = {name: value.clone() for name, value in network.state_dict().items()}
        if "cls_head.squeeze.weight" in state:
            state["cls_head.squeeze.weight"] *= 3.0 * (1.0 + k)  # a P with contrast; fold k differs from fold 0
            state["cls_head.squeeze.bias"] += 0.3 * k
        parameters.append(state)
    dataset_json = {"channel_names": {"0": "US"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 1,
                    "file_ending": ".png", "class_labels": CLASS_LABELS}
    predictor = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                   perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False,
                                   cpu_amp="off")  # test_attention_maps.py computes its specification in float32
    predictor.manual_initialization(network, plans_manager, plans_manager.get_configuration("2d"), parameters,
                                    dataset_json, "nnUNetTrainerMTL", (0, 1))
    return predictor


def write_images(folder: Path) -> dict[str, np.ndarray]:
    """Two grey images: 'crop' (44 x 52, a zero border that nnU-Net crops away; 36 x 40 inside: 2 x 2 overlapping
    tiles) and 'small' (24 x 20: padded to one 32 x 32 tile)."""
    rng = np.random.default_rng(1)
    crop = np.zeros((44, 52), np.uint8)
    crop[4:40, 6:46] = rng.integers(1, 256, (36, 40))
    small = rng.integers(1, 256, (24, 20)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for case, image in (("crop", crop), ("small", small)):
        Image.fromarray(image).save(folder / f"{case}_0000.png")
    return {"crop": crop, "small": small}


def predict_sequential(predictor, inputs: Path, out: Path, attention: bool = True) -> None:
    """``predictor`` on every image in ``inputs`` into ``out`` by nnU-Net's sequential path, the lesion maps into
    ``out``/ATTENTION_FOLDER when ``attention``."""
    if attention:
        predictor.save_attention_into(out / ATTENTION_FOLDER)
    out.mkdir(parents=True, exist_ok=True)  # as nnunet_mtl predict makes it
    predictor.predict_from_files_sequential(str(inputs), str(out), save_probabilities=False, overwrite=True)
