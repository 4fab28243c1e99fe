"""Time one training step of nnUNetTrainerBIRADS against nnUNetTrainerMTL on the same batch.

Both trainers are built from the same real nnU-Net plans (a phantom planned with nnUNetv2_plan_and_preprocess),
get the same weights and batch, and run their own ``train_step``; steps are interleaved and the ratio of the
medians is printed. The BI-RADS step adds the soft-mask features of the full-resolution output (two 3x3
convolutions and a few sums per image), the prior and three small terms (Zhang, Moradi, Saha, Eq. 1-2).
Target: BIRADS / MTL <= 1.10.

    python benchmarks/bench_birads_step.py [--device cpu|cuda] [--steps 15] [--size 128]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=15, warmup=3)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import nnUNetTrainerBIRADS, nnUNetTrainerMTL

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers, batch = trainers_on_one_batch(
            {"nnUNetTrainerMTL": nnUNetTrainerMTL, "nnUNetTrainerBIRADS": nnUNetTrainerBIRADS}, plans, dataset_json,
            device)
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
        prior = trainers["nnUNetTrainerBIRADS"].network.head.loss_modules["birads_prior"]
        weights = [round(w, 3) for w in prior.weights.tolist()]

    ratio = med["nnUNetTrainerBIRADS"] / med["nnUNetTrainerMTL"]
    print_step_times(med, trainers, batch, device, args.steps)
    print(f"softmax(u) after the timed steps: {weights} (started at [0.15, 0.35, 0.25, 0.25])")
    print(f"ratio nnUNetTrainerBIRADS / nnUNetTrainerMTL = {ratio:.3f}  (target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
