"""Worker processes asked for on the command line, capped to what can run: the machine's cores and the work.

More processes than cores only adds start-up time and memory (each worker imports torch or PIL again), more than
items of work starts idle ones. A value beyond either is capped and the command says so; below 1 is an error
(``0`` is accepted where nnU-Net gives it a meaning, with ``allow_zero``).
"""
from __future__ import annotations

import os

from nnunet_mtl.errors import NnunetMtlError


def available_cores() -> int:
    """The cores this process may run on (the affinity mask, which containers and SLURM set), else the count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def capped(requested: int, flag: str, work: int | None = None, *, what: str = "items",
           allow_zero: bool = False) -> tuple[int, str | None]:
    """(``requested`` worker processes at most the available cores and ``work`` when given, the note saying so or
    None). Fewer than 1 (or 0 with ``allow_zero``) is a one-line error naming ``flag``."""
    if requested < (0 if allow_zero else 1):
        raise NnunetMtlError(f"{flag} {requested}: expected at least {0 if allow_zero else 1} process"
                             + (" (0: no worker processes)" if allow_zero else ""))
    if requested == 0:
        return 0, None
    limit, why = available_cores(), "the cores of this machine"
    if work is not None and max(1, work) < limit:
        limit, why = max(1, work), f"the {what} to process"
    if requested <= limit:
        return requested, None
    return limit, f"{flag} {requested} capped to {limit} ({why})"


def cap_processes(requested: int, flag: str, work: int | None = None, *, what: str = "items",
                  allow_zero: bool = False) -> int:
    """:func:`capped`, with its note printed (on stdout, with the command's other notes)."""
    n, note = capped(requested, flag, work, what=what, allow_zero=allow_zero)
    if note:
        print(f"note: {note}", flush=True)
    return n
