"""Schedules: mixins that set nnU-Net's training attributes by a ``schedule`` dict (merged along the class
hierarchy by the base trainer, a subclass' entries winning). nnU-Net passes no arguments to trainers, so a schedule
is a class: put the mixin first, ``class nnUNetTrainerMTL_demo(DemoSchedule, nnUNetTrainerMTL)``."""
from __future__ import annotations


class DemoSchedule:
    """CPU-friendly short schedule of ``nnunet_mtl demo`` on the synthetic phantom (measured in the README): the
    phantom's validation AUC reached 1.0 at the 4th epoch, the pseudo Dice 0.90 at the 2nd, and the demo took 8 min."""
    schedule = {"num_epochs": 10, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 5, "save_every": 5,
                "early_stopping_patience": None}


class CPUSchedule:
    """Short CPU schedule of the real-data CPU recipe (``breast_cpu``: BrEaST at 128 x 128 -> UDIAT): 10 epochs of
    15 iterations at nnU-Net's planned batch (13 at 128 x 128), a checkpoint every epoch so an interrupted run loses
    at most one. About 35 s per epoch on 2 idle cores, so three trainings fit the recipe's half hour (measured in
    docs/recipes.md)."""
    schedule = {"num_epochs": 10, "num_iterations_per_epoch": 15, "num_val_iterations_per_epoch": 3, "save_every": 1,
                "early_stopping_patience": None}


class TinySchedule:
    """Smoke-test schedule (tests, CI): 2 epochs of 3 iterations."""
    schedule = {"num_epochs": 2, "num_iterations_per_epoch": 3, "num_val_iterations_per_epoch": 2,
                "early_stopping_patience": None}


class ThyroidPaperSchedule:
    """Salama et al. 2026, Sec. 3 'Implementation Details': AdamW (lr 1e-4, default betas), batch size 8, up to 500
    epochs of 250 training and 50 validation iterations, best checkpoint by validation (our multitask score).
    Weight decay: PyTorch's AdamW default 1e-2 (Salama et al. name only lr and betas; an AdamW built with only those
    has this decay). The poly learning-rate decay stays nnU-Net's (Salama et al. do not say)."""
    schedule = {"optimizer_name": "adamw", "initial_lr": 1e-4, "weight_decay": 1e-2, "fixed_batch_size": 8,
                "num_epochs": 500, "num_iterations_per_epoch": 250, "num_val_iterations_per_epoch": 50}


class CPU4kSchedule:
    """The learning-curve schedule on a CPU (docs/results.md): 4,000 iterations (80 epochs of 50) at nnU-Net's
    planned batch, 10 validation iterations per epoch (the curve: pseudo Dice, AUC and macro F1 on the validation
    patches each epoch), a checkpoint every epoch so that a run cut by ``nnUNet_mtl_max_train_minutes`` or a session's
    end continues with ``--c``. Its poly learning rate decays over the 4,000 iterations: a point of its curve at
    2,000 iterations is not the end of a 2,000-iteration schedule (whose rate would be lower by then)."""
    schedule = {"num_epochs": 80, "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 10, "save_every": 1,
                "early_stopping_patience": None}


class CPU1kSchedule:
    """The budget of the real-data comparisons on a CPU (``thyroid_cpu``, ``breast_seeds``; docs/results.md):
    1,000 iterations (20 epochs of 50) of nnU-Net's SGD at its planned batch, the poly learning rate decaying over
    the 1,000, 10 validation iterations per epoch, a checkpoint every epoch (a run cut by a session's end goes on with
    ``--c``). Chosen from the learning curves of ``CPU4kSchedule`` on BrEaST and DDTI: the segmentation flattens by
    about 1,000 iterations on both and the BrEaST classifier reaches its level from 800; 2,000 iterations would
    double the CPU hours of the two recipes (about 20 instead of 10 on 2 cores) for no measured gain. About 13-17
    minutes per training at 128 x 128 with bfloat16 on 2 cores."""
    schedule = {"num_epochs": 20, "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 10, "save_every": 1,
                "early_stopping_patience": None}


class BreastPaperSchedule:
    """Zhang, Moradi, Saha, Sec. 3.2: AdamW (lr 9.2e-4, weight decay 1e-4), batch size 32, cosine annealing, early
    stopping on the internal validation loss. Zhang, Moradi, Saha name no epoch count or patience: 100 epochs of
    nnU-Net's 250 iterations (with batch 32 on BrEaST's 214 training images, about 3,700 passes over them) and a
    patience of 20 epochs (our choices, docs/birads_consistency.md). Inputs 256 x 256: convert with --resize 256."""
    schedule = {"optimizer_name": "adamw", "initial_lr": 9.2e-4, "weight_decay": 1e-4, "fixed_batch_size": 32,
                "lr_schedule": "cosine", "num_epochs": 100, "early_stopping_patience": 20}


class FanPaperSchedule:
    """Fan et al., Sec. 3.3: Adam (lr 1e-3; PyTorch's Adam has no weight decay: AdamW with weight decay 0 is the
    same update), mini-batches of 8, 100 epochs (of nnU-Net's 250 iterations: Fan et al.'s epoch is one pass over its
    data). The learning-rate decay stays nnU-Net's poly (Fan et al. name none)."""
    schedule = {"optimizer_name": "adamw", "initial_lr": 1e-3, "weight_decay": 0.0, "fixed_batch_size": 8,
                "num_epochs": 100}
