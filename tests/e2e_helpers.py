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
        raise AssertionError(f"{cmd[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def nnunet_env(root: Path, data_loader_processes: int = 1) -> dict:
    """os.environ with nnUNet_raw / _preprocessed / _results under ``root`` (created), our trainers findable, one
    worker process (2-core CI), and ``nnunet_mtl predict`` without worker processes unless a test passes -npp / -nps
    (nnUNet_npp / nnUNet_nps = 0: each worker is a spawned process that imports PyTorch and nnU-Net again, seconds of
    CPU for tiny images)."""
    env = dict(os.environ)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[var] = str(root / var)
        (root / var).mkdir(exist_ok=True)
    env["nnUNet_extTrainer"] = str(ext_trainer_dir())
    env["nnUNet_def_n_proc"] = "1"
    env["nnUNet_n_proc_DA"] = str(data_loader_processes)
    env["nnUNet_npp"] = env["nnUNet_nps"] = "0"
    return env


def use_in_process(monkeypatch, root: Path) -> None:
    """This process' environment for in-process trainings on the nnU-Net folders under ``root``: nnU-Net's three
    folders, in-process data loading, one worker process."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(root / var))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")


def in_process_trainer(root: Path, dataset: str, cls, fold: int = 0):
    """A trainer of class ``cls`` for ``dataset`` (its id, e.g. "503") planned under ``root``, built in this process
    as nnUNetv2_train builds it (the plans, 2d, ``fold``, the dataset.json, the CPU); nothing run yet."""
    import json

    import torch
    pre = next((Path(root) / "nnUNet_preprocessed").glob(f"Dataset{int(dataset):03d}_*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    return cls({**plans, "continue_training": False}, "2d", fold, dataset_json, torch.device("cpu"))


def train_in_process(root: Path, dataset: str, cls, monkeypatch, fold: int = 0, seed: int = 0) -> Path:
    """``cls`` trained on ``dataset``'s ``fold`` in this process (nnU-Net's ``run_training``: the checkpoints and the
    training log, without a start of nnUNetv2_train and its final validation), on the nnU-Net folders under
    ``root``, torch seeded with ``seed``; the trainer's results folder (``TRAINER__nnUNetPlans__2d``)."""
    import torch
    use_in_process(monkeypatch, root)
    torch.manual_seed(seed)
    trainer = in_process_trainer(root, dataset, cls, fold)
    trainer.run_training()
    return Path(trainer.output_folder).parent


def planned_phantom(env: dict, dataset: str, seed: int = 3, patients: int = 12) -> Path:
    """``nnunet_mtl convert synthetic`` (patients x 2 images of 64 px) and nnUNetv2_plan_and_preprocess; the raw
    dataset folder."""
    run([BIN / "nnunet_mtl", "convert", "synthetic", "-d", dataset, "--num-patients", str(patients),
         "--images-per-patient", "2", "--size", "64", "--seed", str(seed)], env)
    # -npfp 1: see planned_partial_phantom
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)
    return next(Path(env["nnUNet_raw"]).glob(f"Dataset{int(dataset):03d}_*"))


def train(env: dict, dataset: str, trainer: str, fold: str = "0"):
    """``nnUNetv2_train DATASET 2d FOLD -tr TRAINER -device cpu``; the finished command (its log in stdout) and the
    trainer's results folder."""
    result = run([BIN / "nnUNetv2_train", dataset, "2d", fold, "-tr", trainer, "-device", "cpu"], env)
    results = next(Path(env["nnUNet_results"]).glob(f"Dataset{int(dataset):03d}_*"))
    return result, results / f"{trainer}__nnUNetPlans__2d"


def planned_partial_phantom(env: dict, source: str, dataset: str, keep: float = 0.5, as_: str = "none",
                            seed: int = 0, patients: int = 12, boxes: int = 0) -> Path:
    """A partially annotated phantom, planned: ``nnunet_mtl convert synthetic`` into ``source`` (as
    :func:`planned_phantom` with its default phantom seed 3, not planned), ``nnunet_mtl drop-masks -d source
    --keep keep --into dataset --as as_ --seed seed``, then nnUNetv2_plan_and_preprocess of ``dataset`` (after
    drop-masks: preprocessing records where the lesions are). Returns the raw folder of ``dataset``.

    ``boxes`` > 0 (with ``as_="none"``) turns the first ``boxes`` unannotated cases (by case id) into box cases
    before planning (their source mask's bounding box, :func:`nnunet_mtl.dataset.contract.label_map_for`), so one
    dataset holds full, none and box cases; drop-masks' partial_report.json and provenance still say ``none``."""
    run([BIN / "nnunet_mtl", "convert", "synthetic", "-d", source, "--num-patients", str(patients),
         "--images-per-patient", "2", "--size", "64", "--seed", "3"], env)
    run([BIN / "nnunet_mtl", "drop-masks", "-d", source, "--keep", str(keep), "--into", dataset, "--as", as_,
         "--seed", str(seed)], env)
    raw_root = Path(env["nnUNet_raw"])
    raw = next(raw_root.glob(f"Dataset{int(dataset):03d}_*"))
    if boxes:
        _unannotated_to_boxes(next(raw_root.glob(f"Dataset{int(source):03d}_*")), raw, boxes)
    # -npfp 1: nnU-Net's fingerprint extraction would otherwise start 8 processes (measured on the 2-core CI under
    # load: 23-28 s for the whole command with one, 114 s with eight)
    run([BIN / "nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1",
         "--verify_dataset_integrity"], env)
    return raw


def _unannotated_to_boxes(source: Path, raw: Path, boxes: int) -> None:
    """Give the first ``boxes`` cases of ``raw`` whose mask is ``none`` their source mask's box instead (label map
    and cases.csv ``mask``); an error when there are fewer."""
    import csv

    import numpy as np
    from PIL import Image

    from nnunet_mtl.dataset.contract import label_map_for

    with open(raw / "cases.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    unannotated = sorted(r["case_id"] for r in rows if r.get("mask") == "none")
    if len(unannotated) < boxes:
        raise AssertionError(f"{raw.name} has {len(unannotated)} unannotated cases; {boxes} boxes were asked for")
    chosen = set(unannotated[:boxes])
    for case in chosen:
        with Image.open(source / "labelsTr" / f"{case}.png") as im:
            mask = np.asarray(im) > 0
        Image.fromarray(label_map_for(mask, "box")).save(raw / "labelsTr" / f"{case}.png")
    for r in rows:
        if r["case_id"] in chosen:
            r["mask"] = "box"
    with open(raw / "cases.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
