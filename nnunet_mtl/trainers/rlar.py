"""RLAR trainers (Salama et al. 2026, Eq. 4-7; the method: nnunet_mtl.methods.rlar).

The clinically guided trainer with RLAR's backward rule: total = w_seg L_seg + w_cls L_cls + w_clin L_clin +
lambda_adv P, with P the mean |cos| between the tasks' gradients at z. Variants are named by what they change:
where z is (``_last``, ``_mid``, ``_last3``; Tables 3-4), lambda_adv (``_adv0p01``, ``_adv1``), the schedule
(``_paper``, ``_cpu1k``, ``_demo``, ``_tiny``), and ``_autograd`` (every gradient from plain autograd, for checking).
"""
from __future__ import annotations

from dataclasses import replace

from nnunet_mtl.methods.rlar import RLAR
from nnunet_mtl.trainers.clinical_guidance import nnUNetTrainerClinGuided
from nnunet_mtl.trainers.mtl import define_variant
from nnunet_mtl.trainers.schedules import CPU1kSchedule, DemoSchedule, ThyroidPaperSchedule, TinySchedule


class nnUNetTrainerRLAR(nnUNetTrainerClinGuided):
    backward = RLAR(layer="bottleneck", adv_weight=0.1)


class nnUNetTrainerRLAR_last(nnUNetTrainerRLAR):
    """RLAR at the last encoder stage before the bottleneck (Tables 3-4)."""
    backward = replace(nnUNetTrainerRLAR.backward, layer="last")


class nnUNetTrainerRLAR_mid(nnUNetTrainerRLAR):
    """RLAR at the middle encoder stage (Tables 3-4; best on the external AIMI set in Salama et al. 2026)."""
    backward = replace(nnUNetTrainerRLAR.backward, layer="mid")


class nnUNetTrainerRLAR_last3(nnUNetTrainerRLAR):
    """RLAR averaged over the last three encoder stages (Tables 3-4)."""
    backward = replace(nnUNetTrainerRLAR.backward, layer="last3")


class nnUNetTrainerRLAR_autograd(nnUNetTrainerRLAR):
    """RLAR with every gradient from plain autograd (the straightforward implementation): the same values as
    nnUNetTrainerRLAR, slower; for checking and for benchmarks/bench_rlar_step.py."""
    backward = replace(nnUNetTrainerRLAR.backward, fast=False)


class nnUNetTrainerRLAR_adv0p01(nnUNetTrainerRLAR):
    backward = replace(nnUNetTrainerRLAR.backward, adv_weight=0.01)


class nnUNetTrainerRLAR_adv1(nnUNetTrainerRLAR):
    backward = replace(nnUNetTrainerRLAR.backward, adv_weight=1.0)


# Salama et al. 2026's schedule for the default and for every layer of the ablation (Tables 3-4)
for _base in (nnUNetTrainerRLAR, nnUNetTrainerRLAR_last, nnUNetTrainerRLAR_mid, nnUNetTrainerRLAR_last3):
    define_variant(_base, f"{_base.__name__}_paper", globals(), bases=(ThyroidPaperSchedule,),
                   doc=f"{_base.__name__} with the schedule of Salama et al. 2026 (AdamW 1e-4, batch 8, 500 x 250).")
    define_variant(_base, f"{_base.__name__}_cpu1k", globals(), bases=(CPU1kSchedule,),
                   doc=f"{_base.__name__} with the real-data comparisons' CPU budget (1,000 iterations, thyroid_cpu).")


class nnUNetTrainerRLAR_tiny(TinySchedule, nnUNetTrainerRLAR):
    pass


class nnUNetTrainerRLAR_demo(DemoSchedule, nnUNetTrainerRLAR):
    """The demo's schedule, for comparing with nnUNetTrainerMTL_demo on the phantom."""
