"""The multitask, RLAR and BI-RADS trainers on a partially annotated phantom, end to end: ``nnunet_mtl drop-masks``
hides half the training patients' masks (most as ``none``, two images as ``box``) before nnU-Net's preprocessing,
then one tiny ``nnUNetv2_train`` run per trainer. Each must train (segmentation loss on the annotated pixels,
classification on every case), say in its log how many cases are partially annotated, log a finite pseudo Dice
and write the final validation's masks and classes; a trainer with a term that does not know partial masks must
stop at train start with one line. One preprocessing for the module (``planned_partial_phantom``)."""
import csv
import json
import re
import textwrap

import numpy as np
import pytest
import torch

from tests.e2e_helpers import BIN, nnunet_env, planned_partial_phantom, run, train

pytestmark = pytest.mark.e2e
SOURCE, DATASET = "530", "531"
BOXES = 2  # unannotated images turned into box ones, so that the dataset holds all three kinds


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial_trainers")
    env = nnunet_env(root)
    raw = planned_partial_phantom(env, SOURCE, DATASET, keep=0.5, as_="none", boxes=BOXES)
    # training: augmentation in the main process, no worker start-up (nnU-Net's planner needs at least 1)
    env = {**env, "nnUNet_n_proc_DA": "0"}
    with open(raw / "cases.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
    kinds = {r["case_id"]: r["mask"] for r in rows}
    write_small_split(root, rows)
    return {"root": root, "env": env, "raw": raw, "kinds": kinds}


def write_small_split(root, rows):
    """Fold 0 validates on two images: one of a patient with full masks and a lesion, one of an unannotated patient
    (so the pseudo Dice and nnU-Net's final validation meet an all-ignore reference); the other images of those two
    patients are left out, so no patient is on both sides. Two validation cases instead of the default split's
    four: the final validation predicts each case on the CPU."""
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], []).append(r)
    full = next(p for p, rs in patients.items() if rs[0]["mask"] == "full" and rs[0]["class"] != "normal")
    none = next(p for p, rs in patients.items() if rs[0]["mask"] == "none")
    val = [patients[full][0]["case_id"], patients[none][0]["case_id"]]
    train_ = [r["case_id"] for r in rows if r["patient_id"] not in (full, none)]
    pre = next((root / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    (pre / "splits_final.json").write_text(json.dumps([{"train": train_, "val": val}], indent=1))


_TRAINED = {}


def trained(partial, trainer):
    """``nnUNetv2_train`` of ``trainer`` on fold 0 of the partial phantom, once per module."""
    if trainer not in _TRAINED:
        result, model = train(partial["env"], DATASET, trainer)
        fold = model / "fold_0"
        log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        _TRAINED[trainer] = {"model": model, "fold": fold, "log": log, "checkpoint": checkpoint}
    return _TRAINED[trainer]


def fold_0(partial):
    pre = next((partial["root"] / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    split = json.loads((pre / "splits_final.json").read_text())[0]
    return split["train"], split["val"]


def test_the_dataset_holds_full_none_and_box_cases(partial):
    kinds = list(partial["kinds"].values())
    assert kinds.count("box") == BOXES and kinds.count("none") >= 2 and kinds.count("full") >= len(kinds) // 3


@pytest.mark.parametrize("trainer", ["nnUNetTrainerMTL_tiny", "nnUNetTrainerRLAR_tiny", "nnUNetTrainerBIRADS_tiny"])
def test_trains_on_partial_masks_logs_them_and_validates(partial, trainer):
    run_ = trained(partial, trainer)
    log, logged = run_["log"], run_["checkpoint"]["logging"]
    train_keys, val_keys = fold_0(partial)
    kinds = [partial["kinds"][k] for k in train_keys]
    said = re.search(r"partially annotated: (\d+) of (\d+) training cases have a full mask, (.*); the segmentation "
                     r"loss learns from annotated pixels only", log)
    assert said, log[-3000:]
    assert (int(said.group(1)), int(said.group(2))) == (kinds.count("full"), len(train_keys))
    for kind in ("box", "none"):
        assert (f"{kinds.count(kind)} mask '{kind}'" in said.group(3)) == (kinds.count(kind) > 0)
    # the pseudo Dice is undefined (NaN) in an epoch whose validation patches hold no annotated lesion pixel and no
    # predicted one there, which partial masks make possible; the selection EMA then keeps its last value
    # (trainers.mtl.selection_ema) instead of staying NaN for the rest of training
    assert len(logged["mean_fg_dice"]) == 2
    scores, ema = np.asarray(logged["mtl_score"], float), np.asarray(logged["ema_mtl_score"], float)
    defined_so_far = np.cumsum(np.isfinite(scores)) > 0
    assert (np.isfinite(ema) == defined_so_far).all(), (scores, ema)
    for key in [k for k in logged if k.startswith(("train_", "val_")) and k.endswith("_losses")]:
        assert np.isfinite(logged[key]).all(), key
    validation = run_["fold"] / "validation"
    with open(validation / "class_predictions.csv") as f:
        rows = {r["case_id"] for r in csv.DictReader(f)}
    assert rows == set(val_keys) == {p.stem for p in validation.glob("*.png")}


def test_rlar_leaves_partial_cases_out_of_the_guidance_targets(partial):
    run_ = trained(partial, "nnUNetTrainerRLAR_tiny")
    log, logged = run_["log"], run_["checkpoint"]["logging"]
    kinds = partial["kinds"]
    partial_cases = sorted(k for k, v in kinds.items() if v != "full")
    assert f"radiomics targets: {len(kinds)} training cases (" in log
    assert f", {len(partial_cases)} partially annotated: no targets), {len(kinds) - len(partial_cases)} computed " \
           f"now" in log
    train_keys, _ = fold_0(partial)
    here = sum(kinds[k] != "full" for k in train_keys)
    assert re.search(rf"clinical guidance: \d+ of {len(train_keys)} training cases of this fold have radiomics "
                     rf"targets; {here} partially annotated \(mask box or none\) have none and are left out of L_clin",
                     log)
    pre = next((partial["root"] / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    with open(pre / "radiomics_targets.csv") as f:
        table = {r["case_id"]: r for r in csv.DictReader(f)}
    for case in partial_cases:  # never computed: no radiomics of an all-ignore map or of a box
        assert table[case]["mask"] == kinds[case] and table[case]["has_lesion"] == "0"
        assert table[case]["circularity"] == ""
    assert all(0 <= p <= 1 for p in logged["train_rlar_penalty"])


def test_birads_trains_its_prior_on_annotated_lesion_patches(partial):
    weights = trained(partial, "nnUNetTrainerBIRADS_tiny")["checkpoint"]["network_weights"]
    prefix = "cls_head.loss_modules.birads_prior."
    # the running min/max of R and T came from lesion patches (full cases), so they are finite and ordered
    low, high = weights[prefix + "running_min"], weights[prefix + "running_max"]
    assert bool(weights[prefix + "initialized"]) and torch.isfinite(low).all() and (high >= low).all()


REFUSED_TRAINER = textwrap.dedent('''
    """A trainer with a term that reads the soft mask without knowing which pixels are annotated."""
    import torch

    from nnunet_mtl.seams.terms import LossTerm
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL_tiny


    class MaskArea(LossTerm):
        name, task = "area", False

        def __call__(self, outputs, batch):
            seg = outputs["seg"][0] if isinstance(outputs["seg"], list) else outputs["seg"]
            return torch.softmax(seg.float(), 1)[:, 1].mean()


    class nnUNetTrainerMaskArea_tiny(nnUNetTrainerMTL_tiny):
        terms = (*nnUNetTrainerMTL_tiny.terms, MaskArea())
        loss_weights = {"area": 0.01}
''')


def test_a_trainer_with_a_term_without_partial_support_is_refused(partial, tmp_path):
    folder = tmp_path / "user_trainers"
    folder.mkdir()
    (folder / "mask_area_trainers.py").write_text(REFUSED_TRAINER)
    env = {**partial["env"], "nnUNet_extTrainer": f"{partial['env']['nnUNet_extTrainer']}:{folder}"}
    result = run([BIN / "nnUNetv2_train", DATASET, "2d", "0", "-tr", "nnUNetTrainerMaskArea_tiny", "-device", "cpu"],
                 env, check=False)
    output = result.stdout + result.stderr
    train_keys, _ = fold_0(partial)
    partial_here = sum(partial["kinds"][k] != "full" for k in train_keys)
    assert result.returncode != 0
    assert re.search(rf"nnunet_mtl: error: {partial_here} training case\(s\) of Dataset{DATASET}_\S+ are not fully "
                     rf"annotated .*; nnUNetTrainerMaskArea_tiny cannot train them: its term\(s\) area would read them "
                     rf"as full outlines or lesion-free images", output), output[-3000:]
    assert "Traceback" not in output
