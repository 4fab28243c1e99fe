"""nnunet_mtl: multitask nnU-Net v2 (lesion segmentation + lesion classification) for ultrasound.

The Python API (:func:`load_model`, :class:`Model`, :class:`Prediction`; docs/python_api.md) is importable from
here, lazily: ``import nnunet_mtl`` stays free of torch and nnU-Net, which only ``load_model`` imports.
"""

__version__ = "0.1.0"

__all__ = ["Model", "Prediction", "__version__", "load_model"]

_API_NAMES = ("Model", "Prediction", "load_model")


def __getattr__(name: str):
    """``nnunet_mtl.load_model`` and friends from :mod:`nnunet_mtl.api`, imported on first use (PEP 562)."""
    if name in _API_NAMES:
        from nnunet_mtl import api
        return getattr(api, name)
    raise AttributeError(f"module 'nnunet_mtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API_NAMES))
