"""Files written so that a reader never sees half of one (text, JSON, CSV, figures): into a temporary file beside the
target (a name unique to this process and call, so two folds or two commands writing the same file at once never share
it), then renamed into place with ``os.replace``. On an error the temporary file is removed and the target is left as it
was.

A process killed with SIGKILL (or by the OOM killer) during a write cannot remove its temporary file: the target is
intact, and a hidden ``.NAME.PID.HEX.tmp`` stays beside it. No reader looks for such names (nnU-Net picks files by
their exact names); :func:`remove_stale_temporaries` removes those of processes that no longer run."""
from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import uuid
from pathlib import Path
from typing import Iterator

_SUFFIX = ".tmp"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process and call (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name rather than a file object (e.g. a
    library's own save function); when the block ends without error the file there replaces ``path``, otherwise it
    is removed (``path`` untouched)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", newline: str | None = None):
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or "wb"); on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x"), newline=newline) as f:
        yield f


def write_text_atomic(text: str, path) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def stale_temporaries(path) -> list[Path]:
    """The temporary files of ``path`` (named by :func:`temporary_name`) whose writer no longer runs, or is this
    process (the caller writes ``path`` from one place at a time, so a temporary of its own pid is a leftover of an
    earlier process that had the same pid, as in a fresh container)."""
    path = Path(path)
    stale = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*{_SUFFIX}"):
        parts = candidate.name[len(path.name) + 2:-len(_SUFFIX)].split(".")  # PID, HEX
        if len(parts) != 2 or not parts[0].isdigit():
            continue  # not one of ours
        pid = int(parts[0])
        if pid == os.getpid() or not _process_runs(pid):
            stale.append(candidate)
    return sorted(stale)


def remove_stale_temporaries(path) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``path`` (left by a killed writer); returns those removed."""
    removed = []
    for tmp in stale_temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def json_safe(obj):
    """NaN / inf -> None, numpy scalars -> Python numbers, recursively (JSON has no NaN)."""
    import numpy as np  # here, not at the top: this module is imported by light commands
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj, path: Path) -> Path:
    """JSON (NaN as null), written atomically."""
    return write_text_atomic(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n", path)


def write_csv(rows: list[dict], fieldnames: list[str], path) -> Path:
    """A CSV with a header, written atomically; keys of a row outside ``fieldnames`` are ignored."""
    with atomic_open(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def save_figure_atomic(fig, path) -> Path:
    """``fig.savefig`` into a temporary file, then renamed into place (PNG unless the suffix says otherwise)."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix[1:] or "png")
    return path
