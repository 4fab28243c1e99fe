"""BI-RADS consistency trainers (Zhang, Moradi, Saha; the method: nnunet_mtl.methods.birads_consistency).

Eq. 2: 0.9 L_seg + 0.1 L_cls + alpha MSE(p, phi) + 0.5 alpha NTP + 1e-3 ||u||^2, with the prior's u and running
statistics owned by the head. The best checkpoint is the one with the lowest validation loss, and training stops
early when it has not improved for ``early_stopping_patience`` epochs (Sec. 3.2: "early stopping based on internal
validation loss"). Variants are named by what they change: alpha (``_alpha0p17`` = the default "best-cls",
``_alpha0p18`` "best-seg", the sweep ``_alpha0p1`` ... ``_alpha0p9``, ``_alpha0`` = the multitask baseline with the
same weights and no consistency), ``_CE`` (L_seg cross-entropy only, as Zhang, Moradi, Saha's BCE), the schedule
(``_paper`` for each alpha, ``_demo``, ``_tiny``, ``_cpu``, ``_cpu1k``).
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss

from nnunet_mtl.methods.birads_consistency import (BIRADSConsistency, NoTumourPenalty, PriorWeightDecay,
                                                   loss_weights)
from nnunet_mtl.methods.multitask import Classification, Segmentation
from nnunet_mtl.trainers.mtl import define_variant, nnUNetTrainerMTL
from nnunet_mtl.trainers.schedules import BreastPaperSchedule, CPU1kSchedule, CPUSchedule, DemoSchedule, TinySchedule

SWEEP = tuple(round(0.1 * k, 1) for k in range(1, 10)) + (0.17, 0.18)  # Sec. 3.2: 0.1 ... 0.9, and the two picks


def alpha_name(alpha: float) -> str:
    return f"alpha{alpha:g}".replace(".", "p")


class nnUNetTrainerBIRADS(nnUNetTrainerMTL):
    # Zhang, Moradi, Saha's L_cls is plain BCE: no class weights
    terms = (Segmentation(), Classification(balanced=False), BIRADSConsistency(), NoTumourPenalty(), PriorWeightDecay())
    loss_weights = loss_weights(alpha=0.17)  # "Proposed-best-cls"
    selection = "val_loss"
    early_stopping_patience = 50  # of nnU-Net's 1000 epochs of 250 iterations (Zhang, Moradi, Saha name none)


for _alpha in (0.0, *SWEEP):
    define_variant(nnUNetTrainerBIRADS, f"nnUNetTrainerBIRADS_{alpha_name(_alpha)}", globals(),
                   doc=f"Eq. 2 with alpha = {_alpha:g}" + (" (no consistency, no no-tumour penalty: the multitask "
                                                            "baseline with the same weights)" if _alpha == 0 else ""),
                   loss_weights=loss_weights(alpha=_alpha))


class nnUNetTrainerBIRADS_CE(nnUNetTrainerBIRADS, nnUNetTrainerCELoss):
    """L_seg = cross-entropy only (nnU-Net's CE variant, deep supervision kept), as Zhang, Moradi, Saha's BCE on the
    mask (two softmax channels are a sigmoid of their difference)."""


class nnUNetTrainerBIRADS_paper(BreastPaperSchedule, nnUNetTrainerBIRADS):
    pass


for _alpha in (0.0, *SWEEP):
    _base = globals()[f"nnUNetTrainerBIRADS_{alpha_name(_alpha)}"]
    define_variant(_base, f"{_base.__name__}_paper", globals(), bases=(BreastPaperSchedule,),
                   doc=f"{_base.__name__} with Zhang, Moradi, Saha's schedule (AdamW 9.2e-4, cosine annealing, "
                       "batch 32).")


class nnUNetTrainerBIRADS_demo(DemoSchedule, nnUNetTrainerBIRADS):
    """The demo's schedule (compare with nnUNetTrainerBIRADS_alpha0_demo: the same without the consistency term)."""


class nnUNetTrainerBIRADS_alpha0_demo(DemoSchedule, globals()["nnUNetTrainerBIRADS_alpha0"]):
    pass


class nnUNetTrainerBIRADS_tiny(TinySchedule, nnUNetTrainerBIRADS):
    pass


class nnUNetTrainerBIRADS_cpu(CPUSchedule, nnUNetTrainerBIRADS):
    """The real-data CPU recipe's short schedule."""


class nnUNetTrainerBIRADS_cpu1k(CPU1kSchedule, nnUNetTrainerBIRADS):
    """The real-data comparisons' CPU budget: 1,000 iterations (``breast_seeds``)."""


class nnUNetTrainerBIRADS_alpha0_cpu1k(CPU1kSchedule, globals()["nnUNetTrainerBIRADS_alpha0"]):
    """nnUNetTrainerBIRADS_cpu1k without the consistency (alpha = 0): its multitask baseline with the same weights."""
