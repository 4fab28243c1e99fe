"""nnU-Net's LocalLogger with every loss term, the classification curves and the stages added to progress.png.

nnU-Net's logger asserts that every key it is given was registered, and draws the plot up to the shortest logged
list, so every key registered here is logged exactly once per epoch by the base trainer: per loss term
``train_<name>_losses`` and ``val_<name>_losses``, per value a backward rule reports ``train_<value>``, and the keys
of :data:`MTL_KEYS`.
"""
from __future__ import annotations

from os.path import join
from typing import Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

MTL_KEYS = ("val_macro_f1", "val_auc", "val_balanced_accuracy", "mtl_score", "ema_mtl_score", "stage")
TERM_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def term_keys(term_names: Sequence[str]) -> list[str]:
    return [f"{split}_{name}_losses" for name in term_names for split in ("train", "val")]


class MultitaskLocalLogger(LocalLogger):
    def __init__(self, verbose: bool = False, term_names: Sequence[str] = ("seg", "cls"),
                 extra_keys: Sequence[str] = ()):
        super().__init__(verbose)
        self.term_names = tuple(term_names)
        self.extra_keys = tuple(extra_keys)
        for key in (*term_keys(self.term_names), *MTL_KEYS, *self.extra_keys):
            self.my_fantastic_logging.setdefault(key, [])

    def load_checkpoint(self, checkpoint: dict):
        # a checkpoint written before a key existed keeps working: its epochs get NaN for the new key (stage 0), so
        # that every list stays one entry per epoch and the plot keeps the epochs before the resume
        epochs = len(checkpoint.get("train_losses", []))
        for key in self.my_fantastic_logging:
            if key not in checkpoint:
                checkpoint[key] = [0 if key == "stage" else float("nan")] * epochs
        self.my_fantastic_logging = checkpoint

    def plot_progress_png(self, output_folder):
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        if epoch < 0:
            return
        x = list(range(epoch + 1))
        fig, axes = plt.subplots(4, 1, figsize=(16, 26))
        stage_changes = [e for e in range(1, epoch + 1) if log["stage"][e] != log["stage"][e - 1]]

        # 1. losses: the weighted totals, every term, and the backward rule's values; pseudo Dice
        ax = axes[0]
        ax.plot(x, log["train_losses"][:epoch + 1], color="b", label="loss_tr (weighted total)", linewidth=2)
        ax.plot(x, log["val_losses"][:epoch + 1], color="r", label="loss_val (weighted total)", linewidth=2)
        for i, name in enumerate(self.term_names):
            color = TERM_COLORS[i % len(TERM_COLORS)]
            ax.plot(x, log[f"train_{name}_losses"][:epoch + 1], color=color, ls="--", label=f"loss_tr {name}")
            ax.plot(x, log[f"val_{name}_losses"][:epoch + 1], color=color, ls=":", label=f"loss_val {name}")
        for key in self.extra_keys:  # e.g. the RLAR penalty
            ax.plot(x, log[key][:epoch + 1], color="k", ls="-.", alpha=0.7, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        ax2 = ax.twinx()
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice")
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=2)
        ax2.set_ylabel("pseudo dice")
        ax2.legend(loc="upper right")

        # 2. classification on the validation patches, and the checkpoint-selection score
        ax = axes[1]
        ax.plot(x, log["val_auc"][:epoch + 1], color="m", label="val AUC")
        ax.plot(x, log["val_macro_f1"][:epoch + 1], color="c", label="val macro F1")
        ax.plot(x, log["val_balanced_accuracy"][:epoch + 1], color="y", label="val balanced accuracy")
        ax.plot(x, log["ema_mtl_score"][:epoch + 1], color="k", linewidth=2,
                label="selection score (mov. avg.), best checkpoint")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_ylabel("classification")
        ax.legend(loc="lower right")
        for a in axes[:2]:
            for e in stage_changes:
                a.axvline(e - 0.5, color="0.5", ls="--", linewidth=1)
                a.text(e - 0.5, 1.0, f" stage {log['stage'][e] + 1}", transform=a.get_xaxis_transform(),
                       va="top", fontsize=9, color="0.3")

        # 3. epoch duration, 4. learning rate (as in nnU-Net)
        ax = axes[2]
        durations = [e - s for e, s in zip(log["epoch_end_timestamps"][:epoch + 1],
                                           log["epoch_start_timestamps"][:epoch + 1])]
        ax.plot(x, durations, color="b", label="epoch duration")
        ax.set_ylim(0, max(durations + [1e-3]) * 1.1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("time [s]")
        ax.legend(loc="lower right")
        ax = axes[3]
        ax.plot(x, log["lrs"][:epoch + 1], color="b", label="learning rate")
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(loc="upper right")

        plt.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
