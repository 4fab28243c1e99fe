"""Mixed precision on the CPU (nnunet_mtl.precision): the switch, every trainer family's step under bfloat16
autocast against its float32 step, checkpoints of a bfloat16 training in a float32 predictor, and the one-pass final
validation.

Tolerance of the gradient comparison, and why. bfloat16 keeps 8 significant bits (a relative rounding of 2^-9 per
value), and a step rounds every activation of a 20-layer network, every gradient flowing back through it and, for
RLAR, the gradients it differentiates again. Near the initialization the encoder's gradient is mostly noise that
such rounding moves as much as another dropout mask does (measured: cosine 0.83 bf16 / fp32 against 0.77 between
two float32 steps with different masks), so the comparison is made after 10 float32 steps on the batch (the
family's own, or those of the family it warms from: WARM_FROM). Two bounds:
- the whole parameter gradient: cosine >= 0.88 and ||g_bf16 - g_fp32|| / ||g_fp32|| <= 0.55 (measured on this
  phantom at full width: cosines 0.92-0.99, errors 0.11-0.42, the lowest RLAR with autograd at the last encoder
  stage, where the penalty differentiates rounded gradients again; at the half width the test uses (WIDTH_DIVISOR):
  cosines 0.934-0.987, errors 0.16-0.36, the lowest ClsOnly, then RLAR at the last stage, 0.956 / 0.30; with
  the shared warm-ups of WARM_FROM: 0.937-0.993, 0.12-0.36, the lowest ClinGuided);
- the layers next to the losses (segmentation outputs, classifier): cosine >= 0.995 (measured >= 0.9994 at either
  width).
A dropped or unscaled term, a loss summed in bfloat16 over a whole mask, or a NaN moves them far beyond that.
"""
from __future__ import annotations

import copy
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nnunet_mtl import precision
from nnunet_mtl.dataset.case_table import CaseTable
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.seams.terms import Setup
from nnunet_mtl.trainers import TRAINERS
from tests.e2e_helpers import BIN, nnunet_env as environment, planned_phantom, run, train, use_in_process

pytestmark = pytest.mark.slow  # trains or starts processes (the fast subset leaves it out)

WARM_UP_STEPS = 10
COSINE_MIN = 0.88
RELATIVE_ERROR_MAX = 0.55
COSINE_LAST_MIN = 0.995
# the planned network at half width (16..256 features instead of 32..512; the same stages, layers and heads): on a
# CPU without native bfloat16, autocast's convolutions fall back to PyTorch's slow im2col path, ~26x a float32 step
# (measured on one thread: 7.8 s against 0.30 s per step at full width, 1.8 s at half width); the rounding studied
# here is the same per value at either width
WIDTH_DIVISOR = 2


