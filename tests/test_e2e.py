"""End to end through the real commands, on a tiny phantom: convert, nnUNetv2_plan_and_preprocess,
nnUNetv2_train (tiny-schedule multitask trainer), nnUNetv2_predict, nnunet_mtl predict, nnunet_mtl evaluate."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.e2e_helpers import BIN, run, train, train_in_process

pytestmark = pytest.mark.e2e
DATASET = "501"
TRAINER = "nnUNetTrainerMTL_tiny"


@pytest.fixture(scope="module")
def trained(trained_phantom):
    """The session's trained tiny phantom (tests/conftest.py)."""
    assert trained_phantom["dataset"] == DATASET and trained_phantom["trainer"] == TRAINER
    return trained_phantom


def test_training_outputs(trained):
    model = trained["model"]
    fold = model / "fold_0"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png"):
        assert (fold / name).is_file(), name
    plans = json.loads((model / "plans.json").read_text())
    assert plans["nnunet_mtl"]["head"]["num_classes"] == 3
    ckpt = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert tuple(ckpt["inference_allowed_mirroring_axes"]) == (1,)  # no vertical test-time flips
    logged = ckpt["logging"]
    assert len(logged["val_auc"]) == 2 and len(logged["train_cls_losses"]) == 2
    # the final validation writes class probabilities next to nnU-Net's validation masks
    with open(fold / "validation" / "class_predictions.csv") as f:
        validated = {r["case_id"] for r in csv.DictReader(f)}
    assert validated == {p.stem for p in (fold / "validation").glob("*.png")} and validated


