"""Clinically guided multitask trainers (Salama et al. 2026, Eq. 1-3; the method: nnunet_mtl.methods.clinical_guidance).

total = w_seg L_seg + w_cls L_cls + w_clin L_clin: the vanilla multitask trainer plus the guidance term, whose
13 guided features fix the head's guided width (h_tirads, Eq. 2) and are written into the plans.
"""
from __future__ import annotations

from nnunet_mtl.methods.clinical_guidance import ClinicalGuidance
from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
from nnunet_mtl.trainers.schedules import CPU1kSchedule, ThyroidPaperSchedule


class nnUNetTrainerClinGuided(nnUNetTrainerMTL):
    terms = (*nnUNetTrainerMTL.terms, ClinicalGuidance())
    loss_weights = {"clin": 0.1}  # w_clin (Eq. 7): ~13 summed squared z-scores vs a CE of ~1 at the start


class nnUNetTrainerClinGuided_clin1(nnUNetTrainerClinGuided):
    loss_weights = {"clin": 1.0}


class nnUNetTrainerClinGuided_paper(ThyroidPaperSchedule, nnUNetTrainerClinGuided):
    pass


class nnUNetTrainerClinGuided_cpu1k(CPU1kSchedule, nnUNetTrainerClinGuided):
    """The real-data comparisons' CPU budget: 1,000 iterations (``thyroid_cpu``)."""
