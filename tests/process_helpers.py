"""Processes as Linux's /proc shows them, for the tests that check what a kill or a cancel leaves running
(test_crash_safety, test_recipes)."""
from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...); None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def parents() -> dict[int, int]:
    """{pid: parent pid} of every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            found[int(entry)] = int(fields[1])
    return found


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (children, theirs, ...)."""
    tree, found, frontier = parents(), set(), {pid}
    while frontier:
        frontier = {p for p, parent in tree.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: not gone, and not a zombie not yet reaped."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def cmdline(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ("" when the process is gone, or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def running_naming(text: str) -> list[int]:
    """The running processes whose command line contains ``text``."""
    return [pid for pid in parents() if text in cmdline(pid) and running(pid)]
