"""Mixed precision on the CPU: bfloat16 autocast for training and prediction, where the CPU computes bfloat16 natively.

nnU-Net turns autocast on only on CUDA (float16 with a grad scaler); on the CPU it runs everything in float32. A CPU
with native bfloat16 instructions (x86's AVX-512 BF16 or AMX) runs nnU-Net's 2D network in about half the time under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (benchmarks/bench_amp.py, docs/benchmarks.md), and bfloat16 has
float32's exponent range, so it needs no grad scaler. One switch chooses it, for every trainer (``nnUNetv2_train``
reads it from the environment, having no flag of ours) and for ``nnunet_mtl predict`` (which also has
``--cpu-amp``):

    nnUNet_mtl_cpu_amp = auto (default) | bf16 | off

- ``auto``: bfloat16 where the CPU reports native bfloat16 (``avx512_bf16`` or ``amx_bf16`` among its flags), float32
  elsewhere (bfloat16 emulated on an older CPU is slower than float32);
- ``bf16``: bfloat16 autocast on any CPU; ``off``: float32, nnU-Net's own behaviour (and masks bit-identical to
  ``nnUNetv2_predict``'s on the CPU).

CUDA is untouched (nnU-Net's float16 autocast and grad scaler), and so are other devices (no autocast). The parameters,
their gradients and the optimizer stay float32 (autocast casts only the operations' inputs). What is computed in
float32 on purpose stays so under either autocast: the classification loss and softmax, the BI-RADS features, the
RLAR cosine and instance norm's written-out sums, the lesion-aware BCE, the class probabilities, and radiomics (numpy,
never under autocast).
"""
from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from functools import lru_cache

import torch

from nnunet_mtl.errors import NnunetMtlError

ENV_VAR = "nnUNet_mtl_cpu_amp"
CHOICES = ("auto", "bf16", "off")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native-bfloat16 flags (Linux's /proc/cpuinfo); () where none or unknown (other systems)."""
    if platform.system() != "Linux":
        return ()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)
    except OSError:
        pass
    return ()


def requested(value: str | None = None) -> str:
    """The switch's value: ``value`` if given, else the environment's, else ``auto``; one line for anything else."""
    source = "--cpu-amp" if value is not None else ENV_VAR
    if value is None:
        value = os.environ.get(ENV_VAR, "") or "auto"
    value = value.strip().lower()
    if value not in CHOICES:
        raise NnunetMtlError(f"{source} is {value!r}; expected one of {', '.join(CHOICES)}")
    return value


def cpu_amp_enabled(value: str | None = None) -> bool:
    """Whether bfloat16 autocast is used on the CPU (see the module docstring)."""
    choice = requested(value)
    return choice == "bf16" or (choice == "auto" and bool(cpu_bf16_flags()))


def autocast_for(device: torch.device, value: str | None = None):
    """A context-manager factory for the forward pass on ``device``: nnU-Net's on CUDA (float16 autocast), bfloat16
    autocast on the CPU when enabled, no autocast otherwise."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", enabled=True)
    if device.type == "cpu" and cpu_amp_enabled(value):
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext


def describe(device: torch.device, value: str | None = None) -> str:
    """One line for the training log and the prediction's output: the precision used on ``device`` and why."""
    if device.type == "cuda":
        return "precision: float16 autocast with nnU-Net's grad scaler (CUDA)"
    if device.type != "cpu":
        return f"precision: float32 ({device.type})"
    choice = requested(value)
    flags = cpu_bf16_flags()
    if choice == "off":
        return f"precision: float32 ({ENV_VAR}=off)"
    if choice == "bf16":
        return f"precision: bfloat16 autocast on the CPU ({ENV_VAR}=bf16" + \
            (")" if flags else "; this CPU reports no native bfloat16, which may be slower than float32)")
    if flags:
        return (f"precision: bfloat16 autocast on the CPU ({ENV_VAR}=auto: the CPU has {', '.join(flags)}; "
                f"{ENV_VAR}=off for float32)")
    return f"precision: float32 ({ENV_VAR}=auto: the CPU reports no native bfloat16)"