# ================================================================================================ the switch
def test_the_switch_reads_the_environment_and_refuses_other_values(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    cpu = torch.device("cpu")
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    assert precision.cpu_amp_enabled() and "bfloat16" in precision.describe(cpu)
    monkeypatch.setenv(precision.ENV_VAR, "off")
    assert not precision.cpu_amp_enabled() and precision.describe(cpu).startswith("precision: float32")
    assert precision.cpu_amp_enabled("bf16")  # a flag wins over the environment
    monkeypatch.setenv(precision.ENV_VAR, "fp8")
    with pytest.raises(NnunetMtlError, match=r"nnUNet_mtl_cpu_amp is 'fp8'; expected one of auto, bf16, off"):
        precision.cpu_amp_enabled()
    monkeypatch.setenv(precision.ENV_VAR, "auto")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert not precision.cpu_amp_enabled()  # emulated bfloat16 is slower than float32: auto stays float32
    assert "no native bfloat16" in precision.describe(cpu)
    assert precision.cpu_amp_enabled("bf16")
    # CUDA keeps nnU-Net's float16 autocast whatever the switch says
    assert "float16" in precision.describe(torch.device("cuda"), "off")


def test_autocast_contexts_per_device(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    with precision.autocast_for(torch.device("cpu"), "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision.autocast_for(torch.device("cpu"), "auto")():
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast_for(torch.device("cpu"), "off")():
        assert not torch.is_autocast_enabled("cpu")


# ================================================================================================ trainer steps
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("amp")
    planned_phantom(environment(root), "521", seed=4)
    return root


@pytest.fixture
def env(phantom, monkeypatch):
    use_in_process(monkeypatch, phantom)
    monkeypatch.setenv("nnUNet_compile", "0")
    return phantom


def _variant(name: str, **backward):
    base = TRAINERS[name]
    return type(f"{name}_{'_'.join(f'{k}{v}' for k, v in backward.items())}", (base,),
                {"backward": replace(base.backward, **backward)})


FAMILIES = {
    "MTL": TRAINERS["nnUNetTrainerMTL"],
    "ClinGuided": TRAINERS["nnUNetTrainerClinGuided"],
    # RLAR's written rule (what it trains with) at each of its layers; its autograd rule (for checking: it
    # differentiates the task gradients again, double backward under autocast) at the last encoder stage alone, the
    # layer whose gradient bfloat16 moves most (see top)
    **{f"RLAR_{layer}_written": _variant("nnUNetTrainerRLAR", layer=layer, fast=True)
       for layer in ("bottleneck", "last", "mid", "last3")},
    "RLAR_last_autograd": _variant("nnUNetTrainerRLAR", layer="last", fast=False),
    "BIRADS": TRAINERS["nnUNetTrainerBIRADS"],
    "LesionAware_stage1": TRAINERS["nnUNetTrainerLesionAware"],
    "LesionAware_stage2": TRAINERS["nnUNetTrainerLesionAware"],
    "UW": TRAINERS["nnUNetTrainerMTL_UW"],
    **{agg: TRAINERS[f"nnUNetTrainerMTL_{agg}"] for agg in ("PCGrad", "UPGrad", "MGDA", "CAGrad", "JDSum")},
    "SegOnly": TRAINERS["nnUNetTrainerSegOnly"],
    "ClsOnly": TRAINERS["nnUNetTrainerClsOnly"],
}


def _trainer_on_a_batch(root: Path, cls, stage: int):
    """The trainer built from the phantom's plans (at 1/WIDTH_DIVISOR of their width) and initialized, a batch of
    its planned size (noise with a lesion-sized block), and a case table of the batch's cases: classes in turn, every
    second case marked without a mask for the lesion-aware trainer (its pseudo-label terms run on them; the phantom
    has no ignore label, so nnU-Net's loss still reads their masks), radiomics targets given."""
    pre = next((root / "nnUNet_preprocessed").glob("Dataset521_*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [f // WIDTH_DIVISOR for f in arch["features_per_stage"]]
    dataset_json = json.loads((pre / "dataset.json").read_text())
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    patch = trainer.configuration_manager.patch_size
    n = max(4, trainer.configuration_manager.batch_size)
    g = torch.Generator().manual_seed(0)
    seg = torch.zeros((n, 1, *patch))
    seg[:, :, patch[0] // 4: patch[0] // 2, patch[1] // 3: 2 * patch[1] // 3] = 1
    keys = [f"case{i}" for i in range(n)]
    partial = "LesionAware" in cls.__name__
    target = [torch.nn.functional.interpolate(seg, size=[max(1, round(p * s)) for p, s in zip(patch, scale)])
              for scale in trainer._get_deep_supervision_scales()]
    batch = {"data": torch.randn((n, 1, *patch), generator=g) + 2 * seg, "target": target, "keys": keys}
    names = trainer.class_names
    frame = pd.DataFrame({"case_id": keys, "split": "train", "class": [names[i % len(names)] for i in range(n)],
                          "patient_id": keys, "mask": ["full" if i % 2 == 0 or not partial else "none"
                                                       for i in range(n)]})
    trainer.cases = CaseTable(frame, trainer.class_labels)
    trainer._train_keys = keys
    trainer.cases.add("radiomics", {k: np.random.default_rng(i).normal(size=13).astype(np.float32)
                                    for i, k in enumerate(keys)})
    setup = Setup(cases=trainer.cases, train_keys=keys, class_names=list(names), device=trainer.device,
                  log=lambda *a: None, nnunet_loss=trainer.loss)
    for term in trainer.terms:
        if term.name != "clin":
            term.setup(setup)
    trainer._enter_stage(trainer._stage_plan()[stage].start)
    trainer.network.train()
    return trainer, batch


def _gradients(trainer, batch, mode: str):
    """The step's losses, its whole parameter gradient (float64, zeros where a parameter got none) and that of the
    layers next to the losses (the segmentation outputs and the classifier)."""
    trainer._autocast_factory = precision.autocast_for(trainer.device, mode)
    torch.manual_seed(0)  # the same dropout masks
    result = trainer.compute_gradients(batch)
    named = [(n, (p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double())
             for n, p in trainer.network.named_parameters()]
    last = [g for n, g in named if "seg_layers" in n or "classifier" in n]
    return result, torch.cat([g for _, g in named]), torch.cat(last)


# A family starts from the network an earlier one of the same architecture warmed up (load_state_dict is strict)
# instead of taking 10 steps of its own: the comparison needs weights away from the initialization, not weights its
# own rule reached, and the warm-up was three quarters of a family's time (measured: 48 of 64 s for MTL, 85 of 122 s
# for RLAR). A family run alone (-k) warms up itself. Not shared: UW (its learned weights are parameters of the
# network), the lesion-aware stage 2 (from stage 1's warmed-up weights its whole gradient was at a cosine of 0.865,
# below the bound; 0.982 after its own warm-up).
WARM_FROM = {**{name: "MTL" for name in ("ClinGuided", "PCGrad", "UPGrad", "MGDA", "CAGrad", "JDSum", "ClsOnly")},
             **{f"RLAR_{layer}_written": "RLAR_bottleneck_written" for layer in ("last", "mid", "last3")},
             "RLAR_last_autograd": "RLAR_bottleneck_written"}
WARMED_UP: dict[str, dict] = {}  # family -> its network after the warm-up (only read: load_state_dict copies it)


def test_a_family_warms_from_one_listed_before_it():  # else it would warm up itself, silently slower
    order = list(FAMILIES)
    assert all(order.index(source) < order.index(family) for family, source in WARM_FROM.items())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_trainer_family_steps_under_cpu_bf16_autocast(env, family):
    torch.manual_seed(0)
    trainer, batch = _trainer_on_a_batch(env, FAMILIES[family], stage=1 if family.endswith("stage2") else 0)
    trainer._autocast_factory = precision.autocast_for(trainer.device, "off")
    if WARM_FROM.get(family) in WARMED_UP:
        trainer.network.load_state_dict(WARMED_UP[WARM_FROM[family]])
    else:
        for _ in range(WARM_UP_STEPS):  # away from the initialization, where the gradient is mostly noise (see top)
            trainer.train_step(batch)
    state = copy.deepcopy(trainer.network.state_dict())  # running statistics (the BI-RADS prior) as before
    if family in WARM_FROM.values():
        WARMED_UP[family] = state
    fp32, g32, last32 = _gradients(trainer, batch, "off")
    trainer.network.load_state_dict(state)
    bf16, g16, last16 = _gradients(trainer, batch, "bf16")
    assert all(torch.isfinite(v).all() for v in bf16.losses.values()), bf16.losses
    assert torch.isfinite(g16).all()
    for name, v in fp32.losses.items():  # the same losses up to bfloat16 rounding of the activations
        assert float(bf16.losses[name]) == pytest.approx(float(v), rel=0.1, abs=0.02), name
    cosine = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    error = float((g16 - g32).norm() / g32.norm())
    cosine_last = float(torch.nn.functional.cosine_similarity(last16, last32, dim=0))
    print(f"{family}: cosine {cosine:.4f}, relative error {error:.3f}, next to the losses: cosine {cosine_last:.5f}")
    assert cosine >= COSINE_MIN and error <= RELATIVE_ERROR_MAX, (family, cosine, error)
    assert cosine_last >= COSINE_LAST_MIN, (family, cosine_last)
    # a step on (the optimizer's too): finite, and the parameters stay float32 (what a float32 predictor loads
    # strictly)
    out = trainer.train_step(batch)
    assert all(np.isfinite(v).all() for v in out.values()), out
    state = trainer.network.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    fresh = type(trainer).build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, enable_deep_supervision=False)
    fresh.load_state_dict(state)  # strict


def test_the_training_log_names_the_precision(env, monkeypatch):
    monkeypatch.setenv(precision.ENV_VAR, "bf16")
    trainer, _ = _trainer_on_a_batch(env, TRAINERS["nnUNetTrainerMTL"], 0)
    assert torch.is_autocast_enabled("cpu") is False
    with trainer._autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    monkeypatch.setenv(precision.ENV_VAR, "nonsense")
    with pytest.raises(SystemExit, match="nnUNet_mtl_cpu_amp is 'nonsense'"):
        _trainer_on_a_batch(env, TRAINERS["nnUNetTrainerMTL"], 0)


# ================================================================================================ end to end
def _rows(path: Path) -> dict:
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_bf16_training_one_pass_validation_and_a_float32_predictor(tmp_path, monkeypatch):
    """nnUNetv2_train under bfloat16 autocast: the log names it; the final validation writes nnU-Net's masks and
    summary.json and the class probabilities of exactly the fold's validation cases in one pass; the checkpoint
    predicts in float32 (--cpu-amp off), masks identical to nnUNetv2_predict's; and in float32 the one pass gives
    the same class probabilities as a pass of their own."""
    env = environment(tmp_path)
    env[precision.ENV_VAR] = "bf16"
    raw = planned_phantom(env, "522", seed=6)
    result, model = train(env, "522", "nnUNetTrainerMTL_tiny")
    fold = model / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "precision: bfloat16 autocast on the CPU" in log
    assert "second pass" not in log
    validation = fold / "validation"
    splits = json.loads((Path(env["nnUNet_preprocessed"]) / raw.name / "splits_final.json").read_text())
    val = sorted(splits[0]["val"])
    assert sorted(p.name[:-4] for p in validation.glob("*.png")) == val
    assert sorted(_rows(validation / "class_predictions.csv")) == val
    summary = json.loads((validation / "summary.json").read_text())
    assert {"foreground_mean", "mean", "metric_per_case"} <= set(summary)

    images = raw / "imagesTr"
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    env32 = {**env, precision.ENV_VAR: "off"}
    out = run([BIN / "nnunet_mtl", "predict", "-i", images, "-o", ours, "-d", "522", "-c", "2d", "-tr",
               "nnUNetTrainerMTL_tiny", "-f", "0", "-device", "cpu", "--cpu-amp", "off", "-npp", "1", "-nps", "1"], env)
    assert "precision: float32" in out.stdout
    run([BIN / "nnUNetv2_predict", "-i", images, "-o", theirs, "-d", "522", "-c", "2d", "-tr",
         "nnUNetTrainerMTL_tiny", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env32)
    from PIL import Image
    for mask in sorted(theirs.glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(ours / mask.name))), mask.name

    # float32: the one pass and a pass of their own give the same class probabilities
    run([BIN / "nnUNetv2_train", "522", "2d", "0", "-tr", "nnUNetTrainerMTL_tiny", "-device", "cpu", "--val"], env32)
    one_pass = _rows(validation / "class_predictions.csv")
    use_in_process(monkeypatch, tmp_path)
    monkeypatch.setenv(precision.ENV_VAR, "off")
    pre = Path(env["nnUNet_preprocessed"]) / raw.name
    trainer = TRAINERS["nnUNetTrainerMTL_tiny"](
        {**json.loads((pre / "nnUNetPlans.json").read_text()), "continue_training": False}, "2d", 0,
        json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))
    trainer.initialize()
    trainer.load_checkpoint(str(fold / "checkpoint_final.pth"))
    trainer.write_validation_class_predictions()  # a pass of its own, over the same cases
    assert _rows(validation / "class_predictions.csv") == one_pass
