"""Mixed precision on the CPU: bfloat16 autocast against float32, as ratios measured in one run.

Three parts (``--parts``, all by default; ``predict`` and ``validation`` need a finished demo, ``--demo DIR``):

- ``steps``: the whole ``train_step`` (forward, losses, backward rule, optimizer step) of nnUNetTrainerMTL,
  nnUNetTrainerRLAR, nnUNetTrainerBIRADS and nnUNetTrainerLesionAware (its second stage, every term on, half of the
  batch unannotated) on a phantom planned by nnU-Net's planner (batch and patch as planned), each trainer's float32
  and bfloat16 steps interleaved (machine drift hits both alike), medians. Goal: bf16 / fp32 <= 0.60.
- ``predict``: ``nnunet_mtl predict`` of the demo's test images (imagesTs: 60 images of the default demo) with
  ``--cpu-amp off`` and ``--cpu-amp bf16``, alternated ``--repeats`` times, median wall time; the masks' mean Dice
  agreement between the two (per image 2|A∩B| / (|A| + |B|), 1 where both are empty) and the largest class
  probability difference. Goals: bf16 / fp32 <= 0.65, agreement >= 0.99.
- ``validation``: the final validation of the demo's fold 0, as nnUNetv2_train runs it at the end of training
  (in-process, from checkpoint_final.pth): before = nnU-Net's pass in float32, then the class probabilities in a
  second float32 pass (what the trainers did before the one-pass validation); after = the one pass in bfloat16.
  Alternated ``--repeats`` times, medians. Goal: after / before <= 0.60.

    python benchmarks/bench_amp.py [--parts steps,predict,validation] [--demo DIR] [--steps 8] [--repeats 2]
                                   [--json OUT.json]

Make the demo first with ``nnunet_mtl demo --workdir DIR -device cpu``. Run on an idle machine: the ratios hold
only when both sides of a pair see the same load.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import make_batch, plan_phantom, prepare  # noqa: E402

STEP_GOAL, PREDICT_GOAL, AGREEMENT_GOAL, VALIDATION_GOAL = 0.60, 0.65, 0.99, 0.60
MODES = ("off", "bf16")


# ------------------------------------------------------------------------------------------------ training steps
def step_ratios(size: int, steps: int, warmup: int) -> dict:
    from nnunet_mtl import precision
    from nnunet_mtl.trainers import (nnUNetTrainerBIRADS, nnUNetTrainerLesionAware, nnUNetTrainerMTL,
                                     nnUNetTrainerRLAR)
    from bench_lesion_aware_step import half_unannotated

    device = torch.device("cpu")
    classes = {"MTL": nnUNetTrainerMTL, "RLAR": nnUNetTrainerRLAR, "BIRADS": nnUNetTrainerBIRADS,
               "LesionAware": nnUNetTrainerLesionAware}
    with tempfile.TemporaryDirectory() as tmp:
        plans, dataset_json = plan_phantom(Path(tmp), size)
        trainers = {}
        for name, cls in classes.items():
            t = cls({**json.loads(json.dumps(plans)), "continue_training": False}, "2d", 0, dataset_json, device)
            t.initialize()
            trainers[name] = t
        first = trainers["MTL"]
        batch = make_batch(first, first.configuration_manager.batch_size, torch.Generator().manual_seed(0))
        rng = np.random.default_rng(0)
        guided = nnUNetTrainerRLAR.head_config(2).guided_dim
        for name, t in trainers.items():
            prepare(t, batch, {k: rng.standard_normal(guided).astype(np.float32) for k in batch["keys"]}
                    if name == "RLAR" else None)
            t.network.train()
        half_unannotated(trainers["LesionAware"], list(batch["keys"]))
        trainers["LesionAware"]._enter_stage(trainers["LesionAware"]._stage_plan()[1].start)
        factories = {m: precision.autocast_for(device, m) for m in MODES}

        def timed(t, mode) -> float:
            t._autocast_factory = factories[mode]
            t0 = time.perf_counter()
            t.train_step(batch)
            return time.perf_counter() - t0

        for _ in range(warmup):
            for t in trainers.values():
                for mode in MODES:
                    timed(t, mode)
        times = {(n, m): [] for n in trainers for m in MODES}
        for i in range(steps):
            for name, t in trainers.items():
                for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                    times[name, mode].append(timed(t, mode))
        patch = "x".join(map(str, first.configuration_manager.patch_size))
    result = {"batch": len(batch["keys"]), "patch": patch, "steps": steps, "threads": torch.get_num_threads(),
              "trainers": {}}
    for name in trainers:
        fp32, bf16 = (statistics.median(times[name, m]) for m in MODES)
        result["trainers"][name] = {"fp32_ms": 1000 * fp32, "bf16_ms": 1000 * bf16, "ratio": bf16 / fp32}
    return result


# ------------------------------------------------------------------------------------------------ prediction
def _demo_parts(demo: Path) -> tuple[Path, str, str, Path]:
    """(raw dataset folder, dataset id, trainer, the trained model's folder) of a finished demo."""
    raw = next((demo / "nnUNet_raw").glob("Dataset*"), None)
    model = next((demo / "nnUNet_results").glob("Dataset*/*__nnUNetPlans__2d"), None)
    if raw is None or model is None or not (model / "fold_0" / "checkpoint_final.pth").is_file():
        raise SystemExit(f"bench_amp: {demo} is not a finished demo (expected nnUNet_raw/Dataset* and a trained "
                         f"fold 0 in nnUNet_results); run nnunet_mtl demo --workdir {demo} -device cpu first")
    dataset_id = raw.name[len("Dataset"):].split("_")[0]
    return raw, dataset_id, model.name.split("__")[0], model


def _demo_env(demo: Path) -> dict:
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(demo / var)
    from nnunet_mtl.paths import ext_trainer_dir
    env["nnUNet_extTrainer"] = str(ext_trainer_dir())
    return env


def dice_agreement(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def predict_ratio(demo: Path, repeats: int) -> dict:
    from PIL import Image
    raw, dataset_id, trainer, _ = _demo_parts(demo)
    env = _demo_env(demo)
    images = raw / "imagesTs"
    times = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                out = Path(tmp) / f"{mode}_{i}"
                cmd = [str(Path(sys.executable).parent / "nnunet_mtl"), "predict", "-i", str(images), "-o", str(out),
                       "-d", dataset_id, "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu", "--cpu-amp", mode,
                       "-npp", "2", "-nps", "2", "--disable_progress_bar"]
                t0 = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, capture_output=True)
                times[mode].append(time.perf_counter() - t0)
        a, b = Path(tmp) / "off_0", Path(tmp) / "bf16_0"
        masks = sorted(p.name for p in a.glob("*.png"))
        agreement = [dice_agreement(np.asarray(Image.open(a / m)), np.asarray(Image.open(b / m))) for m in masks]
        import pandas as pd
        pa = pd.read_csv(a / "class_predictions.csv").set_index("case_id").sort_index()
        pb = pd.read_csv(b / "class_predictions.csv").set_index("case_id").sort_index()
        probs = [c for c in pa.columns if c.startswith("prob_")]
        largest = float(np.abs(pa[probs].to_numpy() - pb[probs].to_numpy()).max())
        same_class = float((pa["predicted_class"] == pb["predicted_class"]).mean())
    fp32, bf16 = (statistics.median(times[m]) for m in MODES)
    return {"images": len(masks), "repeats": repeats, "fp32_s": fp32, "bf16_s": bf16, "ratio": bf16 / fp32,
            "mean_dice_agreement": float(np.mean(agreement)), "min_dice_agreement": float(np.min(agreement)),
            "largest_probability_difference": largest, "same_predicted_class": same_class}


def network_share(demo: Path, repeats: int) -> dict:
    """Where a prediction's time goes: the sliding window alone (network calls, mirroring, tile stitching) over the
    demo's test images, preprocessed once by nnU-Net's preprocessor, in float32 and bfloat16 alternately (median
    of ``repeats`` passes each), in this process."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from nnunet_mtl.inference.predictor import MultitaskPredictor
    raw, _, _, model = _demo_parts(demo)
    os.environ.update({k: v for k, v in _demo_env(demo).items() if k.startswith("nnUNet_")})
    predictors = {}
    for mode in MODES:
        p = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                               perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                               verbose_preprocessing=False, allow_tqdm=False, cpu_amp=mode)
        p.initialize_from_trained_model_folder(str(model), [0], "checkpoint_final.pth")
        predictors[mode] = p
    first = predictors["off"]
    preprocessor = first.configuration_manager.preprocessor_class(verbose=False)
    lists = create_lists_from_splitted_dataset_folder(str(raw / "imagesTs"), first.dataset_json["file_ending"])
    images = [torch.from_numpy(preprocessor.run_case(files, None, first.plans_manager, first.configuration_manager,
                                                     first.dataset_json)[0]) for files in lists]
    times = {m: [] for m in MODES}
    for i in range(repeats):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            t0 = time.perf_counter()
            for image in images:
                predictors[mode].predict_logits_from_preprocessed_data(image)
            times[mode].append(time.perf_counter() - t0)
    fp32, bf16 = (statistics.median(times[m]) for m in MODES)
    return {"images": len(images), "fp32_s": fp32, "bf16_s": bf16, "ratio": bf16 / fp32}


# ------------------------------------------------------------------------------------------------ final validation
def validation_ratio(demo: Path, repeats: int) -> dict:
    """Before / after of the final validation of the demo's fold 0 (see the module docstring)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mtl import precision
    from nnunet_mtl.trainers import TRAINERS
    raw, _, trainer_name, model = _demo_parts(demo)
    env = _demo_env(demo)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                            "nnUNet_extTrainer")})
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    plans = json.loads((model / "plans.json").read_text())
    dataset_json = json.loads((model / "dataset.json").read_text())
    trainer = TRAINERS[trainer_name]({**plans, "continue_training": False}, "2d", 0, dataset_json,
                                     torch.device("cpu"))
    trainer.initialize()
    trainer.load_checkpoint(str(model / "fold_0" / "checkpoint_final.pth"))
    validation = Path(trainer.output_folder) / "validation"
    keep = validation.with_name("validation_before_bench")
    if validation.exists() and not keep.exists():
        validation.rename(keep)  # the demo's own validation is put back afterwards

    def before() -> float:
        os.environ[precision.ENV_VAR] = "off"
        trainer._autocast_factory = precision.autocast_for(trainer.device, "off")
        t0 = time.perf_counter()
        nnUNetTrainer.perform_actual_validation(trainer, False)  # nnU-Net's pass, float32 ...
        trainer.write_validation_class_predictions()  # ... and the class pass of its own
        return time.perf_counter() - t0

    def after() -> float:
        os.environ[precision.ENV_VAR] = "bf16"
        trainer._autocast_factory = precision.autocast_for(trainer.device, "bf16")
        t0 = time.perf_counter()
        trainer.perform_actual_validation(False)
        return time.perf_counter() - t0

    times = {"before": [], "after": []}
    cases = len(trainer.do_split()[1])
    try:
        for i in range(repeats):
            for name, fn in ((("before", before), ("after", after)) if i % 2 == 0 else
                             (("after", after), ("before", before))):
                times[name].append(fn())
    finally:
        os.environ.pop(precision.ENV_VAR, None)
        if keep.exists():
            import shutil
            shutil.rmtree(validation, ignore_errors=True)
            keep.rename(validation)
    b, a = statistics.median(times["before"]), statistics.median(times["after"])
    return {"cases": cases, "repeats": repeats, "before_s": b, "after_s": a, "ratio": a / b}


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="steps,predict,validation")
    parser.add_argument("--demo", type=Path, default=None, help="a finished nnunet_mtl demo folder")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per trainer and precision (default 8)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="phantom image size for the steps (default 128)")
    parser.add_argument("--repeats", type=int, default=2, help="prediction / validation runs per side (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("nnUNet_compile", "0")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ("steps", "predict", "validation")]
    if unknown:
        raise SystemExit(f"bench_amp: --parts {unknown[0]!r}: expected steps, predict, validation")
    if any(p != "steps" for p in parts) and args.demo is None:
        raise SystemExit("bench_amp: the predict and validation parts need --demo DIR (a finished nnunet_mtl demo)")
    from nnunet_mtl import precision
    print(precision.describe(torch.device("cpu"), "auto"), f"; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    out: dict = {"torch": torch.__version__, "cpu_bf16_flags": list(precision.cpu_bf16_flags())}
    if "steps" in parts:
        r = out["steps"] = step_ratios(args.size, args.steps, args.warmup)
        print(f"\ntraining step, batch {r['batch']} x {r['patch']}, {r['steps']} interleaved steps each (median):")
        for name, v in r["trainers"].items():
            print(f"  {name:12s} fp32 {v['fp32_ms']:7.1f} ms   bf16 {v['bf16_ms']:7.1f} ms   bf16 / fp32 "
                  f"{v['ratio']:.3f}  (goal <= {STEP_GOAL}: {'met' if v['ratio'] <= STEP_GOAL else 'NOT met'})",
                  flush=True)
    if "predict" in parts:
        r = out["predict"] = predict_ratio(args.demo, args.repeats)
        print(f"\nnnunet_mtl predict of {r['images']} images, median of {r['repeats']}: fp32 {r['fp32_s']:.1f} s, bf16 "
              f"{r['bf16_s']:.1f} s, bf16 / fp32 {r['ratio']:.3f} (goal <= {PREDICT_GOAL}: "
              f"{'met' if r['ratio'] <= PREDICT_GOAL else 'NOT met'}); masks' Dice agreement mean "
              f"{r['mean_dice_agreement']:.4f} (min {r['min_dice_agreement']:.4f}; goal >= {AGREEMENT_GOAL}: "
              f"{'met' if r['mean_dice_agreement'] >= AGREEMENT_GOAL else 'NOT met'}); class probabilities differ by "
              f"at most {r['largest_probability_difference']:.4f}, same predicted class for "
              f"{100 * r['same_predicted_class']:.1f} %", flush=True)
    if "predict" in parts:
        r = out["predict_network"] = network_share(args.demo, args.repeats)
        share = r["fp32_s"] / out["predict"]["fp32_s"]
        print(f"  of which the sliding window alone (network, mirroring, stitching; in-process, preprocessed once): "
              f"fp32 {r['fp32_s']:.1f} s ({100 * share:.0f} % of the command), bf16 {r['bf16_s']:.1f} s, bf16 / fp32 "
              f"{r['ratio']:.3f}", flush=True)
    if "validation" in parts:
        r = out["validation"] = validation_ratio(args.demo, args.repeats)
        print(f"\nfinal validation of {r['cases']} cases, median of {r['repeats']}: before (nnU-Net's pass + a class "
              f"pass, fp32) {r['before_s']:.1f} s, after (one pass, bf16) {r['after_s']:.1f} s, after / before "
              f"{r['ratio']:.3f} (goal <= {VALIDATION_GOAL}: {'met' if r['ratio'] <= VALIDATION_GOAL else 'NOT met'})",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
