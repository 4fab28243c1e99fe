"""The converters of ``nnunet_mtl convert``: each sub-command's name and the module that registers it.

``nnunet_mtl convert`` imports each module named here and calls its ``register_converters(sources)``; the recipe
schema (:mod:`nnunet_mtl.recipes.schema`) checks a dataset's ``converter = "..."`` against :func:`converter_names`.
A new converter is one new module plus one line here (``tests/test_convert_common.py`` checks that every module
with ``register_converters`` is listed and registers exactly the names listed for it).

This module imports nothing: the recipe schema reads it without loading a converter.
"""
from __future__ import annotations

# sub-command name (aliases aside) -> the module whose register_converters adds it, in the order the CLI lists them
CONVERTERS: dict[str, str] = {
    "synthetic": "nnunet_mtl.cli.convert",  # the phantom: its own options (no source folder), registered by the CLI
    "aimi": "dataset_conversion.aimi",
    "breast": "dataset_conversion.breast",
    "udiat": "dataset_conversion.breast",
    "bus-uclm": "dataset_conversion.bus_uclm",
    "busi": "dataset_conversion.busi",
    "ddti": "dataset_conversion.ddti",
    "thyroidxl": "dataset_conversion.thyroid_xl",
    "tn3k": "dataset_conversion.tn3k",
}


def converter_names() -> tuple[str, ...]:
    """The sub-command names of ``nnunet_mtl convert`` (without their aliases), in :data:`CONVERTERS`' order."""
    return tuple(CONVERTERS)


def converter_modules() -> list[str]:
    """The modules that register the converters (each once, in :data:`CONVERTERS`' order); each defines
    ``register_converters(sources)``."""
    return list(dict.fromkeys(CONVERTERS.values()))
