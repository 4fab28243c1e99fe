"""Files written so that a reader never sees half of one: into a temporary file beside the target (a name unique
to this process and call, so two folds or two commands writing the same file at once never share it), then renamed
into place with ``os.replace``. On an error the temporary file is removed and the target is left as it was."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process and call (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", newline: str | None = None):
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or "wb"); on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode.replace("w", "x"), newline=newline) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(text: str, path) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)
