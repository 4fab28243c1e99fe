"""The seams every trainer is composed of (none of them imports nnU-Net):

- :mod:`~nnunet_mtl.seams.heads`: head kinds (what reads the encoder beside nnU-Net's decoder) and the loss
  modules a head owns, rebuilt from the plans (their classes imported by the paths stored there,
  :mod:`~nnunet_mtl.seams.import_paths`);
- :mod:`~nnunet_mtl.seams.terms`: loss terms (name, weight, function of outputs and batch);
- :mod:`~nnunet_mtl.seams.backward`: backward rules (weighted sum, gradient aggregation, RLAR);
- :mod:`~nnunet_mtl.seams.stages`: staged schedules;
- per-case data: :mod:`nnunet_mtl.dataset.case_table`.

How they are put together: :mod:`nnunet_mtl.trainers.mtl` (the base trainer); how to add one of each:
docs/extending.md.
"""
from nnunet_mtl.seams.backward import BackwardRule, GradientAggregation, WeightedSum, unwrap
from nnunet_mtl.seams.heads import Head, HeadConfig, register_head, register_loss_module
from nnunet_mtl.seams.stages import Stage
from nnunet_mtl.seams.terms import Batch, LossTerm, Setup, StepResult

__all__ = ["BackwardRule", "Batch", "GradientAggregation", "Head", "HeadConfig", "LossTerm", "Setup", "Stage",
           "StepResult", "WeightedSum", "register_head", "register_loss_module", "unwrap"]
