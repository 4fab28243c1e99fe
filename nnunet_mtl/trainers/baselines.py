"""Baselines as trainers, under the same data, split, augmentation and schedule as the methods: a baseline is a
backward rule (or a choice of head and terms) declared on :class:`nnUNetTrainerMTL`, never a copied trainer.

- ``nnUNetTrainerSegOnly``: segmentation only (no classification head; :mod:`nnunet_mtl.methods.single_task`);
- ``nnUNetTrainerClsOnly``: classification only (the decoder kept but never run; class probabilities only);
- ``nnUNetTrainerMTL_UW``: uncertainty weighting (Kendall et al. 2018; :mod:`nnunet_mtl.methods.uncertainty_weighting`);
- ``nnUNetTrainerMTL_PCGrad``, ``_UPGrad``, ``_MGDA``, ``_CAGrad``: gradient aggregation of the two tasks'
  gradients at every encoder output, through TorchJD (:mod:`nnunet_mtl.methods.gradient_aggregation`);
- ``nnUNetTrainerMTL_JDSum``: TorchJD's Sum aggregator, the weighted-sum step through the aggregation path (a
  check that the path adds nothing of its own; it matches ``nnUNetTrainerMTL`` step for step).

Each has the schedule variants ``_paper`` (Salama et al. 2026's thyroid schedule, to sit next to RLAR in its
tables), ``_breastpaper`` (Zhang, Moradi, Saha's, next to the BI-RADS consistency rows), ``_fanpaper`` (Fan et al.'s,
next to the lesion-aware rows), ``_demo``, ``_tiny``, ``_cpu`` (the real-data CPU recipe) and ``_cpu1k`` (the
real-data comparisons' budget).
"""
from __future__ import annotations

from nnunet_mtl.methods.gradient_aggregation import TorchJDAggregation
from nnunet_mtl.methods.multitask import Classification, Segmentation
from nnunet_mtl.methods.single_task import NoHeadConfig
from nnunet_mtl.methods.uncertainty_weighting import UncertaintyWeighting
from nnunet_mtl.trainers.mtl import define_variant, nnUNetTrainerMTL
from nnunet_mtl.trainers.schedules import (BreastPaperSchedule, CPU1kSchedule, CPUSchedule, DemoSchedule,
                                          FanPaperSchedule, ThyroidPaperSchedule, TinySchedule)


class nnUNetTrainerSegOnly(nnUNetTrainerMTL):
    """Segmentation only: nnU-Net's Dice + CE, no classification head; the best checkpoint by the pseudo Dice."""
    head = NoHeadConfig()
    terms = (Segmentation(),)
    loss_weights = {"seg": 1.0}
    selection_seg_weight = 1.0


class nnUNetTrainerClsOnly(nnUNetTrainerMTL):
    """Classification only: the balanced cross-entropy on the head; the decoder is kept but never run; the best
    checkpoint by the validation AUC."""
    terms = (Classification(),)
    loss_weights = {"cls": 1.0}
    segments = False
    selection_seg_weight = 0.0


class nnUNetTrainerMTL_UW(nnUNetTrainerMTL):
    """Uncertainty weighting (Kendall et al. 2018): sum_t exp(-s_t) L_t + s_t / 2, s_t learned."""
    backward = UncertaintyWeighting()


class nnUNetTrainerMTL_PCGrad(nnUNetTrainerMTL):
    """PCGrad (Yu et al. 2020) through TorchJD."""
    backward = TorchJDAggregation(aggregator="pcgrad")


class nnUNetTrainerMTL_UPGrad(nnUNetTrainerMTL):
    """UPGrad (Quinton & Rey 2024) through TorchJD."""
    backward = TorchJDAggregation(aggregator="upgrad")


class nnUNetTrainerMTL_MGDA(nnUNetTrainerMTL):
    """MGDA (Sener & Koltun 2018) through TorchJD."""
    backward = TorchJDAggregation(aggregator="mgda")


class nnUNetTrainerMTL_CAGrad(nnUNetTrainerMTL):
    """CAGrad (Liu et al. 2021, c = 0.5) through TorchJD."""
    backward = TorchJDAggregation(aggregator="cagrad")


class nnUNetTrainerMTL_JDSum(nnUNetTrainerMTL):
    """TorchJD's Sum: the weighted-sum step through the aggregation path (for checking)."""
    backward = TorchJDAggregation(aggregator="sum")


for _base in (nnUNetTrainerSegOnly, nnUNetTrainerClsOnly, nnUNetTrainerMTL_UW, nnUNetTrainerMTL_PCGrad,
              nnUNetTrainerMTL_UPGrad, nnUNetTrainerMTL_MGDA, nnUNetTrainerMTL_CAGrad, nnUNetTrainerMTL_JDSum):
    for _schedule, _suffix, _doc in ((ThyroidPaperSchedule, "paper", "Salama et al. 2026's schedule"),
                                     (DemoSchedule, "demo", "the demo's schedule"),
                                     (TinySchedule, "tiny", "the smoke-test schedule"),
                                     (CPUSchedule, "cpu", "the real-data CPU recipe's schedule"),
                                     (CPU1kSchedule, "cpu1k", "the real-data comparisons' 1,000 iterations"),
                                     (BreastPaperSchedule, "breastpaper", "Zhang, Moradi, Saha's schedule"),
                                     (FanPaperSchedule, "fanpaper", "Fan et al.'s schedule")):
        define_variant(_base, f"{_base.__name__}_{_suffix}", globals(), bases=(_schedule,),
                       doc=f"{_base.__name__} with {_doc}.")
