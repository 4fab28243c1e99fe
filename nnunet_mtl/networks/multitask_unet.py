"""nnU-Net's planned U-Net plus a head (any registered kind, :mod:`nnunet_mtl.seams.heads`) on the encoder's outputs.

Why this shape:
- ``forward(x)`` returns the segmentation logits only (one tensor, or the deep-supervision list), exactly like
  nnU-Net's own network, so nnU-Net's predictor (sliding window, test-time mirroring) works unchanged.
- ``forward(x, return_aux=True)`` returns a dict: ``seg``, ``skips`` (every encoder stage's output, the bottleneck
  last) and everything the head returns (at least ``logits``; the bottleneck MLP head also ``embedding``). One
  encoder pass serves all tasks. ``feature_cut=True`` returns as ``skips`` the aliases that the decoder and the
  head read (see forward). With ``record_decoder=True`` the decoder pass also records what RLAR's
  hand-written gradient needs (``nnunet_mtl.autodiff``); the values are the same.
- ``encoder`` / ``decoder`` are registered under the same names as in nnU-Net's U-Nets, so their state_dict keys
  match a plain nnU-Net checkpoint (a pretrained nnU-Net loads as is), and nnU-Net's
  ``set_deep_supervision_enabled`` (which sets ``network.decoder.deep_supervision``) keeps working. The head sits
  under :data:`HEAD_ATTRIBUTE` (its state_dict keys start with :data:`HEAD_PREFIX`); nothing else names it.
- Everything the shape depends on (head kind, number of classes, widths, loss modules) is read from the
  ``nnunet_mtl`` section of the plans, which the trainer writes before training; nnU-Net saves those plans next to
  the checkpoint, so ``nnUNetv2_predict`` rebuilds the same network and loads it strictly. The section also names
  the head's and the loss modules' classes by import path: rebuilding imports just their modules.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_mtl.seams.heads import Head, HeadConfig, build_head, head_config_from_dict

PLANS_KEY = "nnunet_mtl"
HEAD_ATTRIBUTE = "cls_head"  # kept from the first release, so that every checkpoint written since loads
HEAD_PREFIX = HEAD_ATTRIBUTE + "."


class MultitaskUNet(nn.Module):
    """Wraps the encoder and decoder of a dynamic_network_architectures U-Net and adds a head."""

    def __init__(self, unet: nn.Module, head_config: HeadConfig):
        super().__init__()
        if not (hasattr(unet, "encoder") and hasattr(unet, "decoder")):
            raise TypeError(f"{type(unet).__name__} has no encoder/decoder; nnunet_mtl needs an nnU-Net U-Net")
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        setattr(self, HEAD_ATTRIBUTE, build_head(head_config, self.encoder.output_channels))
        self.head_config = head_config
        # False: a classification-only model (plans' "segments": false): the decoder is kept, so checkpoints load
        # strictly, but never run; the segmentation output is all background
        self.segments = True

    @property
    def head(self) -> Head:
        return getattr(self, HEAD_ATTRIBUTE)

    def forward(self, x: torch.Tensor, return_aux: bool = False, record_decoder: bool = False,
                feature_cut: bool = False):
        skips = self.encoder(x)
        if feature_cut:
            # the decoder and the head read aliases of the encoder's outputs: gradients at them are the partial
            # derivatives through the direct paths only (each output also feeds the next encoder stage), so they
            # form a cut of the graph through which every parameter gradient passes exactly once (gradient
            # aggregation at "every encoder output"; the values are unchanged)
            skips = [s.view_as(s) for s in skips]
        if not self.segments:
            return {"skips": skips, **self.head(skips)} if return_aux else self.background(x)
        if record_decoder:  # the same decoder pass, recording what RLAR's hand-written seg gradient needs
            from nnunet_mtl.autodiff import decoder_forward
            seg, records = decoder_forward(self.decoder, skips)
        else:
            seg, records = self.decoder(skips), None
        if not return_aux:
            return seg
        out = {"seg": seg, "skips": skips, **self.head(skips)}
        if records is not None:
            out["decoder_records"] = records
        return out

    def background(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits that say 'background' everywhere, shaped like the decoder's full-resolution output
        (what a classification-only model gives where a mask is asked for)."""
        channels = self.decoder.seg_layers[-1].out_channels
        out = torch.zeros((x.shape[0], channels, *x.shape[2:]), device=x.device, dtype=x.dtype)
        out[:, 0] = 1.0
        return out

    @property
    def num_encoder_stages(self) -> int:
        """How many stages nnU-Net's encoder has (its outputs are ``skips``; not the training schedule's stages)."""
        return len(self.encoder.stages)

    def part(self, name: str) -> nn.Module:
        """A part of the network by name: ``encoder``, ``decoder``, ``head``, or a submodule path (``head.mlp``)."""
        first, _, rest = name.partition(".")
        root = {"head": HEAD_ATTRIBUTE}.get(first, first)
        try:
            module = self.get_submodule(root)
            return module.get_submodule(rest) if rest else module
        except AttributeError:
            raise KeyError(f"the network has no part {name!r}; expected encoder, decoder, head or a submodule path "
                           f"such as head.{next(iter(dict(self.head.named_children())), 'classifier')}") from None

    def part_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of a part. nnU-Net's decoder keeps a reference to the encoder (its state_dict has
        ``decoder.encoder.*`` keys): the decoder's own parameters are those that are not the encoder's."""
        params = list(self.part(name).parameters())
        if name.split(".")[0] != "encoder":
            encoder = {id(p) for p in self.encoder.parameters()}
            params = [p for p in params if id(p) not in encoder]
        return params

    def classifier_keys(self) -> tuple[str, str] | None:
        """state_dict keys (weight, bias) of the head's final linear classifier on its embedding, or None."""
        if self.head.linear_classifier() is None:
            return None
        return HEAD_PREFIX + "classifier.weight", HEAD_PREFIX + "classifier.bias"


def head_config_from_plans(plans: dict, source=None) -> HeadConfig:
    """The head config of the plans' ``nnunet_mtl.head`` section, its head and loss module classes imported from the
    paths stored there (:func:`~nnunet_mtl.seams.heads.head_config_from_dict`; ``source``, the plans file where
    known, is named in its errors). KeyError when the section is missing; a
    :class:`~nnunet_mtl.seams.heads.PlansClassError` (a KeyError too) when a class it names cannot be built."""
    section = plans.get(PLANS_KEY)
    if not section or "head" not in section:
        raise KeyError(
            f"the plans have no '{PLANS_KEY}.head' section: this model was not trained by an nnunet_mtl trainer, "
            f"or its plans.json was replaced")
    return head_config_from_dict(section["head"], source)
