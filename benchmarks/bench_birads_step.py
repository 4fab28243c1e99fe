"""Time one training step of nnUNetTrainerBIRADS against nnUNetTrainerMTL on the same batch.

Both trainers are built from the same real nnU-Net plans (a phantom planned with nnUNetv2_plan_and_preprocess),
get the same weights and batch, and run their own ``train_step``; steps are interleaved and the ratio of the
medians is printed. The BI-RADS step adds the soft-mask features of the full-resolution output (two 3x3
convolutions and a few sums per image), the prior and three small terms (Zhang, Moradi, Saha, Eq. 1-2).
Target: BIRADS / MTL <= 1.10.

    python benchmarks/bench_birads_step.py [--device cpu|cuda] [--steps 15] [--size 128]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import method_against_mtl  # noqa: E402


def prior_after_the_steps(trainers, batch):
    prior = trainers["nnUNetTrainerBIRADS"].network.head.loss_modules["birads_prior"]
    return lambda: [f"softmax(u) after the timed steps: {[round(w, 3) for w in prior.weights.tolist()]} "
                    f"(started at [0.15, 0.35, 0.25, 0.25])"]


if __name__ == "__main__":
    sys.exit(method_against_mtl(__doc__, "nnUNetTrainerBIRADS", 1.10, prior_after_the_steps))
