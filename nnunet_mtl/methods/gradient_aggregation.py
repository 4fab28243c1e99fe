"""Gradient-aggregation baselines through TorchJD: PCGrad, UPGrad, MGDA, CAGrad (and Sum, the check).

Each training step computes one gradient per task (segmentation, classification) with respect to the shared
parameters (the encoder), and an aggregator turns these rows of the Jacobian into the one update direction:

- **PCGrad** (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Alg. 1): each task's gradient is
  projected onto the normal plane of every other task gradient it conflicts with (negative inner product),
  then the projections are summed.
- **UPGrad** (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", Eq. 5): each gradient is
  projected onto the dual cone of the rows (the directions that improve no task less than zero), and the
  projections are averaged.
- **MGDA** (Désidéri 2012; Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization", Eq. 3):
  the minimum-norm point in the convex hull of the gradients (the common descent direction).
- **CAGrad** (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning", Eq. 3, c = 0.5 as in
  their experiments): the direction that maximizes the worst task improvement within a ball of radius c‖g0‖
  around the average gradient g0 (TorchJD's ``cagrad`` extra: cvxpy; UPGrad's projection uses the
  ``quadprog-projector`` extra; both are installed with the package).
- **Sum**: the plain sum of the rows, which is nnU-Net's weighted-sum step again (``tests/test_baselines.py``
  pins that the two agree).

How it is wired (``nnunet_mtl.seams.backward.GradientAggregation``): one forward pass with the network's feature
cut; the *shared features* are every encoder output the decoder and the head read (all skip connections, not only
the bottleneck), so that each encoder parameter's per-task gradient passes through them exactly once.
TorchJD's ``mtl_backward(losses, features, shared_params=encoder)`` puts each task's plain gradient into the
decoder's and head's ``.grad`` and the per-task Jacobian rows into the encoder parameters' ``.jac``;
``jac_to_grad(encoder, aggregator)`` aggregates them into ``.grad`` (TorchJD >= 0.18 splits these two steps).
The task losses are the weighted ones (``loss_weights``) and, under nnU-Net's AMP, scaled by the grad scaler:
every aggregator here is positively homogeneous of degree 1 (scaling all rows by s scales the result by s), so the
aggregated gradient is the scaled one the optimizer step unscales. Not under torch.compile (see
``GradientAggregation``).

Multi-GPU (nnU-Net's ``-num_gpus N``): after ``mtl_backward`` every rank's ``.jac`` is replaced by its mean over
the ranks, and the aggregator runs on that mean: the Jacobian of the mean of the ranks' task losses (the objective
nnU-Net's DDP training minimizes; for losses that are means over samples and equal per-rank batches, what one process
would aggregate for the whole batch). Every rank then aggregates the same matrix into the same update. Averaging the
ranks' aggregated gradients instead would not be that step (an aggregator is not linear in its rows: the projections
of PCGrad and UPGrad, the min-norm point of MGDA). The task-specific gradients (decoder, head) are averaged after the
step, as DDP would (:mod:`nnunet_mtl.seams.distributed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nnunet_mtl.seams.backward import GradientAggregation
from nnunet_mtl.seams.distributed import average_over_ranks

# name -> (TorchJD class name, its arguments, the reference)
AGGREGATORS = {
    "sum": ("Sum", {}, "the sum of the task gradients (= the weighted-sum step)"),
    "pcgrad": ("PCGrad", {}, "Yu et al. 2020, Alg. 1"),
    "upgrad": ("UPGrad", {}, "Quinton & Rey 2024, Eq. 5"),
    "mgda": ("MGDA", {}, "Sener & Koltun 2018, Eq. 3"),
    "cagrad": ("CAGrad", {"c": 0.5}, "Liu et al. 2021, Eq. 3, c = 0.5"),
}


def make_aggregator(name: str):
    """The TorchJD aggregator called ``name`` (:data:`AGGREGATORS`). ValueError with a one-line reason when the
    name is unknown or its optional dependency is missing."""
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator {name!r}: expected one of {', '.join(AGGREGATORS)}")
    import torchjd.aggregation as aggregation
    cls_name, kwargs, _ = AGGREGATORS[name]
    try:
        return getattr(aggregation, cls_name)(**kwargs)
    except ImportError as e:
        raise ValueError(f"aggregator {name!r} needs an optional dependency of TorchJD ({e}); expected the "
                         f"extras setup.cfg installs (torchjd[cagrad,quadprog-projector])") from None


def torchjd_step(losses: list, features: list, shared: list, aggregator) -> None:
    """TorchJD's two steps: the per-task Jacobian into the shared parameters' ``.jac`` (and plain gradients into
    the task-specific parameters), then the aggregation into ``.grad``; under multi-GPU training the Jacobians are
    averaged over the ranks between the two (see the module's docstring)."""
    import torch
    from torchjd.autojac import jac_to_grad, mtl_backward
    # Under autocast (CUDA float16, CPU bfloat16) PyTorch's batched (vmap) backward of instance norm fails on the
    # low-precision activations with float32 weights ("expected scalar type BFloat16 but found Float"): the tasks'
    # rows of the Jacobian are then differentiated one after another (the same values; one backward per task)
    low_precision = any(f.dtype in (torch.float16, torch.bfloat16) for f in features)
    mtl_backward(losses, features=features, shared_params=shared, parallel_chunk_size=1 if low_precision else None)
    average_over_ranks([p.jac for p in shared if getattr(p, "jac", None) is not None])  # multi-GPU; else a no-op
    jac_to_grad(shared, aggregator)


@dataclass
class TorchJDAggregation(GradientAggregation):
    """The backward rule of the TorchJD baselines: ``backward = TorchJDAggregation(aggregator="upgrad")``."""

    aggregator: str = "upgrad"
    name: ClassVar[str] = "TorchJD gradient aggregation"

    def validate(self) -> None:
        make_aggregator(self.aggregator)  # the name and its dependency, when the trainer is created
        self.label = f"TorchJD {AGGREGATORS[self.aggregator][0]}: {AGGREGATORS[self.aggregator][2]}"

    def setup(self, network, log) -> None:
        self._aggregator = make_aggregator(self.aggregator)

    def aggregate_gradients(self, losses: list, features: list, shared: list) -> None:
        aggregator = getattr(self, "_aggregator", None) or make_aggregator(self.aggregator)
        self._aggregator = aggregator
        torchjd_step(losses, features, shared, aggregator)
