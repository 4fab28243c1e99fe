"""Worker processes that die with their parent, however it dies.

nnU-Net's multi-process augmenter (batchgenerators' NonDetMultiThreadedAugmenter) forks its workers from the
training process; they wait for a stop event that only the trainer sets, so a trainer killed with SIGKILL leaves
them running for good (reparented to init, polling, holding their memory). Linux's PR_SET_PDEATHSIG makes the
kernel send a signal to a child when the thread that forked it exits; nnU-Net gives us no hook inside its
workers, but Python runs os.register_at_fork hooks in every child of os.fork (multiprocessing's default "fork"
start method on Linux up to Python 3.13).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = None  # libc's prctl, looked up in the parent (no dlopen in a freshly forked child)
_guarded_process: int | None = None  # the process whose forked children die with it
_guarded_thread: int | None = None  # its main thread (PR_SET_PDEATHSIG follows the thread that forked)
_forking_process: int | None = None  # set in the parent just before each fork, so the child knows who forked it


def _note_forking_process() -> None:
    global _forking_process
    _forking_process = os.getpid()


def _die_with_parent() -> None:
    """In a child just forked by the guarded process' main thread: SIGKILL when that process dies. Children of
    other processes (a worker's own children) and of other threads are left alone."""
    if (_prctl is None or _guarded_process is None or _forking_process != _guarded_process
            or threading.get_ident() != _guarded_thread):
        return
    if _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return
    if os.getppid() != _guarded_process:  # the parent died before the prctl: no signal would come
        os.kill(os.getpid(), signal.SIGKILL)


def children_die_with_this_process() -> bool:
    """From now on, children forked by this process' main thread (nnU-Net's augmentation workers in training; the
    multiprocessing manager of nnU-Net's prediction, through which its preprocessing and export workers end too)
    are killed by the kernel when this process dies, however it dies. Linux with the fork start method only
    (elsewhere nothing changes: spawned children are not forked here); True when in effect."""
    global _prctl, _guarded_process, _guarded_thread
    if not sys.platform.startswith("linux"):
        return False
    if _prctl is None:
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            return False
        prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _prctl = prctl
        os.register_at_fork(before=_note_forking_process, after_in_child=_die_with_parent)
    _guarded_process, _guarded_thread = os.getpid(), threading.main_thread().ident
    return True
