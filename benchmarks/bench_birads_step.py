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
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import interleaved_medians, make_batch, plan_phantom, prepare, step_arguments  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=15, warmup=3)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import nnUNetTrainerBIRADS, nnUNetTrainerMTL

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers = {}
        for name, cls in (("nnUNetTrainerMTL", nnUNetTrainerMTL), ("nnUNetTrainerBIRADS", nnUNetTrainerBIRADS)):
            t = cls({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json, device)
            t.initialize()
            trainers[name] = t
        mtl, birads = trainers["nnUNetTrainerMTL"], trainers["nnUNetTrainerBIRADS"]
        # the same starting weights for everything both networks have (the BI-RADS head also owns the prior)
        birads.network.load_state_dict(mtl.network.state_dict(), strict=False)
        batch = make_batch(mtl, mtl.configuration_manager.batch_size, torch.Generator().manual_seed(0))
        for t in trainers.values():
            prepare(t, batch)
            t.network.train()
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
        prior = birads.network.head.loss_modules["birads_prior"]
        weights = [round(w, 3) for w in prior.weights.tolist()]

    ratio = med["nnUNetTrainerBIRADS"] / med["nnUNetTrainerMTL"]
    patch = "x".join(map(str, mtl.configuration_manager.patch_size))
    amp = "AMP fp16" if device.type == "cuda" else "fp32"
    print(f"device {device} ({amp}, {torch.get_num_threads()} threads), batch {len(batch['keys'])} x {patch}, "
          f"{args.steps} interleaved steps each (median):")
    for name, value in med.items():
        print(f"  {name:22s} {value * 1000:8.1f} ms/step   {value / med['nnUNetTrainerMTL']:.3f}x MTL")
    print(f"softmax(u) after the timed steps: {weights} (started at [0.15, 0.35, 0.25, 0.25])")
    print(f"ratio nnUNetTrainerBIRADS / nnUNetTrainerMTL = {ratio:.3f}  (target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
