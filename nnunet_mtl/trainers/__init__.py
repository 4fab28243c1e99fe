"""Our nnU-Net trainers, found by nnU-Net's lookup by class name through nnUNet_extTrainer (nnunet_mtl/ext_trainers).

Every module of this package is imported, and every subclass of :class:`nnUNetTrainerMTL` whose name starts with
``nnUNetTrainer`` is a trainer: defining a class (or generating one with ``define_variant``) is all it takes, no
list to keep. ``TRAINERS`` maps names to classes; ``__all__`` is their names.
"""
import importlib
import pkgutil

from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _all_trainers(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_trainers(sub)


TRAINERS = {c.__name__: c for c in [nnUNetTrainerMTL, *_all_trainers(nnUNetTrainerMTL)]
            if c.__name__.startswith("nnUNetTrainer") and c.__module__.startswith(__name__ + ".")}
globals().update(TRAINERS)
__all__ = sorted(TRAINERS)
