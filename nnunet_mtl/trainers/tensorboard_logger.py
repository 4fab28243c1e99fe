"""TensorBoard beside nnU-Net's loggers, opt-in by environment variable as nnU-Net's W&B logger is.

``export nnUNet_mtl_tensorboard=1`` before ``nnUNetv2_train``: every value the trainer logs per epoch (nnU-Net's
losses, pseudo Dice, learning rate and epoch times; our loss terms, the classification curves, the selection score,
the backward rule's values such as the RLAR penalty) goes to TensorBoard event files in
``fold_K/tensorboard/``, with the epoch as the step; ``tensorboard --logdir $nnUNet_results/DatasetNNN_X``
shows every trainer and fold side by side. nnU-Net's ``MetaLogger`` calls its loggers through ``update_config``,
``log`` and ``log_summary`` (its W&B logger has the same three), so this one is appended to its list.
"""
from __future__ import annotations

import json
import math
import os
from numbers import Real
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

ENV = "nnUNet_mtl_tensorboard"
FOLDER = "tensorboard"


def tensorboard_enabled() -> bool:
    """``nnUNet_mtl_tensorboard``: 1 / true on, unset / 0 / false off (nnU-Net's rule for nnUNet_wandb_enabled)."""
    value = str(os.environ.get(ENV, "0")).strip()
    if value in ("0", "false", "False", ""):
        return False
    if value in ("1", "true", "True"):
        return True
    raise NnunetMtlError(f"{ENV}={value!r}; expected 1 (TensorBoard on) or 0 (off)")


class TensorBoardLogger:
    """Scalars per epoch into ``output_folder/tensorboard``. The writer opens at the first value logged, purging
    what an interrupted earlier run wrote from that epoch on (nnUNetv2_train --c resumes at the last checkpoint, so
    the epochs after it are written again and must not appear twice)."""

    def __init__(self, output_folder):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (checked now, before training starts)
        except ImportError:
            raise NnunetMtlError(f"{ENV}=1 but the tensorboard package is not installed; expected `pip install "
                                 f"tensorboard` (or unset {ENV})")
        self.log_dir = Path(output_folder) / FOLDER
        self.writer = None
        self.pending_config: list[dict] = []

    def _writer(self, step: int):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step, flush_secs=30)
            for config in self.pending_config:
                self._write_config(config, step)
        return self.writer

    def _write_config(self, config: dict, step: int) -> None:
        text = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"```\n{text}\n```", step)

    def update_config(self, config: dict) -> None:
        if self.writer is None:
            self.pending_config.append(dict(config))
        else:
            self._write_config(config, 0)

    def log(self, key: str, value, step: int) -> None:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
            return  # lists are split per class by nnU-Net's MetaLogger; NaN (no value this epoch) is left out
        self._writer(step).add_scalar(key, float(value), step)

    def log_summary(self, key: str, value) -> None:
        if self.writer is None:
            return
        if isinstance(value, Real) and not isinstance(value, bool):
            self.writer.add_scalar(f"summary/{key}", float(value), 0)
        else:
            self.writer.add_text(f"summary/{key}", str(value), 0)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
