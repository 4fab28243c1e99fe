"""Time one training step of nnUNetTrainerMTL against nnU-Net's own nnUNetTrainer on the same batch.

Both trainers are built from the same real nnU-Net plans (a small phantom is generated and planned with
nnUNetv2_plan_and_preprocess), get the same batch, and run their own ``train_step`` (forward, loss, backward,
optimizer step). Steps are interleaved A/B so that drift of the machine hits both alike; the ratio of the
medians is printed. Target: MTL / nnU-Net <= 1.05.

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--steps 20] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def plan_phantom(root: Path, size: int) -> tuple[dict, dict]:
    """(plans, dataset.json) of a phantom of ``size`` px planned by nnU-Net under ``root``; with the environment's
    NNUNET_MTL_BENCH_PHANTOM=DIR under DIR/SIZE instead, planned once and reused by every benchmark that follows
    (benchmarks/device_check.sh)."""
    from dataset_conversion.synthetic import convert_synthetic
    shared = os.environ.get("NNUNET_MTL_BENCH_PHANTOM")
    if shared:
        root = Path(shared) / str(size)
        for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[var] = str(root / var)
        planned = next((root / "nnUNet_preprocessed").glob("Dataset900_*/nnUNetPlans.json"), None)
        if planned is not None:
            return json.loads(planned.read_text()), json.loads((planned.parent / "dataset.json").read_text())
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = str(root / var)
        (root / var).mkdir(parents=True, exist_ok=True)
    # enough images that nnU-Net's planner is not limited by dataset size (it caps the batch at 5 % of the data)
    convert_synthetic(900, num_patients=80, images_per_patient=3, size=size, raw_root=root / "nnUNet_raw",
                      progress=False)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", "900", "-c", "2d",
                    "-np", "2"], check=True, capture_output=True)
    pre = next((root / "nnUNet_preprocessed").glob("Dataset900_*"))
    return json.loads((pre / "nnUNetPlans.json").read_text()), json.loads((pre / "dataset.json").read_text())


def make_batch(trainer, batch_size: int, generator: torch.Generator) -> dict:
    patch = trainer.configuration_manager.patch_size
    data = torch.randn((batch_size, 1, *patch), generator=generator)
    seg = torch.zeros((batch_size, 1, *patch))
    seg[:, :, patch[0] // 4: patch[0] // 2, patch[1] // 3: 2 * patch[1] // 3] = 1  # a lesion-sized block
    target = []
    for scale in trainer._get_deep_supervision_scales():
        shape = [max(1, round(p * s)) for p, s in zip(patch, scale)]
        target.append(torch.nn.functional.interpolate(seg, size=shape, mode="nearest"))
    return {"data": data, "target": target, "keys": [f"case{i}" for i in range(batch_size)]}


def step_arguments(parser, steps: int, warmup: int) -> None:
    """The options every step benchmark has: device, timed steps, warm-up steps, phantom size."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps per trainer (default {steps})")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--size", type=int, default=128, help="phantom image size, sets the planned patch")


def prepare(trainer, batch: dict, radiomics: dict | None = None) -> None:
    """What a training run's start gives an nnunet_mtl trainer, for the benchmark's batch without a dataset: a case
    table of the batch's cases (classes in turn), the terms set up on it (radiomics targets given instead of
    computed), the first stage entered."""
    import pandas as pd

    from nnunet_mtl.dataset.case_table import CaseTable
    from nnunet_mtl.seams.terms import Setup
    keys = list(batch["keys"])
    names = trainer.class_names
    frame = pd.DataFrame({"case_id": keys, "split": "train", "class": [names[i % len(names)] for i in range(len(keys))],
                          "patient_id": keys})
    trainer.cases = CaseTable(frame, trainer.class_labels)
    trainer._train_keys = keys
    if radiomics is not None:
        trainer.cases.add("radiomics", radiomics)
    setup = Setup(cases=trainer.cases, train_keys=keys, class_names=list(names), device=trainer.device,
                  log=lambda *args: None, nnunet_loss=trainer.loss)
    for term in trainer.terms:
        if term.name != "clin":  # the guidance term's targets are the given ones
            term.setup(setup)
    trainer._enter_stage(0)