def test_split_is_grouped_by_patient(trained):
    pre = next((trained["root"] / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    splits = json.loads((pre / "splits_final.json").read_text())
    with open(trained["raw"] / "cases.csv") as f:
        patient = {r["case_id"]: r["patient_id"] for r in csv.DictReader(f)}
    assert len(splits) == 5
    for split in splits:
        assert not {patient[c] for c in split["train"]} & {patient[c] for c in split["val"]}


def test_class_aware_prediction_matches_nnunet_predict(trained):
    env, raw, root = trained["env"], trained["raw"], trained["root"]
    common = ["-i", str(raw / "imagesTs"), "-d", DATASET, "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu"]
    # both with worker processes (nnU-Net's path of preprocessing and export; the other tests run ours without)
    run([str(BIN / "nnUNetv2_predict"), "-o", str(root / "pred_nnunet"), *common, "-npp", "1", "-nps", "1"], env)
    # float32 on the CPU (the default there is bfloat16 where the CPU has it: docs/precision.md)
    run([str(BIN / "nnunet_mtl"), "predict", "-o", str(root / "pred_mtl"), *common, "--cpu-amp", "off",
         "-npp", "1", "-nps", "1"], env)
    ours = sorted((root / "pred_mtl").glob("*.png"))
    theirs = sorted((root / "pred_nnunet").glob("*.png"))
    assert [p.name for p in ours] == [p.name for p in theirs] and ours
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name
    with open(root / "pred_mtl" / "class_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["case_id"] for r in rows} == {p.stem for p in ours}
    for r in rows:
        probs = [float(r[f"prob_{c}"]) for c in ("benign", "malignant", "normal")]
        assert abs(sum(probs) - 1) < 1e-4
        assert r["predicted_class"] == ("benign", "malignant", "normal")[int(np.argmax(probs))]


def test_evaluate_on_predictions(trained):
    env, root = trained["env"], trained["root"]
    pred = root / "pred_eval"
    run([str(BIN / "nnunet_mtl"), "predict", "-i", str(trained["raw"] / "imagesTs"), "-o", str(pred), "-d", DATASET,
         "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta"], env)
    result = run([str(BIN / "nnunet_mtl"), "evaluate", "-pred", str(pred), "-d", DATASET], env)
    summary = json.loads((pred / "evaluation" / "summary.json").read_text())
    assert summary["num_cases"] == len(list(pred.glob("*.png")))
    assert summary["classification"] is not None
    assert "dice" in result.stdout.lower()


def test_predict_from_the_model_folder(trained, tmp_path):
    """``-m MODEL_FOLDER`` (as nnUNetv2_predict_from_modelfolder) predicts what -d / -c / -tr name, from a copy of
    the folder outside nnUNet_results; -m beside -d, or with a name that is not TRAINER__PLANS__CONFIGURATION, is one
    line."""
    import shutil
    env, raw = trained["env"], trained["raw"]
    copy = tmp_path / "elsewhere" / trained["model"].parent.name / trained["model"].name
    shutil.copytree(trained["model"], copy, ignore=shutil.ignore_patterns("validation", "checkpoint_best.pth"))
    options = ["-i", str(raw / "imagesTs"), "-f", "0", "-device", "cpu", "--disable_tta", "--cpu-amp", "off"]
    by_name = tmp_path / "by_name"
    run([str(BIN / "nnunet_mtl"), "predict", "-o", str(by_name), "-d", DATASET, "-c", "2d", "-tr", TRAINER,
         *options], env)
    by_folder = tmp_path / "by_folder"
    env_elsewhere = {**env, "nnUNet_results": str(tmp_path / "empty")}
    run([str(BIN / "nnunet_mtl"), "predict", "-o", str(by_folder), "-m", str(copy), *options], env_elsewhere)
    masks = sorted(p.name for p in by_name.glob("*.png"))
    assert masks and sorted(p.name for p in by_folder.glob("*.png")) == masks
    for name in masks:
        assert np.array_equal(np.asarray(Image.open(by_name / name)), np.asarray(Image.open(by_folder / name)))
    assert (by_name / "class_predictions.csv").read_text() == (by_folder / "class_predictions.csv").read_text()
    for extra, expected in ((["-m", str(copy), "-d", DATASET], "expected no -d / -c beside it"),
                            (["-m", str(tmp_path)], "is not TRAINER__PLANS__CONFIGURATION"),
                            (["-m", str(copy), "-tr", "nnUNetTrainerRLAR"], "is a model of -tr " + TRAINER),
                            (["-c", "2d"], "-d missing")):
        result = run([str(BIN / "nnunet_mtl"), "predict", "-o", str(tmp_path / "x"), *extra, *options], env,
                     check=False)
        assert result.returncode == 2 and expected in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_predict_with_unknown_trainer_is_one_clear_line(trained):
    env, raw, root = trained["env"], trained["raw"], trained["root"]
    result = run([str(BIN / "nnunet_mtl"), "predict", "-i", str(raw / "imagesTs"), "-o", str(root / "x"), "-d", DATASET,
                  "-c", "2d", "-tr", "nnUNetTrainerDoesNotExist", "-f", "0", "-device", "cpu"], env, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nnUNetTrainerDoesNotExist" in result.stderr


_TRAINED: dict = {}  # (root, trainer) -> model folder: a trainer trained once per module run


def train_also(trained, trainer: str) -> dict:
    """nnUNetv2_train -tr TRAINER fold 0 on the module's preprocessed phantom (once per module run); the fixture
    dict with its model."""
    key = (str(trained["root"]), trainer)
    if key not in _TRAINED:
        _TRAINED[key] = train(trained["env"], DATASET, trainer)[1]
    return {**trained, "trainer": trainer, "model": _TRAINED[key]}


@pytest.fixture(scope="module")
def rlar_trained(trained):
    """The tiny RLAR variant on the same preprocessed phantom."""
    return train_also(trained, "nnUNetTrainerRLAR_tiny")


def test_rlar_trains_and_predicts_through_nnunet(rlar_trained):
    """The RLAR trainer computes the radiomics cache itself, logs the guidance loss and the penalty, and its
    checkpoint loads in nnUNetv2_predict (the guided head's shape comes from plans.json)."""
    env, raw, root, model = rlar_trained["env"], rlar_trained["raw"], rlar_trained["root"], rlar_trained["model"]
    pre = next((root / "nnUNet_preprocessed").glob(f"Dataset{DATASET}_*"))
    with open(pre / "radiomics_targets.csv") as f:
        table = list(csv.DictReader(f))
    with open(raw / "cases.csv") as f:
        train_cases = {r["case_id"] for r in csv.DictReader(f) if r["split"] == "train"}
    assert {r["case_id"] for r in table} == train_cases
    plans = json.loads((model / "plans.json").read_text())
    assert plans["nnunet_mtl"]["head"]["guided_dim"] == 13 and len(plans["nnunet_mtl"]["guidance_features"]) == 13
    log = "".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "segmentation gradient at z: written out" in log  # nnU-Net's planned U-Net takes the fast path
    logged = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
    assert len(logged["train_rlar_penalty"]) == 2 and all(0 <= p <= 1 for p in logged["train_rlar_penalty"])
    assert all(np.isfinite(logged["train_clin_losses"])) and all(np.isfinite(logged["val_clin_losses"]))
    out = root / "pred_rlar"
    run([str(BIN / "nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o", str(out), "-d", DATASET, "-c", "2d",
         "-tr", rlar_trained["trainer"], "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], env)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.name[:-len("_0000.png")]
                                                             for p in (raw / "imagesTs").glob("*.png"))


def test_ablate_guidance(rlar_trained):
    """One row per guided feature; the unablated probabilities recomputed from the recorded embeddings equal the
    predictor's own class probabilities (the ablation re-applies the classifier exactly as prediction does)."""
    env, raw, root = rlar_trained["env"], rlar_trained["raw"], rlar_trained["root"]
    out = root / "ablation"
    result = run([str(BIN / "nnunet_mtl"), "ablate-guidance", "-i", str(raw / "imagesTs"), "-o", str(out),
                  "-d", DATASET, "-c", "2d", "-tr", rlar_trained["trainer"], "-f", "0", "-device", "cpu"], env)
    with open(out / "guidance_ablation.csv") as f:
        rows = list(csv.DictReader(f))
    plans = json.loads((rlar_trained["model"] / "plans.json").read_text())
    assert [r["feature"] for r in rows] == plans["nnunet_mtl"]["guidance_features"]
    for r in rows:
        assert -1 <= float(r["delta_macro_f1"]) <= 1
    assert "baseline: macro precision" in result.stdout and (out / "guidance_ablation.png").is_file()
    summary = json.loads((out / "guidance_ablation.json").read_text())
    assert summary["baseline"]["num_cases"] == len(list((raw / "imagesTs").glob("*.png")))


@pytest.fixture(scope="module")
def birads_trained(trained):
    """The tiny BI-RADS consistency variant (Zhang, Moradi, Saha) on the same preprocessed phantom."""
    return train_also(trained, "nnUNetTrainerBIRADS_tiny")


def test_birads_trains_saves_its_prior_and_predicts_through_nnunet(birads_trained):
    """The prior's u and running statistics are in the checkpoint (updated by training), the network is rebuilt
    from plans.json and loads strictly, and both prediction commands run."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mtl.trainers import nnUNetTrainerBIRADS
    env, raw, root, model = (birads_trained[k] for k in ("env", "raw", "root", "model"))
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    weights = checkpoint["network_weights"]
    prefix = "cls_head.loss_modules.birads_prior."
    assert bool(weights[prefix + "initialized"])
    assert (weights[prefix + "running_max"] > weights[prefix + "running_min"]).all()
    assert not torch.allclose(torch.softmax(weights[prefix + "u"], 0), torch.tensor([0.15, 0.35, 0.25, 0.25]))
    logged = checkpoint["logging"]
    assert len(logged["train_consistency_losses"]) == 2 and all(np.isfinite(logged["val_ntp_losses"]))
    plans = json.loads((model / "plans.json").read_text())
    manager = PlansManager(plans)
    network = nnUNetTrainerBIRADS.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2,
                                                             enable_deep_supervision=False)
    network.load_state_dict(weights, strict=True)
    assert torch.equal(network.head.loss_modules["birads_prior"].running_min, weights[prefix + "running_min"])
    log = "".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert "New best (lowest validation loss" in log
    for command, out in (("nnUNetv2_predict", root / "pred_birads_nnunet"), ("nnunet_mtl", root / "pred_birads")):
        # nnU-Net's needs one worker of each kind at least; ours runs in its process (nnunet_env)
        prefix_args = [str(BIN / command)] + (["predict"] if command == "nnunet_mtl" else ["-npp", "1", "-nps", "1"])
        run([*prefix_args, "-i", str(raw / "imagesTs"), "-o", str(out), "-d", DATASET, "-c", "2d",
             "-tr", birads_trained["trainer"], "-f", "0", "-device", "cpu", "--disable_tta"], env)
        assert len(list(out.glob("*.png"))) == len(list((raw / "imagesTs").glob("*.png")))
    assert (root / "pred_birads" / "class_predictions.csv").is_file()


# One nnUNetv2_train subprocess per trainer family (single task, uncertainty weighting, TorchJD aggregation);
# the other TorchJD aggregators train in-process: the same trainer code, without a second start of nnU-Net
@pytest.mark.parametrize("trainer, describes, how", [
    ("nnUNetTrainerSegOnly_tiny", "head none; terms seg x 1", "nnUNetv2_train"),
    ("nnUNetTrainerClsOnly_tiny", "classification only: no segmentation of the validation cases", "nnUNetv2_train"),
    ("nnUNetTrainerMTL_UW_tiny", "uncertainty weighting (Kendall et al. 2018)", "nnUNetv2_train"),
    ("nnUNetTrainerMTL_UPGrad_tiny", "TorchJD UPGrad", "nnUNetv2_train"),
    ("nnUNetTrainerMTL_PCGrad_tiny", "TorchJD PCGrad", "in-process"),
    ("nnUNetTrainerMTL_MGDA_tiny", "TorchJD MGDA", "in-process"),
    ("nnUNetTrainerMTL_CAGrad_tiny", "TorchJD CAGrad", "in-process"),
])
def test_every_baseline_trains_through_nnunet_and_its_checkpoint_loads_strictly(trained, trainer, describes, how,
                                                                                monkeypatch):
    """Issue 12: each baseline through a tiny nnU-Net training on the same preprocessed phantom and split; its
    finite losses logged, its backward rule named in the log, and its checkpoint strictly loaded into the network
    rebuilt from plans.json (what the predictors do)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mtl.trainers import TRAINERS
    if how == "nnUNetv2_train":
        model = train_also(trained, trainer)["model"]
    else:
        model = train_in_process(trained["root"], DATASET, TRAINERS[trainer], monkeypatch)
    log = "".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
    assert describes in log
    ckpt = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logged = ckpt["logging"]
    for task in TRAINERS[trainer].resolved_loss_weights():
        assert len(logged[f"train_{task}_losses"]) == 2 and all(np.isfinite(logged[f"train_{task}_losses"]))
    manager = PlansManager(json.loads((model / "plans.json").read_text()))
    network = TRAINERS[trainer].build_network_architecture(manager, manager.get_configuration("2d"), 1, 2,
                                                           enable_deep_supervision=False)
    network.load_state_dict(ckpt["network_weights"], strict=True)
    if "ClsOnly" in trainer:  # the decoder is kept (strict loading above) but never ran: its weights are untouched
        assert not (model / "fold_0" / "validation" / "summary.json").exists()
        assert (model / "fold_0" / "validation" / "class_predictions.csv").is_file()
        assert torch.isnan(torch.tensor(logged["mean_fg_dice"])).all()
    if "SegOnly" in trainer:
        assert not any(k.startswith("cls_head.") for k in ckpt["network_weights"])  # no head
        assert not (model / "fold_0" / "validation" / "class_predictions.csv").exists()
    if "_UW_" in trainer:  # the learned log-variances are in the checkpoint and were trained
        assert len(logged["train_sigma_seg"]) == 2
        assert not torch.equal(ckpt["network_weights"]["cls_head.loss_modules.uncertainty.log_variances"],
                               torch.zeros(2))


def test_single_task_baselines_predict_what_they_learned(trained):
    """Classification only: nnunet_mtl predict writes class probabilities and no masks (the decoder never trained);
    segmentation only: nnUNetv2_predict gives the masks, nnunet_mtl predict says to use it, in one line."""
    env, raw, root = trained["env"], trained["raw"], trained["root"]
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTs").glob("*.png"))
    train_also(trained, "nnUNetTrainerClsOnly_tiny")
    out = root / "pred_clsonly"
    result = run([BIN / "nnunet_mtl", "predict", "-i", raw / "imagesTs", "-o", out, "-d", DATASET, "-c", "2d",
                  "-tr", "nnUNetTrainerClsOnly_tiny", "-f", "0", "-device", "cpu", "--disable_tta"], env)
    assert "classification only: class probabilities, no masks" in result.stdout
    assert not list(out.glob("*.png"))
    with open(out / "class_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case_id"] for r in rows) == cases
    assert all(abs(sum(float(v) for k, v in r.items() if k.startswith("prob_")) - 1) < 1e-4 for r in rows)
    train_also(trained, "nnUNetTrainerSegOnly_tiny")
    out = root / "pred_segonly"
    run([BIN / "nnUNetv2_predict", "-i", raw / "imagesTs", "-o", out, "-d", DATASET, "-c", "2d",
         "-tr", "nnUNetTrainerSegOnly_tiny", "-f", "0", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
        env)
    assert sorted(p.stem for p in out.glob("*.png")) == cases
    result = run([BIN / "nnunet_mtl", "predict", "-i", raw / "imagesTs", "-o", root / "nope", "-d", DATASET, "-c",
                  "2d", "-tr", "nnUNetTrainerSegOnly_tiny", "-f", "0", "-device", "cpu"], env, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "segmentation-only model" in result.stderr and "nnUNetv2_predict" in result.stderr
    assert not (root / "nope").exists()
