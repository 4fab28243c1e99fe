"""Losses of the methods: clinical guidance (Eq. 3) and the RLAR penalty (Eq. 4-6) of the thyroid paper."""
from nnunet_mtl.losses.guidance import clinical_guidance_loss
from nnunet_mtl.losses.rlar import rlar_penalty

__all__ = ["clinical_guidance_loss", "rlar_penalty"]
