"""Seam 1, heads: what sits beside nnU-Net's decoder and reads the encoder's outputs.

A head kind is a subclass of :class:`Head` with a config dataclass (a subclass of :class:`HeadConfig`), registered
under its ``kind`` with :func:`register_head`. The config, with ``kind`` and the head class's import path
(``import_path``, ``"module:qualname"``, :mod:`nnunet_mtl.seams.import_paths`), is stored in the plans
(``plans['nnunet_mtl']['head']``), which nnU-Net saves as ``plans.json`` beside the checkpoints, so that
``nnUNetv2_predict``, ``nnunet_mtl predict``, ``nnunet_mtl pretrained`` and ``ablate-guidance`` rebuild exactly
the trained network without naming its head: rebuilding imports the module the path names (installed, or in a
folder of ``nnUNet_extTrainer``) and nothing else, so a method module that fails to import breaks only the models
that use it. Plans written before the paths were stored hold ``kind`` only: their class is the one registered
under that kind, or the one :data:`KINDS_BEFORE_IMPORT_PATHS` says defined it. A path that cannot be imported, or
a kind that nothing defines, is one :class:`PlansClassError` line naming the plans, the path or kind, and what was
expected.

A head may own the learnable parameters and buffers of a loss term (say a prior's weight logits and running
statistics): a term declares them by :meth:`LossTerm.loss_modules <nnunet_mtl.seams.terms.LossTerm.loss_modules>`
as ``{name: {"kind": ..., **params}}``, the head builds them from a second registry (:func:`register_loss_module`)
into ``head.loss_modules[name]`` (the plans store each one's import path too); they are then part of the network's
state_dict, saved in every checkpoint, restored by ``--c`` and loaded strictly by the predictor. A loss module whose
class sets ``no_weight_decay = True`` is left out of the optimizer's weight decay.

Adding a head: docs/extending.md (the example there is trained by tests/test_seams.py).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.seams.import_paths import ext_trainer_folders, import_class, import_path_of

HEADS: dict[str, type["Head"]] = {}
LOSS_MODULES: dict[str, type[nn.Module]] = {}
DEFAULT_HEAD_KIND = "bottleneck_mlp"  # plans written before head kinds existed hold this head
IMPORT_PATH = "import_path"  # the key of a class's import path in the plans' head section and loss module specs
# Plans written before import paths were stored name a class by its kind alone; where nnunet_mtl defined each kind
# then (a closed list: plans written since name the module themselves; a class moved away must leave an alias)
KINDS_BEFORE_IMPORT_PATHS = {
    "head": {"bottleneck_mlp": "nnunet_mtl.methods.multitask:BottleneckMLPHead",
             "none": "nnunet_mtl.methods.single_task:NoHead",
             "lesion_aware": "nnunet_mtl.methods.lesion_aware:LesionAwareHead"},
    "loss module": {"birads_prior": "nnunet_mtl.methods.birads_consistency:BIRADSPrior",
                    "log_variances": "nnunet_mtl.methods.uncertainty_weighting:LogVariances"},
}


class PlansClassError(NnunetMtlError, KeyError):
    """The plans name a head or loss module that cannot be built here (a path that cannot be imported, a kind that
    nothing defines, a parameter the class does not know). A KeyError too, as these errors were before, so that
    callers that turn a bad plans section into one line (the base trainer's ``build_network_architecture``) keep
    catching them."""

    def __str__(self) -> str:  # one plain line (KeyError's own str() would quote it)
        return str(self.args[0]) if self.args else ""


@dataclass(kw_only=True)
class HeadConfig:
    """What every head's shape depends on; subclasses add their own fields (all with defaults)."""

    kind: ClassVar[str] = ""
    num_classes: int = 0  # 0 in a trainer's declaration: filled in from the dataset's class_labels
    # {name: {"kind": registered loss module, **its keyword arguments}}: parameters/buffers of loss terms
    loss_modules: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What the plans store: ``kind``, the head class's ``import_path``, every field, and each loss module's spec
        with its class's ``import_path`` (a path is left out where no class is registered for the kind)."""
        values = dataclasses.asdict(self)
        path = _known_import_path(HEADS, "head", self.kind)
        values["loss_modules"] = {
            name: {**spec, **({IMPORT_PATH: p} if (p := _known_import_path(LOSS_MODULES, "loss module",
                                                                               spec.get("kind"))) else {})}
            for name, spec in values["loss_modules"].items()}
        return {"kind": self.kind, **({IMPORT_PATH: path} if path else {}), **values}

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


def _where(source) -> str:
    return str(source) if source else "the plans (plans.json beside the model's checkpoints)"


def resolve_class(registry: dict, what: str, kind, path: str | None = None, source=None) -> type:
    """The class a plans entry names: the one at ``path`` (imported unless the class registered under ``kind`` is
    that one), else, for plans written before paths were stored, the class registered under ``kind`` (importing the
    module :data:`KINDS_BEFORE_IMPORT_PATHS` names for it first). PlansClassError (one line) when the path cannot be
    imported, is not the class registered under ``kind`` once imported, or no class is known for ``kind``.
    ``what`` is "head" or "loss module"; ``source`` names the plans file where known."""
    registered = registry.get(kind)
    if path is None:
        if registered is None and kind in KINDS_BEFORE_IMPORT_PATHS[what]:
            try:
                import_class(KINDS_BEFORE_IMPORT_PATHS[what][kind])
            except ImportError as e:
                raise PlansClassError(
                    f"{what} kind {kind!r} of {_where(source)} is defined in {KINDS_BEFORE_IMPORT_PATHS[what][kind]}, "
                    f"which cannot be imported ({e}); expected an intact nnunet_mtl installation") from None
            registered = registry.get(kind)
        if registered is None:
            raise PlansClassError(
                f"{what} kind {kind!r} is not registered (known: {', '.join(sorted(registry)) or 'none'}) and no "
                f"import path is stored for it in {_where(source)}; expected the nnunet_mtl version that trained this "
                f"model, or the module that defines the kind imported first")
        return registered
    if registered is not None and import_path_of(registered) == path:
        return registered
    try:
        cls = import_class(path)
    except ImportError as e:
        folders = os.pathsep.join(str(f) for f in ext_trainer_folders()) or "none"
        raise PlansClassError(
            f"{what} class {path!r} (kind {kind!r}) named in {_where(source)} cannot be imported ({e}); expected its "
            f"module installed, or in a folder of nnUNet_extTrainer (existing folders now: {folders})") from None
    registered = registry.get(kind)
    if registered is None or import_path_of(registered) != import_path_of(cls):
        decorator = "@register_head" if what == "head" else f"@register_loss_module({kind!r})"
        raise PlansClassError(
            f"{what} class {path!r} named in {_where(source)} for kind {kind!r} is not registered under that kind once "
            f"imported; expected a class decorated with {decorator}")
    return registered


def head_class(kind: str, path: str | None = None, source=None) -> type[Head]:
    """The head class of ``kind`` (at ``path`` when given): :func:`resolve_class`."""
    return resolve_class(HEADS, "head", kind, path, source)


def build_loss_module(name: str, spec: dict, source=None) -> nn.Module:
    """The loss module ``name`` of a spec ``{"kind": ..., ["import_path": ...,] **its keyword arguments}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    path = spec.pop(IMPORT_PATH, None)
    try:
        cls = resolve_class(LOSS_MODULES, "loss module", kind, path, source)
    except PlansClassError as e:
        raise PlansClassError(f"loss module {name!r}: {e}") from None
    return cls(**spec)


def _known_import_path(registry: dict, what: str, kind) -> str | None:
    """The import path of the class registered under ``kind`` (the plans written now), None if none is known."""
    try:
        return import_path_of(resolve_class(registry, what, kind))
    except PlansClassError:
        return None


def head_config_from_dict(section: dict, source=None) -> HeadConfig:
    """The config stored in the plans (``kind`` defaults to the bottleneck MLP of older plans). Imports the head's
    and each loss module's class from their import paths (so that they are registered), and returns the config
    without the paths: equal to the one the trainer declared. ``source``: the plans file, for the errors."""
    values = dict(section)
    kind = values.pop("kind", DEFAULT_HEAD_KIND)
    config_class = head_class(kind, values.pop(IMPORT_PATH, None), source).config_class
    if isinstance(values.get("loss_modules"), dict):
        modules = {}
        for name, spec in values["loss_modules"].items():
            spec = dict(spec)
            try:
                resolve_class(LOSS_MODULES, "loss module", spec.get("kind"), spec.pop(IMPORT_PATH, None), source)
            except PlansClassError as e:
                raise PlansClassError(f"loss module {name!r}: {e}") from None
            modules[name] = spec
        values["loss_modules"] = modules
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PlansClassError(f"the plans' head section has parameter(s) {', '.join(unknown)} that head kind {kind!r} "
                              f"does not know; expected the nnunet_mtl version that trained this model")
    return config_class(**values)


def build_head(config: HeadConfig, encoder_channels: Sequence[int]) -> Head:
    """A fresh head of the config's kind (its class: the registered one, :func:`head_class`)."""
    return head_class(config.kind)(encoder_channels, config)