def trainers_on_one_batch(classes: dict, plans: dict, dataset_json: dict, device: torch.device) -> tuple[dict, dict]:
    """({name: trainer}, batch): each trainer class built from the same plans and initialized, every network given
    the first one's weights for the parameters they share by name and shape (a head may own more: a prior,
    log-variances, another kind's layers), one batch
    of the first trainer's planned size, each trainer prepared on it and in training mode."""
    trainers = {}
    for name, cls in classes.items():
        t = cls({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json, device)
        t.initialize()
        trainers[name] = t
    first = next(iter(trainers.values()))
    for t in trainers.values():  # heads of other kinds share names (classifier) but not shapes: those stay their own
        own = t.network.state_dict()
        shared = {k: v for k, v in first.network.state_dict().items() if k in own and own[k].shape == v.shape}
        t.network.load_state_dict(shared, strict=False)
    batch = make_batch(first, first.configuration_manager.batch_size, torch.Generator().manual_seed(0))
    for t in trainers.values():
        prepare(t, batch)
        t.network.train()
    return trainers, batch


def print_step_times(medians: dict, trainers: dict, batch: dict, device: torch.device, steps: int,
                     reference: str = "nnUNetTrainerMTL") -> None:
    """The header (device, batch, patch) and one line per trainer: ms per step and the ratio to ``reference``."""
    first = next(iter(trainers.values()))
    patch = "x".join(map(str, first.configuration_manager.patch_size))
    from nnunet_mtl.precision import describe
    amp = describe(device).removeprefix("precision: ")
    print(f"device {device} ({amp}, {torch.get_num_threads()} threads), batch {len(batch['keys'])} x {patch}, "
          f"{steps} interleaved steps each (median):")
    width = max(len(n) for n in medians) + 2
    for name, value in medians.items():
        print(f"  {name:{width}s} {value * 1000:8.1f} ms/step   {value / medians[reference]:.3f}x MTL")


def interleaved_medians(trainers: dict, batch: dict, device: torch.device, steps: int, warmup: int) -> dict:
    """Median seconds per ``train_step`` of each trainer, the trainers' steps interleaved (machine drift hits all
    alike) after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for t in trainers.values():
            time_step(t, batch, device)
    times = {name: [] for name in trainers}
    for _ in range(steps):
        for name, t in trainers.items():
            times[name].append(time_step(t, batch, device))
    return {name: statistics.median(v) for name, v in times.items()}


def time_step(trainer, batch: dict, device: torch.device) -> float:
    """Seconds of one ``trainer.train_step(batch)`` (synchronized on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def method_against_mtl(doc: str, name: str, target: float, setup=None, steps: int = 15, warmup: int = 3) -> int:
    """The main of a benchmark that times one method's trainer ``name`` against nnUNetTrainerMTL on one batch
    (bench_birads_step, bench_lesion_aware_step): its arguments, the planned phantom, both trainers with the same
    weights and batch, the interleaved medians, the step times, then the lines of ``setup`` and the ratio with its
    target. ``setup(trainers, batch)`` runs before the timing and returns a function that gives, after it, the
    lines to print."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    step_arguments(parser, steps=steps, warmup=warmup)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    device = torch.device(args.device)

    from nnunet_mtl.trainers import TRAINERS

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        trainers, batch = trainers_on_one_batch({n: TRAINERS[n] for n in ("nnUNetTrainerMTL", name)}, plans,
                                                dataset_json, device)
        after = setup(trainers, batch) if setup is not None else None
        med = interleaved_medians(trainers, batch, device, args.steps, args.warmup)
        lines = after() if after is not None else []

    ratio = med[name] / med["nnUNetTrainerMTL"]
    print_step_times(med, trainers, batch, device, args.steps)
    for line in lines:
        print(line)
    print(f"ratio {name} / nnUNetTrainerMTL = {ratio:.3f}  (target <= {target:.2f}: "
          f"{'met' if ratio <= target else 'NOT met'})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_arguments(parser, steps=20, warmup=3)
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")  # compare the eager steps; compile time would dominate short runs
    # nnU-Net's trainer never autocasts on the CPU: ours must not either for a like-for-like step (CUDA: both fp16)
    os.environ["nnUNet_mtl_cpu_amp"] = "off"
    device = torch.device(args.device)

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL

    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), args.size)
        plans_a = {**plans, "continue_training": False}
        plans_b = {**json.loads(json.dumps(plans)), "continue_training": False}
        base = nnUNetTrainer(plans_a, "2d", 0, dataset_json, device)
        base.initialize()
        mtl = nnUNetTrainerMTL(plans_b, "2d", 0, dataset_json, device)
        mtl.initialize()
        # same starting weights for the shared part; the classification loss as training sets it up
        mtl.network.load_state_dict(base.network.state_dict(), strict=False)
        batch_size = base.configuration_manager.batch_size
        batch = make_batch(base, batch_size, torch.Generator().manual_seed(0))
        prepare(mtl, batch)
        for t in (base, mtl):
            t.network.train()

        def timed(trainer) -> float:
            return time_step(trainer, batch, device)

        for _ in range(args.warmup):
            timed(base), timed(mtl)
        times = {"nnUNetTrainer": [], "nnUNetTrainerMTL": []}
        for _ in range(args.steps):  # interleaved
            times["nnUNetTrainer"].append(timed(base))
            times["nnUNetTrainerMTL"].append(timed(mtl))

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["nnUNetTrainerMTL"] / med["nnUNetTrainer"]
    patch = "x".join(map(str, base.configuration_manager.patch_size))
    compiled = "torch.compile on" if getattr(mtl, "_do_i_compile", lambda: False)() else "eager"
    print(f"device {device} ({compiled}), batch {batch_size} x {patch}, {args.steps} interleaved steps each (median):")
    for name, value in med.items():
        print(f"  {name:18s} {value * 1000:8.1f} ms/step")
    print(f"ratio nnUNetTrainerMTL / nnUNetTrainer = {ratio:.3f}  "
          f"(target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
