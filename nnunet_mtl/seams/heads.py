"""Seam 1, heads: what sits beside nnU-Net's decoder and reads the encoder's outputs.

A head kind is a subclass of :class:`Head` with a config dataclass (a subclass of :class:`HeadConfig`), registered
under its ``kind`` with :func:`register_head`. The config, with ``kind``, is stored in the plans
(``plans['nnunet_mtl']['head']``), which nnU-Net saves as ``plans.json`` beside the checkpoints, so that
``nnUNetv2_predict``, ``nnunet_mtl predict``, ``nnunet_mtl pretrained`` and ``ablate-guidance`` rebuild exactly
the trained network for any registered head without naming one.

A head may own the learnable parameters and buffers of a loss term (say a prior's weight logits and running
statistics): a term declares them by :meth:`LossTerm.loss_modules <nnunet_mtl.seams.terms.LossTerm.loss_modules>`
as ``{name: {"kind": ..., **params}}``, the head builds them from a second registry (:func:`register_loss_module`)
into ``head.loss_modules[name]``; they are then part of the network's state_dict, saved in every checkpoint,
restored by ``--c`` and loaded strictly by the predictor. A loss module whose class sets ``no_weight_decay = True``
is left out of the optimizer's weight decay.

Adding a head: docs/extending.md (the example there is trained by tests/test_seams.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn

HEADS: dict[str, type["Head"]] = {}
LOSS_MODULES: dict[str, type[nn.Module]] = {}
DEFAULT_HEAD_KIND = "bottleneck_mlp"  # plans written before head kinds existed hold this head


@dataclass(kw_only=True)
class HeadConfig:
    """What every head's shape depends on; subclasses add their own fields (all with defaults)."""

    kind: ClassVar[str] = ""
    num_classes: int = 0  # 0 in a trainer's declaration: filled in from the dataset's class_labels
    # {name: {"kind": registered loss module, **its keyword arguments}}: parameters/buffers of loss terms
    loss_modules: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    def with_params(self, **params) -> "HeadConfig":
        """A copy with some fields replaced; an unknown field is a ValueError naming it and the head kind."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"head kind {self.kind!r} has no parameter(s) {', '.join(unknown)} "
                             f"(its parameters: {', '.join(sorted(known))})")
        return dataclasses.replace(self, **params)


class Head(nn.Module):
    """Reads every encoder output (``skips``, highest resolution first, the bottleneck last) and returns a dict
    with at least ``logits`` (B, num_classes). Heads with a final linear classifier on an embedding register it
    as the submodule ``classifier`` (an ``nn.Linear``) and return the embedding as ``embedding``: ablate-guidance
    re-applies that classifier to recorded embeddings."""

    config_class: ClassVar[type[HeadConfig]] = HeadConfig

    def __init__(self, encoder_channels: Sequence[int], config: HeadConfig):
        super().__init__()
        if config.num_classes < 1:
            raise ValueError(f"head {config.kind!r} needs num_classes >= 1, got {config.num_classes}")
        self.config = config
        self.encoder_channels = list(encoder_channels)
        self.loss_modules = nn.ModuleDict({name: build_loss_module(name, spec)
                                           for name, spec in sorted(config.loss_modules.items())})

    def forward(self, skips: Sequence[torch.Tensor]) -> dict:
        raise NotImplementedError

    def linear_classifier(self) -> nn.Linear | None:
        """The final linear classifier reading ``embedding`` (logits = W h + b), if the head has one."""
        module = self._modules.get("classifier")
        return module if isinstance(module, nn.Linear) else None

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters excluded from the optimizer's weight decay (loss modules that ask for it)."""
        return [p for m in self.loss_modules.values() if getattr(m, "no_weight_decay", False)
                for p in m.parameters()]


def _register(registry: dict, kind: str, cls: type, what: str) -> None:
    old = registry.get(kind)
    # the same class imported again is no conflict: nnU-Net's trainer lookup drops the modules of an
    # nnUNet_extTrainer folder from sys.modules after each lookup, and the next lookup imports them anew
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"{what} kind {kind!r} is registered twice ({old.__module__}.{old.__qualname__}, "
                         f"{cls.__module__}.{cls.__qualname__})")
    registry[kind] = cls


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a head kind buildable from the plans."""
    kind = cls.config_class.kind
    if not kind:
        raise ValueError(f"{cls.__name__}.config_class has no kind")
    _register(HEADS, kind, cls, "head")
    return cls


def register_loss_module(kind: str):
    """Class decorator: make an ``nn.Module`` buildable as a head-owned loss module ``{"kind": kind, ...}``."""
    def decorate(cls):
        _register(LOSS_MODULES, kind, cls, "loss module")
        return cls
    return decorate


def _load_methods() -> None:
    # every method module registers its heads and loss modules when imported
    import nnunet_mtl.methods  # noqa: F401  (imported for its registrations)


def head_class(kind: str) -> type[Head]:
    _load_methods()
    if kind not in HEADS:
        raise KeyError(f"head kind {kind!r} is not registered (known: {', '.join(sorted(HEADS))}); expected the "
                       f"nnunet_mtl version that trained this model")
    return HEADS[kind]


def build_loss_module(name: str, spec: dict) -> nn.Module:
    _load_methods()
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in LOSS_MODULES:
        raise KeyError(f"loss module {name!r} has kind {kind!r}, which is not registered (known: "
                       f"{', '.join(sorted(LOSS_MODULES)) or 'none'})")
    return LOSS_MODULES[kind](**spec)


def head_config_from_dict(section: dict) -> HeadConfig:
    """The config stored in the plans (``kind`` defaults to the bottleneck MLP of older plans)."""
    values = dict(section)
    kind = values.pop("kind", DEFAULT_HEAD_KIND)
    config_class = head_class(kind).config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise KeyError(f"the plans' head section has parameter(s) {', '.join(unknown)} that head kind {kind!r} "
                       f"does not know; expected the nnunet_mtl version that trained this model")
    return config_class(**values)


def build_head(config: HeadConfig, encoder_channels: Sequence[int]) -> Head:
    return head_class(config.kind)(encoder_channels, config)
