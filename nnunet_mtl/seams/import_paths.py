"""Import paths of the classes the plans name (heads, head-owned loss modules): ``"module:qualname"``.

The plans store, next to each head's and each loss module's ``kind``, the import path of its class (as nnU-Net
stores its network class as ``network_class_name``), so that rebuilding a network imports just the module that
defines it. :func:`import_path_of` writes such a path, :func:`import_class` reads one back:

- from the installed packages (and ``sys.path``), as any import;
- else from a folder of nnU-Net's ``nnUNet_extTrainer`` (os.pathsep separated), where a user's trainer files live.
  nnU-Net's trainer lookup imports those files as top-level modules with the folder on ``sys.path`` and removes them
  from ``sys.modules`` afterwards (``nnunetv2/utilities/find_class_by_name.py``), so a class defined there is named
  ``my_trainers:MyHead`` and cannot be imported later by a plain import. :func:`import_class` imports it the same
  way, and removes the folder's modules afterwards as nnU-Net does (another folder may hold a module of the same
  name); the class itself stays alive in the registry that importing it filled.

Nothing here imports nnU-Net.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from pathlib import Path

from nnunet_mtl.paths import EXT_TRAINER_VAR

SEPARATOR = ":"


def import_path_of(cls: type) -> str:
    """``"module:qualname"`` of a class (a class defined inside a function has ``<locals>`` in its qualname: the
    path is written anyway, and names it in the error of a process that cannot import it)."""
    return f"{cls.__module__}{SEPARATOR}{cls.__qualname__}"


def ext_trainer_folders() -> list[Path]:
    """The existing folders of ``nnUNet_extTrainer``, in order (none when it is unset)."""
    value = os.environ.get(EXT_TRAINER_VAR, "")
    return [Path(p) for p in value.split(os.pathsep) if p.strip() and Path(p).is_dir()]


def _module_files(module) -> list[str]:
    """The module's file and package folders (a module's ``__getattr__`` may answer anything: torch.classes)."""
    try:
        file = getattr(module, "__file__", None)
        folders = getattr(module, "__path__", None)
        folders = [p for p in folders if isinstance(p, str)] if folders is not None else []
    except Exception:  # noqa: BLE001 (not a module of ours to inspect)
        return []
    return ([file] if isinstance(file, str) else []) + folders


def _modules_from(folder: Path) -> set[str]:
    """Names of the loaded modules whose file (or package folder) lies under ``folder``."""
    root = os.path.abspath(folder)
    names = set()
    for name, module in list(sys.modules.items()):
        for file in _module_files(module):
            try:
                if os.path.commonpath((root, os.path.abspath(file))) == root:
                    names.add(name)
                    break
            except ValueError:  # another drive
                continue
    return names


def _import_from_folder(module_name: str, folder: Path):
    """Import ``module_name`` with ``folder`` first on ``sys.path``, then drop the folder from ``sys.path`` and the
    modules imported from it from ``sys.modules`` (as nnU-Net's trainer lookup does)."""
    path = os.path.abspath(folder)
    added = path not in sys.path
    before = _modules_from(folder)
    if added:
        sys.path.insert(0, path)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and path in sys.path:
            sys.path.remove(path)
        for name in _modules_from(folder) - before:
            sys.modules.pop(name, None)


def _import_module(module_name: str):
    """The module, from the installed packages or else from the first ``nnUNet_extTrainer`` folder that holds its
    top-level name. ModuleNotFoundError when neither has it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if not e.name or not (module_name == e.name or module_name.startswith(f"{e.name}.")):
            raise  # the module exists but one of its own imports is missing
        top = module_name.split(".")[0]
        for folder in ext_trainer_folders():
            if importlib.machinery.PathFinder.find_spec(top, [str(folder)]) is not None:
                return _import_from_folder(module_name, folder)
        raise


def import_class(path: str) -> type:
    """The class at ``path`` (``"module:qualname"``). ImportError with a one-line reason when the path is malformed,
    its module cannot be imported (missing, or failing while it is imported) or has no such class."""
    module_name, separator, qualname = str(path).partition(SEPARATOR)
    if not separator or not module_name or not qualname:
        raise ImportError(f"not of the form module{SEPARATOR}qualname")
    try:
        module = _import_module(module_name)
    except Exception as e:  # noqa: BLE001 (a user's module may fail in any way while it is imported)
        reason = (str(e).splitlines() or [""])[0]
        raise ImportError(f"{type(e).__name__}: {reason}"[:300]) from None
    target = module
    for part in qualname.split("."):
        if not hasattr(target, part):
            raise ImportError(f"module {module_name} has no {qualname}")
        target = getattr(target, part)
    if not isinstance(target, type):
        raise ImportError(f"{qualname} in module {module_name} is not a class")
    return target
