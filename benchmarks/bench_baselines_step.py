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
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import interleaved_medians, make_batch, plan_phantom, prepare, step_arguments  # noqa: E402

BASELINES = ("nnUNetTrainerMTL", "nnUNetTrainerMTL_UW", "nnUNetTrainerMTL_JDSum", "nnUNetTrainerMTL_PCGrad",
             "nnUNetTrainerMTL_UPGrad", "nnUNetTrainerMTL_MGDA", "nnUNetTrainerMTL_CAGrad")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=10, warmup=2)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import TRAINERS

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers = {}
        for name in BASELINES:
            t = TRAINERS[name]({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json,
                               device)
            t.initialize()
            trainers[name] = t
        mtl = trainers["nnUNetTrainerMTL"]
        for t in trainers.values():  # the same starting weights (UW's head also owns its log-variances)
            t.network.load_state_dict(mtl.network.state_dict(), strict=False)
        batch = make_batch(mtl, mtl.configuration_manager.batch_size, torch.Generator().manual_seed(0))
        for t in trainers.values():
            prepare(t, batch)
            t.network.train()
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)

    patch = "x".join(map(str, mtl.configuration_manager.patch_size))
    amp = "AMP fp16" if device.type == "cuda" else "fp32"
    print(f"device {device} ({amp}, {torch.get_num_threads()} threads), batch {len(batch['keys'])} x {patch}, "
          f"{args.steps} interleaved steps each (median):")
    for name, value in med.items():
        print(f"  {name:26s} {value * 1000:8.1f} ms/step   {value / med['nnUNetTrainerMTL']:.3f}x MTL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
