"""Time one training step of nnUNetTrainerRLAR against nnUNetTrainerMTL on the same batch.

Three trainers' own ``train_step`` on the same real nnU-Net plan (a phantom planned with
nnUNetv2_plan_and_preprocess), same weights, same batch:
  - nnUNetTrainerMTL: forward, seg + cls loss, backward, step (the multitask baseline)
  - nnUNetTrainerClinGuided: + the clinical guidance loss (no penalty)
  - nnUNetTrainerRLAR: + the gradients of every task at z (create_graph) and the penalty's double backward
Steps are interleaved so drift of the machine hits all alike; ratios of the medians are printed.
Target: nnUNetTrainerRLAR / nnUNetTrainerMTL <= 1.5.

    python benchmarks/bench_rlar_step.py [--device cpu|cuda] [--steps 10] [--size 128] [--layer bottleneck]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_batch, plan_phantom, time_step  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="phantom image size, sets the planned patch")
    parser.add_argument("--layer", default="bottleneck", help="bottleneck | last | mid | last3")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    from nnunet_mtl.trainers.guided import nnUNetTrainerRLAR
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
    from nnunet_mtl.trainers.guided import nnUNetTrainerClinGuided

    class RLARLayer(nnUNetTrainerRLAR):
        rlar_layer = args.layer

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers = {}
        for name, cls in (("nnUNetTrainerMTL", nnUNetTrainerMTL), ("nnUNetTrainerClinGuided", nnUNetTrainerClinGuided),
                          ("nnUNetTrainerRLAR", RLARLayer)):
            t = cls({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json, device)
            t.initialize()
            trainers[name] = t
        first = trainers["nnUNetTrainerMTL"]
        batch_size = first.configuration_manager.batch_size
        batch = make_batch(first, batch_size, torch.Generator().manual_seed(0))
        rng = np.random.default_rng(0)
        reference_state = trainers["nnUNetTrainerRLAR"].network.state_dict()
        for name, t in trainers.items():
            t.network.load_state_dict(reference_state)  # same shapes: guided_dim only names part of h
            t.cls_loss = torch.nn.CrossEntropyLoss(weight=torch.ones(t.num_cls_classes, device=device))
            t._class_of_case = {k: i % t.num_cls_classes for i, k in enumerate(batch["keys"])}
            if hasattr(t, "guidance_features"):
                t._targets = {k: rng.standard_normal(len(t.guidance_features)) for k in batch["keys"]}
            t.network.train()

        def timed(trainer) -> float:
            return time_step(trainer, batch, device)

        for _ in range(args.warmup):
            for t in trainers.values():
                timed(t)
        times = {name: [] for name in trainers}
        for _ in range(args.steps):
            for name, t in trainers.items():
                times[name].append(timed(t))
        stages = trainers["nnUNetTrainerRLAR"].rlar_stages()

    med = {k: statistics.median(v) for k, v in times.items()}
    patch = "x".join(map(str, first.configuration_manager.patch_size))
    amp = "AMP fp16" if device.type == "cuda" else "fp32"
    print(f"device {device} ({amp}, {torch.get_num_threads()} threads), batch {batch_size} x {patch}, RLAR at "
          f"{args.layer} (stage {stages}), lambda_adv {trainers['nnUNetTrainerRLAR'].adv_weight}, {args.steps} "
          f"interleaved steps each (median):")
    for name, value in med.items():
        print(f"  {name:22s} {value * 1000:8.1f} ms/step   {value / med['nnUNetTrainerMTL']:.2f}x MTL")
    ratio = med["nnUNetTrainerRLAR"] / med["nnUNetTrainerMTL"]
    print(f"ratio nnUNetTrainerRLAR / nnUNetTrainerMTL = {ratio:.3f}  (target <= 1.5: "
          f"{'met' if ratio <= 1.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
