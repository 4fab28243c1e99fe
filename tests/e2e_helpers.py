"""What the end-to-end tests share: nnU-Net's folders in a temporary root, the real commands as subprocesses, and a
tiny synthetic phantom converted and planned through them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nnunet_mtl.paths import ext_trainer_dir

BIN = Path(sys.executable).parent


def run(cmd, env, check=True):
    """A command line of ours or nnU-Net's; its output tails in the assertion when it fails."""
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def nnunet_env(root: Path, data_loader_processes: int = 1) -> dict:
    """os.environ with nnUNet_raw / _preprocessed / _results under ``root`` (created), our trainers findable, and
    one worker process (2-core CI)."""
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(root / var)
        (root / var).mkdir(exist_ok=True)
    env["nnUNet_extTrainer"] = str(ext_trainer_dir())
    env["nnUNet_def_n_proc"] = "1"
    env["nnUNet_n_proc_DA"] = str(data_loader_processes)
    return env


def planned_phantom(env: dict, dataset: str, seed: int = 3, patients: int = 12) -> Path:
    """``nnunet_mtl convert synthetic`` (patients x 2 images of 64 px) and nnUNetv2_plan_and_preprocess; the raw
    dataset folder."""
    run([BIN / "nnunet_mtl", "convert", "synthetic", "-d", dataset, "--num-patients", str(patients),
         "--images-per-patient", "2", "--size", "64", "--seed", str(seed)], env)
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1", "--verify_dataset_integrity"],
        env)
    return next(Path(env["nnUNet_raw"]).glob(f"Dataset{int(dataset):03d}_*"))


def train(env: dict, dataset: str, trainer: str, fold: str = "0"):
    """``nnUNetv2_train DATASET 2d FOLD -tr TRAINER -device cpu``; the finished command (its log in stdout) and the
    trainer's results folder."""
    result = run([BIN / "nnUNetv2_train", dataset, "2d", fold, "-tr", trainer, "-device", "cpu"], env)
    results = next(Path(env["nnUNet_results"]).glob(f"Dataset{int(dataset):03d}_*"))
    return result, results / f"{trainer}__nnUNetPlans__2d"
