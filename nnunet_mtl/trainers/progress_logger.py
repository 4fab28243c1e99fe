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
        fig = progress_figure(self.my_fantastic_logging, self.term_names, self.extra_keys)
        if fig is not None:
            fig.savefig(join(output_folder, "progress.png"))
            plt.close(fig)


TASK_TERMS = ("seg", "cls")  # the two tasks' losses: one scale, drawn with the weighted totals


def _legend_below(ax, handles=None, labels=None):
    """A legend under the panel, never over its curves."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(4, max(1, len(handles))),
              frameon=False)


def progress_figure(log: dict, term_names: Sequence[str], extra_keys: Sequence[str] = ()):
    """progress.png's figure (None before the first epoch). Panels: the weighted totals with the tasks' terms
    (``seg``, ``cls``) and the pseudo Dice; the other loss terms on an axis of their own (the clinical-guidance loss
    is 8-25 where the tasks' are below 1: on one axis it flattens them), log-scaled when all positive, with the
    backward rule's values (e.g. the RLAR penalty, in [0, 1]) on a second axis; the classification curves and the
    selection score; the epoch duration; the learning rate. Legends sit under their panels."""
    epoch = min(len(v) for v in log.values()) - 1
    if epoch < 0:
        return None
    x = list(range(epoch + 1))
    others = [n for n in term_names if n not in TASK_TERMS]
    panels = 5 if others or extra_keys else 4
    fig, axes = plt.subplots(panels, 1, figsize=(16, 6.5 * panels))
    stage_changes = [e for e in range(1, epoch + 1) if log["stage"][e] != log["stage"][e - 1]]
    colors = {name: TERM_COLORS[i % len(TERM_COLORS)] for i, name in enumerate(term_names)}

    # 1. losses: the weighted totals and the tasks' terms; pseudo Dice on the right
    ax = axes[0]
    ax.plot(x, log["train_losses"][:epoch + 1], color="b", label="loss_tr (weighted total)", linewidth=2)
    ax.plot(x, log["val_losses"][:epoch + 1], color="r", label="loss_val (weighted total)", linewidth=2)
    for name in (n for n in term_names if n in TASK_TERMS):
        ax.plot(x, log[f"train_{name}_losses"][:epoch + 1], color=colors[name], ls="--", label=f"loss_tr {name}")
        ax.plot(x, log[f"val_{name}_losses"][:epoch + 1], color=colors[name], ls=":", label=f"loss_val {name}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice")
    ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=2)
    ax2.set_ylabel("pseudo dice")
    handles, labels = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    _legend_below(ax, handles + more[0], labels + more[1])
    ax.set_title("loss (weighted totals and the tasks' terms) and pseudo Dice", loc="left")

    row = 1
    if panels == 5:  # 2. the other loss terms, their own scale; the backward rule's values on the right
        ax = axes[row]
        row += 1
        values = []
        for name in others:
            for split, ls in (("train", "--"), ("val", ":")):
                series = log[f"{split}_{name}_losses"][:epoch + 1]
                values += [v for v in series if v == v]
                short = "tr" if split == "train" else "val"
                ax.plot(x, series, color=colors[name], ls=ls, label=f"loss_{short} {name}")
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (unweighted)" + (", log scale" if ax.get_yscale() == "log" else ""))
        handles, labels = ax.get_legend_handles_labels()
        if extra_keys:
            ax3 = ax.twinx()
            for key in extra_keys:
                ax3.plot(x, log[key][:epoch + 1], color="k", ls="-.", alpha=0.7, label=key)
            ax3.set_ylabel(", ".join(extra_keys))
            more = ax3.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        _legend_below(ax, handles, labels)
        ax.set_title("other loss terms" + (" and the backward rule's values" if extra_keys else ""), loc="left")

    # 3. classification on the validation patches, and the checkpoint-selection score
    ax = axes[row]
    ax.plot(x, log["val_auc"][:epoch + 1], color="m", label="val AUC")
    ax.plot(x, log["val_macro_f1"][:epoch + 1], color="c", label="val macro F1")
    ax.plot(x, log["val_balanced_accuracy"][:epoch + 1], color="y", label="val balanced accuracy")
    ax.plot(x, log["ema_mtl_score"][:epoch + 1], color="k", linewidth=2,
            label="selection score (mov. avg.), best checkpoint")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("classification")
    _legend_below(ax)
    ax.set_title("classification (validation patches) and the checkpoint-selection score", loc="left")
    for a in axes[:row + 1]:
        for e in stage_changes:
            a.axvline(e - 0.5, color="0.5", ls="--", linewidth=1)
            a.text(e - 0.5, 1.0, f" stage {log['stage'][e] + 1}", transform=a.get_xaxis_transform(),
                   va="top", fontsize=9, color="0.3")

    # 4. epoch duration, 5. learning rate (as in nnU-Net)
    ax = axes[row + 1]
    durations = [e - s for e, s in zip(log["epoch_end_timestamps"][:epoch + 1],
                                       log["epoch_start_timestamps"][:epoch + 1])]
    ax.plot(x, durations, color="b", label="epoch duration")
    ax.set_ylim(0, max(durations + [1e-3]) * 1.1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("time [s]")
    ax.set_title("epoch duration", loc="left")
    ax = axes[row + 2]
    ax.plot(x, log["lrs"][:epoch + 1], color="b", label="learning rate")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate", loc="left")
    fig.tight_layout()
    return fig
