"""Lesion-aware trainers (Fan et al.; the method: nnunet_mtl.methods.lesion_aware).

Algorithm 1 of Fan et al. as two stages of one nnU-Net training (so the stage-2 run starts from stage 1's weights,
its output layers included, and ``--c`` resumes in either stage):

1. ``localization`` (the first ``localization_epochs``; 20 % by default): encoder, decoder and LA-Net learn from
   annotated cases only (batches drawn from cases with a mask), by w_seg L_seg + (1 - lambda) L_loc (Eq. 5); the
   classifier is frozen and L_cls off. No best-checkpoint selection (the classifier is untrained).
2. ``semi_supervised``: everything, on batches of half annotated and half unannotated cases, by w_seg L_seg (annotated
   pixels only, nnU-Net's ignore label) + lambda L_cls + (1 - lambda) (L_loc + alpha L'_loc) (Eq. 6).

Defaults (Fan et al., Sec. 3.3): lambda = 0.5, alpha = 0.1, tau = 0.8, plain cross-entropy for L_cls. Variants are
named by what they change: ``_tau0p9`` ..., ``_alpha0p5`` ..., ``_lambda0p3`` ... (Eq. 6's hyper-parameters),
``_noCAM`` / ``_noSAM`` / ``_noMAM`` (Fig. 8-11 ablations), ``_onestage`` (no localization pre-training: Algorithm 1
without stage 1), ``_pseudoseg`` (the decoder also learns from its own pseudo-labels), and the schedule (``_paper``:
Adam, lr 1e-3, batch 8, 100 epochs; ``_demo``; ``_tiny``; ``_cpu1k`` for the default alone: the real-data
comparisons' CPU budget).
"""
from __future__ import annotations

from nnunet_mtl.methods.lesion_aware import (LesionAwareConfig, Localization, PseudoLocalization,
                                             PseudoSegmentation, loss_weights)
from nnunet_mtl.methods.multitask import Classification, Segmentation
from nnunet_mtl.seams.stages import Stage
from nnunet_mtl.trainers.mtl import define_variant, nnUNetTrainerMTL
from nnunet_mtl.trainers.schedules import CPU1kSchedule, DemoSchedule, FanPaperSchedule, TinySchedule

LOCALIZATION_EPOCHS = 0.2  # t_l / (t_l + t_c) of Algorithm 1: Fan et al. give neither; our choice


def two_stages(localization_epochs: float | int = LOCALIZATION_EPOCHS, pseudo_terms=("pseudo_loc",)
               ) -> tuple[Stage, Stage]:
    """Algorithm 1's stage 1 (annotated cases; encoder, decoder and LA-Net; no L_cls, no pseudo-labels) and stage 2
    (everything, mixed batches)."""
    return (Stage("localization", epochs=localization_epochs, weights={"cls": 0.0, **{t: 0.0 for t in pseudo_terms}},
                  trainable=("encoder", "decoder", "head.attention"), sampling="annotated", select_best=False),
            Stage("semi_supervised", sampling="mixed"))


class nnUNetTrainerLesionAware(nnUNetTrainerMTL):
    head = LesionAwareConfig()
    terms = (Segmentation(), Classification(balanced=False), Localization(), PseudoLocalization())
    loss_weights = loss_weights()
    stages = two_stages()


def _name(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def _variant(name: str, doc: str, base: type = nnUNetTrainerLesionAware, **attributes) -> type:
    return define_variant(base, name, globals(), doc=doc, **attributes)


for _tau in (0.5, 0.7, 0.9):
    _variant(f"nnUNetTrainerLesionAware_tau{_name(_tau)}", f"pseudo-label threshold tau = {_tau:g} (Eq. 6)",
             terms=(Segmentation(), Classification(balanced=False), Localization(), PseudoLocalization(tau=_tau)))
for _alpha in (0.0, 0.05, 0.2, 0.5, 1.0):
    _variant(f"nnUNetTrainerLesionAware_alpha{_name(_alpha)}", f"alpha = {_alpha:g} (Eq. 6)"
             + (": no pseudo-labels" if _alpha == 0 else ""), loss_weights=loss_weights(alpha=_alpha))
for _lam in (0.3, 0.7, 0.9):
    _variant(f"nnUNetTrainerLesionAware_lambda{_name(_lam)}", f"lambda = {_lam:g} (Eq. 6)",
             loss_weights=loss_weights(lam=_lam))
for _module, _field in (("CAM", "channel_attention"), ("SAM", "spatial_attention"), ("MAM", "mask_attention")):
    _variant(f"nnUNetTrainerLesionAware_no{_module}", f"ablation (Fan et al., Fig. 8-11): without {_module}",
             head=LesionAwareConfig(**{_field: False}))
_variant("nnUNetTrainerLesionAware_onestage", "no localization pre-training: stage 2 of Algorithm 1 from the start",
         stages=(Stage("semi_supervised", sampling="mixed"),))
_variant("nnUNetTrainerLesionAware_pseudoseg",
         "the decoder also learns from its own thresholded softmax on unannotated cases (weight alpha w_seg)",
         terms=(*nnUNetTrainerLesionAware.terms, PseudoSegmentation()),
         loss_weights=loss_weights(pseudo_seg=0.1), stages=two_stages(pseudo_terms=("pseudo_loc", "pseudo_seg")))

for _base in [c for n, c in sorted(globals().items()) if n.startswith("nnUNetTrainerLesionAware")]:
    define_variant(_base, f"{_base.__name__}_paper", globals(), bases=(FanPaperSchedule,),
                   doc=f"{_base.__name__} with Fan et al.'s schedule (Adam 1e-3, batch 8, 100 epochs)")
    define_variant(_base, f"{_base.__name__}_demo", globals(), bases=(DemoSchedule,),
                   doc=f"{_base.__name__} with the demo's CPU schedule")
    define_variant(_base, f"{_base.__name__}_tiny", globals(), bases=(TinySchedule,),
                   doc=f"{_base.__name__} for smoke tests")


class nnUNetTrainerLesionAware_cpu1k(CPU1kSchedule, nnUNetTrainerLesionAware):
    """The real-data comparisons' CPU budget: 1,000 iterations, of which the first 200 (4 epochs) are stage 1."""
