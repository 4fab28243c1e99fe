"""Where a command may write, checked before any work: one line naming the path and what was expected.

Every command that writes calls one of these first, so a file where a folder belongs, a folder where a file
belongs, or a place it may not write is found before an hour of prediction, not after it. A missing folder is
fine when it can be created (nnU-Net's commands create their output folders, and so do ours); the checks never
create anything themselves.
"""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist: its nearest existing ancestor must be a folder we may write into."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise NnunetMtlError(f"{what} {path} cannot be created: {base} is a file; expected a folder there")
    if not os.access(base, os.W_OK | os.X_OK):
        raise NnunetMtlError(f"{what} {path} cannot be created: {base} is not writable; expected a folder you may "
                             f"write into")


def check_output_folder(path, what: str = "output folder") -> Path:
    """An existing writable folder, or one that can be created. Not a file."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise NnunetMtlError(f"{what} {path} is a file; expected a folder (or a new path)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise NnunetMtlError(f"{what} {path} is not writable; expected a folder you may write into")
        return path
    _check_creatable(path, what)
    return path


def check_output_file(path, what: str = "output file", *, overwrite: bool = True) -> Path:
    """A file path we may write: not an existing folder; an existing file only when ``overwrite``; its folder
    writable or creatable."""
    path = Path(path)
    if path.is_dir():
        raise NnunetMtlError(f"{what} {path} is a folder; expected the path of a file")
    if path.exists():
        if not overwrite:
            raise NnunetMtlError(f"{what} {path} already exists; expected a new file (or pass --overwrite)")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise NnunetMtlError(f"{what} {path} is not writable; expected a file you may replace")
        return path
    check_output_folder(path.parent if str(path.parent) else Path("."), f"the folder of {what} {path}:")
    return path


def check_not_an_input(path, inputs, what: str) -> None:
    """``path`` must not be one of ``inputs`` (files or folders a command reads): it would be overwritten."""
    target = Path(os.path.abspath(path))
    for item in inputs:
        if item is not None and Path(os.path.abspath(item)) == target:
            raise NnunetMtlError(f"{what} {path} is one of the inputs; expected a separate path (inputs are never "
                                 f"overwritten)")
