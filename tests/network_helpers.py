"""Networks and plans for unit tests (not a test module): a real nnU-Net 2D U-Net small enough for the CPU, the plans
that build it, a multitask network on it and toy losses of its outputs.

``ARCH``: nnU-Net's PlainConvUNet with 4 stages of 8-32 features, 3 x 3 kernels and three stride-2 stages (a 32 x 32
patch has a 4 x 4 bottleneck); 1 input channel, 2 segmentation classes.
"""
from __future__ import annotations

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_mtl.methods.multitask import BottleneckMLPConfig
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet

ARCH = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [1, 1, 1, 1], "n_conv_per_stage_decoder": [1, 1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def make_unet(deep_supervision=True):
    """The plain nnU-Net U-Net of ``ARCH`` (1 input channel, 2 classes), built by nnU-Net's get_network_from_plans."""
    return get_network_from_plans(ARCH["network_class_name"], ARCH["arch_kwargs"], ARCH["_kw_requires_import"],
                                  1, 2, allow_init=True, deep_supervision=deep_supervision)


def make_plans(num_classes=3):
    """nnU-Net plans (a dict) for Dataset999_T: one 2d configuration with ``ARCH``, patch 32 x 32, and the
    nnunet_mtl section with a BottleneckMLP head of ``num_classes`` classes (hidden 16, embedding 8)."""
    return {
        "dataset_name": "Dataset999_T", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1, 1], "original_median_shape_after_transp": [1, 32, 32],
        "image_reader_writer": "NaturalImage2DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                                  "batch_size": 2, "patch_size": [32, 32], "median_image_size_in_voxels": [32, 32],
                                  "spacing": [1, 1], "normalization_schemes": ["ZScoreNormalization"],
                                  "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
                                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                                  "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
                                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                                  "resampling_fn_probabilities_kwargs": {}, "architecture": ARCH,
                                  "batch_dice": True}},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        PLANS_KEY: {"head": BottleneckMLPConfig(num_classes=num_classes, hidden=16, embed_dim=8).to_dict()},
    }


def small_net():
    """A MultitaskUNet on ``make_unet()`` (deep supervision) with a 3-class BottleneckMLP head without dropout, in
    float64, its weights seeded (torch.manual_seed(0)): the same network on every call."""
    torch.manual_seed(0)
    return MultitaskUNet(make_unet(), BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8, dropout=0.0)).double()


def toy_losses(outputs):
    """{"seg", "cls", "area"}: losses of a network's ``return_aux=True`` outputs (mean squares of the highest-resolution
    segmentation and of the logits; the mean absolute segmentation as a regularizer)."""
    seg = outputs["seg"][0]
    return {"seg": seg.square().mean(), "cls": outputs["logits"].square().mean(), "area": seg.abs().mean()}
