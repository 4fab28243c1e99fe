"""Time one training step of each baseline against nnUNetTrainerMTL on the same batch.

Every trainer is built from the same real nnU-Net plans (a phantom planned with nnUNetv2_plan_and_preprocess),
gets the same starting weights and batch and runs its own ``train_step``; steps are interleaved (one of each in
turn) and the medians are printed with their ratio to nnUNetTrainerMTL. Uncertainty weighting adds two scalars to
the loss; the TorchJD baselines take one gradient per task at every encoder output, hold the two rows of the
Jacobian of the encoder's parameters, and aggregate them (PCGrad / UPGrad / MGDA / CAGrad), so their step costs a
second backward through the encoder plus the aggregation. No target: the numbers say what a baseline costs.

    python benchmarks/bench_baselines_step.py [--device cpu|cuda] [--steps 10] [--size 128]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import (interleaved_medians, plan_phantom, print_step_times, step_arguments,  # noqa: E402
                             trainers_on_one_batch)

BASELINES = ("nnUNetTrainerMTL", "nnUNetTrainerMTL_UW", "nnUNetTrainerMTL_JDSum", "nnUNetTrainerMTL_PCGrad",
             "nnUNetTrainerMTL_UPGrad", "nnUNetTrainerMTL_MGDA", "nnUNetTrainerMTL_CAGrad")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=10, warmup=2)
    parser.add_argument("--trainers", default=",".join(BASELINES),
                        help="comma-separated subset of the baselines (nnUNetTrainerMTL is always timed)")
    args = parser.parse_args()
    chosen = ["nnUNetTrainerMTL"] + [t for t in args.trainers.split(",") if t and t != "nnUNetTrainerMTL"]
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import TRAINERS

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers, batch = trainers_on_one_batch({name: TRAINERS[name] for name in chosen}, plans, dataset_json,
                                                device)
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
    print_step_times(med, trainers, batch, device, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
