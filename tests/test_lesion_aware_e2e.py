"""Fan et al.'s lesion-aware trainer end to end on a phantom whose masks were half removed (``nnunet_mtl drop-masks``
before nnU-Net's preprocessing): the two stages of Algorithm 1 in one ``nnUNetv2_train`` run with nnU-Net's
augmentation workers on, then ``nnUNetv2_predict`` and ``nnunet_mtl predict``."""
import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.e2e_helpers import BIN, nnunet_env, planned_partial_phantom, run, train

pytestmark = pytest.mark.e2e
SOURCE, DATASET = "512", "513"
TRAINER = "nnUNetTrainerLesionAware_tiny"


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesion_aware")
    env = nnunet_env(root, data_loader_processes=2)  # nnU-Net's augmentation in worker processes
    raw = planned_partial_phantom(env, SOURCE, DATASET, keep=0.5, boxes=2)  # full, none and box cases
    return {"root": root, "env": env, "raw": raw}


@pytest.fixture(scope="module")
def trained(partial):
    result, model = train(partial["env"], DATASET, TRAINER)
    return {**partial, "model": model, "log": result.stdout}


def mask_kinds(raw) -> dict[str, str]:
    with open(raw / "cases.csv") as f:
        return {r["case_id"]: r.get("mask") or "full" for r in csv.DictReader(f) if r["split"] == "train"}


def test_the_dataset_is_half_annotated(partial):
    kinds = list(mask_kinds(partial["raw"]).values())
    assert set(kinds) == {"full", "none", "box"} and kinds.count("box") == 2 and kinds.count("none") >= len(kinds) // 5


def test_two_stages_cross_in_one_run_and_the_batches_follow_them(trained):
    log = trained["log"]
    assert "entering stage 1/2 'localization'" in log and "entering stage 2/2 'semi_supervised'" in log
    pattern = r"batches of stage '{}' \({}\): (\d+) annotated cases \((\d+) full, (\d+) box\) " \
              r"and (\d+) unannotated over (\d+) steps"
    stage_1 = re.search(pattern.format("localization", "annotated"), log)
    stage_2 = re.search(pattern.format("semi_supervised", "mixed"), log)
    assert stage_1 and stage_2, log[-3000:]
    assert int(stage_1.group(1)) > 0 and int(stage_1.group(4)) == 0  # stage 1: annotated cases only
    annotated, unannotated, steps = int(stage_2.group(1)), int(stage_2.group(4)), int(stage_2.group(5))
    assert unannotated > 0 and 0 <= annotated - unannotated <= steps  # stage 2: ceil(B/2) + floor(B/2) per batch
    assert re.search(r"batches: mixed \(\d+ annotated, \d+ unannotated training cases\): \d+ annotated \+ \d+ "
                     r"unannotated per batch", log)


def test_pseudo_labels_only_in_stage_2_and_the_best_checkpoint_from_stage_2(trained):
    fold = trained["model"] / "fold_0"
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logged = final["logging"]
    assert logged["stage"] == [0, 1]
    assert logged["train_pseudo_loc_losses"][0] == 0 and logged["train_pseudo_loc_losses"][1] > 0
    assert logged["train_loc_losses"][0] > 0
    best = torch.load(fold / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    assert best["current_epoch"] == 2  # written at the end of epoch 1, the first (and only) epoch of stage 2
    plans = json.loads((trained["model"] / "plans.json").read_text())
    assert plans["nnunet_mtl"]["head"]["kind"] == "lesion_aware"


def test_final_validation_writes_masks_and_classes(trained):
    validation = trained["model"] / "fold_0" / "validation"
    with open(validation / "class_predictions.csv") as f:
        rows = {r["case_id"] for r in csv.DictReader(f)}
    assert rows and rows == {p.stem for p in validation.glob("*.png")}


def test_nnunet_predict_and_ours_give_the_same_masks_plus_classes(trained):
    env, raw, root = trained["env"], trained["raw"], trained["root"]
    common = ["-i", str(raw / "imagesTs"), "-d", DATASET, "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu"]
    run([BIN / "nnUNetv2_predict", "-o", root / "pred_nnunet", *common, "-npp", "1", "-nps", "1"], env)
    run([BIN / "nnunet_mtl", "predict", "-o", root / "pred_mtl", *common, "--cpu-amp", "off"], env)  # float32
    ours, theirs = sorted((root / "pred_mtl").glob("*.png")), sorted((root / "pred_nnunet").glob("*.png"))
    assert [p.name for p in ours] == [p.name for p in theirs] and ours
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    with open(root / "pred_mtl" / "class_predictions.csv") as f:
        assert {r["case_id"] for r in csv.DictReader(f)} == {p.stem for p in ours}


def test_stage_switch_in_process(partial, monkeypatch):
    """The same switch, step by step: loss weights, trainable parts and batch composition of each stage, and a
    non-zero pseudo-label loss on a stage-2 batch."""
    from nnunet_mtl.trainers import TRAINERS
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, partial["env"][var])
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # in-process data loading
    pre = next((partial["root"] / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    trainer = TRAINERS["nnUNetTrainerLesionAware_tiny"](
        {**plans, "continue_training": False}, "2d", 1, json.loads((pre / "dataset.json").read_text()),
        torch.device("cpu"))
    trainer.initialize()
    trainer.do_split()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer._load_case_table()  # what on_train_start does before the first step, without its log and folders
    trainer._check_mask_annotation()
    trainer._setup_terms()
    kinds = mask_kinds(partial["raw"])
    head = trainer.network.head

    trainer._enter_stage(0)
    assert trainer.loss_weights_now["cls"] == 0 and trainer.loss_weights_now["pseudo_loc"] == 0
    assert not any(p.requires_grad for p in head.classifier.parameters())
    assert all(p.requires_grad for p in head.attention.parameters())
    assert all(p.requires_grad for p in trainer.network.encoder.parameters())
    batch = next(trainer.dataloader_train)
    assert {kinds[k] for k in batch["keys"]} <= {"full", "box"}  # annotated cases only

    trainer.current_epoch = 1
    trainer._enter_stage(1)
    assert trainer.loss_weights_now["cls"] == 0.5 and trainer.loss_weights_now["pseudo_loc"] == pytest.approx(0.05)
    assert all(p.requires_grad for p in head.parameters())
    batch = next(trainer.dataloader_train)
    m = -(-len(batch["keys"]) // 2)  # ceil: an odd batch has one more annotated case
    drawn = [kinds[k] for k in batch["keys"]]
    assert drawn[:-m] == ["none"] * (len(drawn) - m) and set(drawn[-m:]) <= {"full", "box"}
    # an unannotated case's target is ignore over the image: nnU-Net's loss learns nothing there, the pseudo-labels
    # do. What padding and the spatial augmentation bring in from beyond the image's border is background (nnU-Net
    # pads the label map with -1 and maps it to 0): never lesion, and no hint where the lesion is.
    none = [i for i, k in enumerate(batch["keys"]) if kinds[k] == "none"]
    target = batch["target"][0][none]
    assert set(target.unique().tolist()) <= {0, 2} and bool((target == 2).float().mean() > 0.5)
    out = trainer.train_step(batch)
    assert float(out["pseudo_loc_loss"]) > 0 and np.isfinite(float(out["loss"]))
