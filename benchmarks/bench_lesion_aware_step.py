"""Time one training step of nnUNetTrainerLesionAware against nnUNetTrainerMTL on the same batch.

Both trainers are built from the same real nnU-Net plans (a phantom planned with nnUNetv2_plan_and_preprocess),
get the same weights and batch, and run their own ``train_step``; steps are interleaved and the ratio of the
medians is printed. The lesion-aware step is timed in its second stage (Fan et al., Algorithm 1, stage 2: every
term on), with half of the batch's cases unannotated (cases.csv mask ``none``) so that the pseudo-label term runs;
its head adds LA-Net (a 1 x 1 projection per stage, a shared CBAM and squeeze, one 3 x 3 fusion convolution) on the
four deepest encoder outputs, which are small, and the mask attention on the bottleneck.
Target: LesionAware / MTL <= 1.15.

    python benchmarks/bench_lesion_aware_step.py [--device cpu|cuda] [--steps 15] [--size 128]
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

TARGET = 1.15


def half_unannotated(trainer, keys) -> None:
    """The trainer's case table with every second case marked ``none`` (unannotated), as in a 50 % dataset."""
    import pandas as pd

    from nnunet_mtl.dataset.case_table import CaseTable
    names = trainer.class_names
    frame = pd.DataFrame({"case_id": keys, "split": "train", "class": [names[i % len(names)] for i in range(len(keys))],
                          "patient_id": keys, "mask": ["full" if i % 2 == 0 else "none" for i in range(len(keys))]})
    trainer.cases = CaseTable(frame, trainer.class_labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=15, warmup=3)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import nnUNetTrainerLesionAware, nnUNetTrainerMTL

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers, batch = trainers_on_one_batch(
            {"nnUNetTrainerMTL": nnUNetTrainerMTL, "nnUNetTrainerLesionAware": nnUNetTrainerLesionAware}, plans,
            dataset_json, device)
        for trainer in trainers.values():
            half_unannotated(trainer, list(batch["keys"]))
        lesion_aware = trainers["nnUNetTrainerLesionAware"]
        lesion_aware._enter_stage(lesion_aware._stage_plan()[1].start)  # stage 2: every term
        head = lesion_aware.network.head
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
        pseudo = lesion_aware.train_step(batch)["pseudo_loc_loss"]

    ratio = med["nnUNetTrainerLesionAware"] / med["nnUNetTrainerMTL"]
    print_step_times(med, trainers, batch, device, args.steps)
    print(f"LA-Net reads {head.num_read} encoder stages; P at the bottleneck's size; pseudo-label loss of the last "
          f"step {float(pseudo):.4f}")
    print(f"ratio nnUNetTrainerLesionAware / nnUNetTrainerMTL = {ratio:.3f}  (target <= {TARGET}: "
          f"{'met' if ratio <= TARGET else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
