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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import method_against_mtl  # noqa: E402


def half_unannotated(trainer, keys) -> None:
    """The trainer's case table with every second case marked ``none`` (unannotated), as in a 50 % dataset."""
    import pandas as pd

    from nnunet_mtl.dataset.case_table import CaseTable
    names = trainer.class_names
    frame = pd.DataFrame({"case_id": keys, "split": "train", "class": [names[i % len(names)] for i in range(len(keys))],
                          "patient_id": keys, "mask": ["full" if i % 2 == 0 else "none" for i in range(len(keys))]})
    trainer.cases = CaseTable(frame, trainer.class_labels)


def stage_2_on_half_annotated(trainers, batch):
    """Both trainers on the half-annotated table, the lesion-aware one in its stage 2 (every term); after the
    timing, what LA-Net reads and the pseudo-label loss of a last step."""
    for trainer in trainers.values():
        half_unannotated(trainer, list(batch["keys"]))
    lesion_aware = trainers["nnUNetTrainerLesionAware"]
    lesion_aware._enter_stage(lesion_aware._stage_plan()[1].start)

    def lines():
        pseudo = lesion_aware.train_step(batch)["pseudo_loc_loss"]
        return [f"LA-Net reads {lesion_aware.network.head.num_read} encoder stages; P at the bottleneck's size; "
                f"pseudo-label loss of the last step {float(pseudo):.4f}"]
    return lines


if __name__ == "__main__":
    sys.exit(method_against_mtl(__doc__, "nnUNetTrainerLesionAware", 1.15, stage_2_on_half_annotated))
