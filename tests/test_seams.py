"""The seams (nnunet_mtl.seams, the case table): each takes a new implementation in at most 10 lines, and the base
trainer does the rest (logging, plots, checkpoints, plans, stages, resume). Trainings here run in-process on a
tiny preprocessed phantom (2-3 epochs of 3 iterations)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_mtl.seams import (Batch, GradientAggregation, Head, HeadConfig, LossTerm, Stage, StepResult, WeightedSum,
                              register_head, register_loss_module)
from nnunet_mtl.seams.terms import weighted_total
from nnunet_mtl.trainers import nnUNetTrainerMTL, nnUNetTrainerMTL_tiny
from tests.network_helpers import small_net, toy_losses


# ------------------------------------------------------------------------------------------------ a new term
class MaskArea(LossTerm):  # a regularizer: the mean soft lesion mask
    name, task, acts_on = "area", False, ("segmentation",)

    def __call__(self, outputs, batch):
        seg = outputs["seg"][0] if isinstance(outputs["seg"], list) else outputs["seg"]
        return torch.softmax(seg.float(), 1)[:, 1].mean()


class TrainerWithArea(nnUNetTrainerMTL_tiny):
    terms = (*nnUNetTrainerMTL.terms, MaskArea())
    loss_weights = {"area": 0.01}


# ------------------------------------------------------------------------------------------------ a new head
@dataclass(kw_only=True)
class LinearConfig(HeadConfig):
    kind: ClassVar[str] = "test_linear"


@register_head
class LinearHead(Head):  # global average pool of the bottleneck -> linear
    config_class = LinearConfig

    def __init__(self, encoder_channels, config):
        super().__init__(encoder_channels, config)
        self.classifier = nn.Linear(encoder_channels[-1], config.num_classes)

    def forward(self, skips):
        return {"logits": self.classifier(skips[-1].flatten(2).mean(-1))}


class TrainerWithLinearHead(nnUNetTrainerMTL_tiny):
    head = LinearConfig()


# ----------------------------------------------------------------------------------------- a head-owned loss module
@register_loss_module("test_prior")
class RunningPrior(nn.Module):  # a learnable logit and a running maximum, both in the network's state
    no_weight_decay = True

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.u = nn.Parameter(torch.tensor(float(init)))
        self.register_buffer("running_max", torch.tensor(0.0))


class PriorTerm(LossTerm):
    name, acts_on = "prior", ("classification", "loss_module")

    def loss_modules(self):
        return {"prior": {"kind": "test_prior", "init": 0.5}}

    def __call__(self, outputs, batch):
        prior = batch.loss_module("prior")
        if batch.training:
            prior.running_max.copy_(torch.maximum(prior.running_max, outputs["logits"].detach().abs().max()))
        return (torch.sigmoid(prior.u) - torch.softmax(outputs["logits"].float(), 1)[:, 0].mean()) ** 2


class TrainerWithPrior(nnUNetTrainerMTL_tiny):
    terms = (*nnUNetTrainerMTL.terms, PriorTerm())
    loss_weights = {"prior": 1.0}


# ------------------------------------------------------------------------------------------------ a new backward rule
@dataclass
class PerTaskBackward(WeightedSum):  # one backward per weighted term, accumulated: the same gradients
    name: ClassVar[str] = "per task"

    def __call__(self, network, data, compute_losses, weights, *, tasks=(), scale=lambda x: x, autocast=None):
        losses = compute_losses(network(data, return_aux=True))
        for i, (name, loss) in enumerate(losses.items()):
            scale(weights[name] * loss).backward(retain_graph=i < len(losses) - 1)
        return StepResult({k: v.detach() for k, v in losses.items()}, weighted_total(losses, weights).detach())


# ------------------------------------------------------------------------------------------------ a new stage
class TrainerInStages(nnUNetTrainerMTL_tiny):
    stages = (Stage("segmentation first", epochs=1, weights={"cls": 0.0}, trainable=("encoder", "decoder"),
                    select_best=False),
              Stage("joint", lr=5e-3, reset_optimizer=True))
    schedule = {"num_epochs": 3, "save_every": 1}


class Interrupted(Exception):
    pass


class TrainerInStagesInterrupted(TrainerInStages):
    def on_epoch_end(self):
        super().on_epoch_end()
        if self.current_epoch == 2:  # after epoch 1 (the first of stage 2) and its checkpoint_latest
            raise Interrupted


# ================================================================================================ fixtures
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from tests.e2e_helpers import nnunet_env as environment, planned_phantom
    root = tmp_path_factory.mktemp("seams")
    planned_phantom(environment(root), "503", seed=5)
    return root


@pytest.fixture
def nnunet_env(phantom, monkeypatch):
    from tests.e2e_helpers import use_in_process
    use_in_process(monkeypatch, phantom)
    return phantom


def make_trainer(root: Path, cls, fold=0):
    from tests.e2e_helpers import in_process_trainer
    return in_process_trainer(root, "503", cls, fold)


def train(root: Path, cls):
    torch.manual_seed(0)
    trainer = make_trainer(root, cls)
    trainer.run_training()
    return trainer


def checkpoint(trainer, name="checkpoint_final.pth"):
    return torch.load(Path(trainer.output_folder) / name, map_location="cpu", weights_only=False)


def log_text(trainer) -> str:
    return Path(trainer.log_file).read_text()


# ================================================================================================ tests
def test_a_new_term_is_logged_plotted_and_checkpointed(nnunet_env):
    trainer = train(nnunet_env, TrainerWithArea)
    logged = checkpoint(trainer)["logging"]
    for key in ("train_area_losses", "val_area_losses", "train_seg_losses", "val_cls_losses"):
        assert len(logged[key]) == 2 and all(np.isfinite(logged[key])), key
    assert all(0 <= v <= 1 for v in logged["train_area_losses"] + logged["val_area_losses"])
    # train_losses / val_losses are the weighted totals of the same terms
    for split in ("train", "val"):
        terms = (logged[f"{split}_{n}_losses"] for n in ("seg", "cls", "area"))
        expected = [s + c + 0.01 * a for s, c, a in zip(*terms)]
        assert np.allclose(logged[f"{split}_losses"], expected, rtol=1e-5)
    assert (Path(trainer.output_folder) / "progress.png").is_file()
    assert "area x 0.01 (regularizer)" in log_text(trainer)


def test_a_new_head_is_rebuilt_from_the_plans_and_loads_strictly(nnunet_env):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    trainer = train(nnunet_env, TrainerWithLinearHead)
    plans = json.loads((Path(trainer.output_folder_base) / "plans.json").read_text())
    assert plans["nnunet_mtl"]["head"] == {"kind": "test_linear", "import_path": f"{__name__}:LinearHead",
                                           "num_classes": 3, "loss_modules": {}}
    manager = PlansManager(plans)
    network = nnUNetTrainerMTL.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2,
                                                          enable_deep_supervision=False)
    assert isinstance(network.head, LinearHead)
    network.load_state_dict(checkpoint(trainer)["network_weights"], strict=True)  # what nnUNetv2_predict does
    assert network.classifier_keys() == ("cls_head.classifier.weight", "cls_head.classifier.bias")
    out = network(torch.zeros(1, 1, 64, 64), return_aux=True)
    assert out["logits"].shape == (1, 3) and "embedding" not in out


def test_a_head_owned_loss_module_is_saved_resumed_and_free_of_weight_decay(nnunet_env):
    trainer = train(nnunet_env, TrainerWithPrior)
    weights = checkpoint(trainer)["network_weights"]
    assert {"cls_head.loss_modules.prior.u", "cls_head.loss_modules.prior.running_max"} <= set(weights)
    assert weights["cls_head.loss_modules.prior.running_max"] > 0  # updated in training
    assert weights["cls_head.loss_modules.prior.u"] != 0.5  # learned
    groups = trainer.optimizer.param_groups
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and groups[1]["params"] == [
        trainer.network.head.loss_modules["prior"].u]
    plans = json.loads((Path(trainer.output_folder_base) / "plans.json").read_text())
    assert plans["nnunet_mtl"]["head"]["loss_modules"] == {"prior": {"kind": "test_prior", "init": 0.5,
                                                                     "import_path": f"{__name__}:RunningPrior"}}
    resumed = make_trainer(nnunet_env, TrainerWithPrior)
    resumed.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))  # what --c does
    state = resumed.network.state_dict()
    for key in ("cls_head.loss_modules.prior.u", "cls_head.loss_modules.prior.running_max"):
        assert torch.equal(state[key], weights[key])


def jacobian_sum(network):
    """TorchJD's mtl_backward + jac_to_grad with its Sum aggregator, written out: every task's gradient at the
    features (one row of the Jacobian), their sum back-propagated into the shared parameters; the task-specific
    parameters get the tasks' plain gradients."""
    def aggregate(losses, features, shared):
        rows = [torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True) for loss in losses]
        shared_ids = {id(p) for p in shared}
        specific = [p for p in network.parameters() if id(p) not in shared_ids and p.requires_grad]
        torch.autograd.backward(sum(losses), inputs=specific, retain_graph=True)
        summed = [sum(r[k] for r in rows if r[k] is not None) for k in range(len(features))]
        pairs = [(f, g) for f, g in zip(features, summed) if not isinstance(g, int)]
        torch.autograd.backward([f for f, _ in pairs], grad_tensors=[g for _, g in pairs], inputs=shared)
    return aggregate


def test_a_new_backward_rule_gives_the_weighted_sum_gradients():
    data = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = {"seg": 1.0, "cls": 0.5, "area": 0.1}
    grads = []
    for make_rule in (WeightedSum, PerTaskBackward, lambda: None):
        net = small_net()
        rule = make_rule() or GradientAggregation(aggregate=jacobian_sum(net), label="sum")
        result = rule(net, data, toy_losses, weights, tasks=("seg", "cls"))
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
        assert set(result.losses) == {"seg", "cls", "area"}
    for other in grads[1:]:
        assert torch.allclose(other, grads[0], rtol=1e-10, atol=1e-14)
    # the aliases the decoder and head read make the features a cut: with the encoder's own outputs as features,
    # the paths through the later encoder stages would be counted again
    net = small_net()
    outputs = net(data, return_aux=True)  # no feature_cut
    losses = toy_losses(outputs)
    (0.1 * losses["area"]).backward(retain_graph=True)
    jacobian_sum(net)([losses["seg"], 0.5 * losses["cls"]], list(outputs["skips"]),
                      list(net.encoder.parameters()))
    wrong = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert not torch.allclose(wrong, grads[0], rtol=1e-6)


def test_gradient_aggregation_falls_back_on_non_finite_losses():
    net = small_net()
    called = []
    rule = GradientAggregation(aggregate=lambda *args: called.append(args))
    data = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    rule(net, data, lambda out: {"seg": toy_losses(out)["seg"] * float("inf"), "cls": toy_losses(out)["cls"]},
         {"seg": 1.0, "cls": 1.0}, tasks=("seg", "cls"))
    assert not called  # the weighted sum's inf gradients make AMP's grad scaler skip the step
    assert any(not torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_a_new_stage_freezes_selects_and_resumes(nnunet_env):
    first = make_trainer(nnunet_env, TrainerInStagesInterrupted)
    with pytest.raises(Interrupted):
        first.run_training()
    saved = checkpoint(first, "checkpoint_latest.pth")
    assert saved["current_epoch"] == 2 and saved["logging"]["stage"] == [0, 1]
    best = checkpoint(first, "checkpoint_best.pth")
    assert best["current_epoch"] == 2  # chosen in stage 2: stage 1 (untrained head) is not selectable
    logged = saved["logging"]
    assert logged["ema_mtl_score"][1] == logged["mtl_score"][1]  # the selection EMA restarts with the stage
    assert logged["lrs"][1] == pytest.approx(5e-3)  # stage 2's own learning rate, poly over its 2 epochs
    text = log_text(first)
    assert "entering stage 1/2 'segmentation first' (epochs 0-0)" in text
    assert "entering stage 2/2 'joint' (epochs 1-2)" in text and "fresh optimizer state" in text
    resumed = make_trainer(nnunet_env, TrainerInStages)
    resumed.load_checkpoint(str(Path(first.output_folder) / "checkpoint_latest.pth"))  # nnUNetv2_train --c
    resumed.run_training()
    assert "resumed in stage 2/2 'joint'" in log_text(resumed)
    final = checkpoint(resumed)["logging"]
    assert final["stage"] == [0, 1, 1] and final["lrs"][2] == pytest.approx(5e-3 * 0.5 ** 0.9)


def test_a_frozen_part_does_not_change_in_its_stage(nnunet_env):
    trainer = make_trainer(nnunet_env, TrainerInStages)
    trainer.on_train_start()
    head_before = {k: v.clone() for k, v in trainer.network.head.state_dict().items()}
    encoder_before = next(trainer.network.encoder.parameters()).clone()
    trainer.on_epoch_start()
    trainer.on_train_epoch_start()
    assert trainer.loss_weights_now == {"seg": 1.0, "cls": 0.0}
    assert not trainer.network.head.training and trainer.network.encoder.training
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    for key, value in trainer.network.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key  # weights and batch-norm statistics alike
    assert not torch.equal(next(trainer.network.encoder.parameters()), encoder_before)
    trainer.on_train_end()


def test_every_trainer_is_a_thin_composition():
    """Only the base trainer overrides nnU-Net's step and epoch hooks; every other trainer is a declaration."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_mtl.trainers import TRAINERS
    hooks = {n for n in vars(nnUNetTrainer) if n in ("train_step", "validation_step", "run_training")
             or n.startswith("on_")}
    assert {"train_step", "validation_step", "on_epoch_end", "on_train_epoch_end"} <= hooks
    assert len(TRAINERS) >= 20
    for name, cls in TRAINERS.items():
        for klass in cls.__mro__:
            if klass in (nnUNetTrainerMTL, nnUNetTrainer) or not issubclass(klass, nnUNetTrainer):
                continue
            assert not hooks & set(vars(klass)), f"{name}: {klass.__name__} overrides {hooks & set(vars(klass))}"


def test_loss_weights_merge_along_the_hierarchy_and_are_checked():
    from nnunet_mtl.trainers import nnUNetTrainerClinGuided_clin1, nnUNetTrainerRLAR
    assert nnUNetTrainerRLAR.resolved_loss_weights() == {"seg": 1.0, "cls": 1.0, "clin": 0.1}
    assert nnUNetTrainerClinGuided_clin1.resolved_loss_weights() == {"seg": 1.0, "cls": 1.0, "clin": 1.0}

    class Typo(nnUNetTrainerMTL):
        loss_weights = {"clss": 1.0}

    with pytest.raises(ValueError, match="Typo.loss_weights names clss"):
        Typo.resolved_loss_weights()

    class SegOnly(nnUNetTrainerMTL):
        terms = nnUNetTrainerMTL.terms[:1]

    assert SegOnly.resolved_loss_weights() == {"seg": 1.0}

    class BadStage(nnUNetTrainerMTL):
        stages = (Stage("x", weights={"clin": 1.0}),)

    with pytest.raises(ValueError, match="stage 'x' sets the weight of clin"):
        BadStage.resolved_loss_weights()


def test_head_config_takes_what_the_terms_need():
    from nnunet_mtl.trainers import nnUNetTrainerClinGuided
    config = nnUNetTrainerClinGuided.head_config(5)
    assert (config.kind, config.num_classes, config.embed_dim, config.guided_dim) == ("bottleneck_mlp", 5, 128, 13)

    class Mismatch(nnUNetTrainerClinGuided):
        head = LinearConfig()

    with pytest.raises(ValueError, match="head kind 'test_linear' has no parameter.*guided_dim"):
        Mismatch.head_config(2)
    assert TrainerWithPrior.head_config(2).loss_modules == {"prior": {"kind": "test_prior", "init": 0.5}}


def test_plans_of_the_first_release_still_build_the_same_head():
    from nnunet_mtl.seams.heads import head_config_from_dict
    old = {"num_classes": 3, "hidden": 16, "embed_dim": 8, "dropout": 0.2, "guided_dim": 4}  # no kind
    config = head_config_from_dict(old)
    assert config.kind == "bottleneck_mlp" and config.guided_dim == 4
    with pytest.raises(KeyError, match="head kind 'nope' is not registered"):
        head_config_from_dict({"kind": "nope", "num_classes": 2})
    with pytest.raises(KeyError, match="parameter.*width"):
        head_config_from_dict({**old, "width": 3})


def test_batch_context_reads_the_case_table():
    import pandas as pd
    from nnunet_mtl.dataset.case_table import CaseTable
    cases = pd.DataFrame({"case_id": ["a", "b", "c"], "split": "train", "class": ["benign", "malignant", "benign"],
                          "patient_id": ["p1", "p1", "p2"], "mask": ["full", "none", "box"]})
    table = CaseTable(cases, {"benign": 0, "malignant": 1})
    table.add("radiomics", {"a": np.array([1.0, 2.0]), "b": np.array([np.nan, np.nan]), "c": np.array([0.0, 1.0])})
    batch = Batch(data=torch.zeros(2, 1, 4, 4), target=torch.zeros(2, 1, 4, 4), keys=["c", "a"], cases=table)
    assert batch.case("class").tolist() == [0, 0] and batch.case("class").dtype == torch.long
    assert batch.case("mask").tolist() == [1, 0]  # box, full
    assert batch.case("radiomics").shape == (2, 2) and batch.case("radiomics").dtype == torch.float32
    with pytest.raises(KeyError, match="no column 'texture'"):
        batch.case("texture")
    with pytest.raises(ValueError, match="no value for 1 case"):
        table.add("x", {"a": 1, "b": 2})


def test_the_thyroid_paper_schedule_builds_adamw(nnunet_env):
    """Salama et al. 2026, Sec. 3: AdamW lr 1e-4 (weight decay: PyTorch's default 1e-2, our choice), batch 8,
    500 x 250 / 50 iterations; the RLAR defaults lambda_adv 0.1 at the bottleneck, w_clin 0.1."""
    from nnunet_mtl.trainers import nnUNetTrainerRLAR_mid_paper, nnUNetTrainerRLAR_paper
    trainer = make_trainer(nnunet_env, nnUNetTrainerRLAR_paper)
    trainer.initialize()
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-2)
    assert trainer.batch_size == 8
    schedule = (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch)
    assert schedule == (500, 250, 50)
    assert (trainer.backward_rule.layer, trainer.backward_rule.adv_weight) == ("bottleneck", 0.1)
    assert trainer.base_loss_weights == {"seg": 1.0, "cls": 1.0, "clin": 0.1}
    from nnunet_mtl.trainers.mtl import merged_along_mro
    assert nnUNetTrainerRLAR_mid_paper.backward.layer == "mid"
    assert (merged_along_mro(nnUNetTrainerRLAR_mid_paper, "schedule")
            == merged_along_mro(nnUNetTrainerRLAR_paper, "schedule"))
    plain = make_trainer(nnunet_env, nnUNetTrainerMTL)  # nnU-Net's own optimizer otherwise
    plain.initialize()
    assert type(plain.optimizer) is torch.optim.SGD and plain.optimizer.param_groups[0]["weight_decay"] == 3e-5
    assert plain.optimizer.defaults["momentum"] == 0.99 and plain.optimizer.defaults["nesterov"]


def test_one_stage_is_nnunets_poly_learning_rate():
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunet_mtl.seams.stages import StagedLRScheduler, resolve_stages
    ours = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    a = StagedLRScheduler(ours, 0.01, resolve_stages([Stage("all")], 7))
    b = PolyLRScheduler(theirs, 0.01, 7)
    for epoch in range(7):
        a.step(epoch), b.step(epoch)
        assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"]


def test_stages_tile_the_epochs_or_say_why():
    from nnunet_mtl.seams.stages import resolve_stages, stage_at
    spans = resolve_stages([Stage("a", epochs=0.3), Stage("b", epochs=2), Stage("c")], 10)
    assert [(s.start, s.end) for s in spans] == [(0, 3), (3, 5), (5, 10)]
    assert stage_at(spans, 4).stage.name == "b" and stage_at(spans, 12).stage.name == "c"
    assert [(s.start, s.end) for s in resolve_stages([Stage("a", epochs=0.3), Stage("b")], 2)] == [(0, 1), (1, 2)]
    for stages, message in [([Stage("a"), Stage("b")], "not the last stage"),
                            ([Stage("a", epochs=4)], "cover 4 epochs but num_epochs is 10"),
                            ([Stage("a", epochs=8), Stage("b", epochs=5), Stage("c")], "need more than"),
                            ([Stage("a", epochs=1.5), Stage("b")], "fraction"),
                            ([Stage("a"), Stage("a")], "must differ")]:
        with pytest.raises(ValueError, match=message):
            resolve_stages(stages, 10)


def _copy_many(sources: list, target: str, n: int) -> None:
    from nnunet_mtl.dataset.case_table import copy_if_changed
    for i in range(n):  # alternate the contents, so that every call really copies
        copy_if_changed(Path(sources[i % 2]), Path(target))


def test_cases_csv_copies_never_show_a_half_written_file(tmp_path):
    """Two folds started at once copy cases.csv beside the preprocessed data: a reader sees one whole file or none."""
    import multiprocessing as mp
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("case_id,split,class,patient_id\n" + "x,train,benign,p\n" * 20000)
    b.write_text("case_id,split,class,patient_id\n" + "y,train,malignant,q\n" * 20000)
    target = tmp_path / "pre" / "cases.csv"
    target.parent.mkdir()
    ctx = mp.get_context("fork")
    writers = [ctx.Process(target=_copy_many, args=(order, str(target), 80)) for order in ([str(a), str(b)],
                                                                                          [str(b), str(a)])]
    for w in writers:
        w.start()
    whole = {a.read_bytes(), b.read_bytes()}
    seen = 0
    while any(w.is_alive() for w in writers):
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            continue
        assert data in whole
        seen += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert seen > 0 and not list(target.parent.glob(".cases.csv.*"))  # no temporary file left behind


def test_methods_and_seams_import_nothing_of_nnunet():
    """The losses are pure functions: the methods (every module), the seams and the case table load without
    nnunetv2."""
    code = ("import sys, importlib, pkgutil, nnunet_mtl.methods, nnunet_mtl.seams, nnunet_mtl.dataset.case_table; "
            "[importlib.import_module('nnunet_mtl.methods.' + m.name) for m in pkgutil.iter_modules("
            "nnunet_mtl.methods.__path__)]; "
            "assert 'nnunet_mtl.methods.rlar' in sys.modules and 'nnunet_mtl.methods.lesion_aware' in sys.modules; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nnunetv2', 'dynamic_network_architectures', "
            "'batchgenerators', 'batchgeneratorsv2')); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_head_module_imported_again_registers_again():
    """nnU-Net's lookup drops the modules of an nnUNet_extTrainer folder after each lookup and imports them anew
    at the next (predict --per-fold looks up once per fold): the same class again is no conflict."""
    from nnunet_mtl.seams.heads import HEADS
    source = ("from dataclasses import dataclass\nfrom typing import ClassVar\n"
              "from nnunet_mtl.seams import Head, HeadConfig, register_head\n"
              "@dataclass(kw_only=True)\nclass C(HeadConfig):\n    kind: ClassVar[str] = 'test_reimported'\n"
              "@register_head\nclass H(Head):\n    config_class = C\n")
    import types

    def import_module(name):  # what importing a fresh copy of a module does
        module = types.ModuleType(name)
        sys.modules[name] = module
        try:
            exec(compile(source, f"{name}.py", "exec"), module.__dict__)
        finally:
            del sys.modules[name]

    import_module("user_trainers")
    import_module("user_trainers")
    first = HEADS["test_reimported"]
    with pytest.raises(ValueError, match="registered twice"):
        import_module("other_module")
    assert HEADS["test_reimported"] is first


def test_partially_annotated_cases_need_the_ignore_label_and_terms_that_know_them(nnunet_env):
    import pandas as pd
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunet_mtl.dataset.case_table import CaseTable
    from nnunet_mtl.dataset.contract import PARTIAL_LABELS
    trainer = make_trainer(nnunet_env, nnUNetTrainerMTL_tiny)
    trainer.do_split()
    trainer._check_mask_annotation()  # all full: nothing to say
    frame = pd.DataFrame({"case_id": trainer.cases.keys(), "split": "train",
                          "class": [trainer.class_names[c]
                                    for c in trainer.cases.values("class", trainer.cases.keys())],
                          "patient_id": trainer.cases.values("patient_id", trainer.cases.keys())})
    frame["mask"] = "full"
    frame.loc[frame["case_id"] == trainer._train_keys[0], "mask"] = "box"
    trainer.cases = CaseTable(frame, trainer.class_labels)
    # without the ignore label in dataset.json, the box would be trained as a lesion-free image
    with pytest.raises(SystemExit, match=f"1 training case.*{trainer._train_keys[0]}: 'box'.*no ignore label"):
        trainer._check_mask_annotation()
    trainer.label_manager = LabelManager(PARTIAL_LABELS, regions_class_order=None)
    trainer._check_mask_annotation()  # nnU-Net's loss and the class loss know the ignore label: accepted
    trainer.terms.append(MaskArea())  # reads the soft mask without knowing which pixels are annotated
    with pytest.raises(SystemExit, match="its term\\(s\\) area would read them"):
        trainer._check_mask_annotation()
    trainer.terms[-1] = type("Partial", (MaskArea,), {"partial_masks": True})()
    trainer._check_mask_annotation()  # a term that knows partial masks: accepted


def test_a_rule_taking_encoder_gradients_refuses_a_stage_freezing_the_encoder(nnunet_env):
    from nnunet_mtl.trainers import nnUNetTrainerRLAR_tiny

    class FrozenEncoder(nnUNetTrainerRLAR_tiny):
        stages = (Stage("head", epochs=1, trainable=("decoder", "head")), Stage("all"))

    trainer = make_trainer(nnunet_env, FrozenEncoder)
    trainer.initialize()
    with pytest.raises(SystemExit, match="stage 'head' freezes part of the encoder.*RLAR"):
        trainer._check_stages_against_rule(trainer._stage_plan())


def test_a_checkpoint_from_before_a_key_existed_resumes_in_step():
    from nnunet_mtl.trainers.progress_logger import MultitaskLocalLogger
    logger = MultitaskLocalLogger(term_names=("seg", "cls"))
    old = {k: [0.5, 0.4, 0.3] for k in ("train_losses", "val_losses", "train_seg_losses", "train_cls_losses",
                                        "val_cls_losses", "mean_fg_dice", "ema_fg_dice", "lrs",
                                        "epoch_start_timestamps", "epoch_end_timestamps", "val_auc", "val_macro_f1",
                                        "val_balanced_accuracy", "mtl_score", "ema_mtl_score")}
    old["dice_per_class_or_region"] = [[0.5]] * 3
    logger.load_checkpoint(old)
    log = logger.my_fantastic_logging
    assert log["stage"] == [0, 0, 0] and len(log["val_seg_losses"]) == 3 and np.isnan(log["val_seg_losses"]).all()
    logger.log("stage", 0, 3)
    assert len(log["stage"]) == 4


def _logged(term_names, extra_keys=(), epochs=3):
    keys = ("train_losses", "val_losses", "mean_fg_dice", "ema_fg_dice", "lrs", "val_auc", "val_macro_f1",
            "val_balanced_accuracy", "mtl_score", "ema_mtl_score")
    log = {k: [0.5, 0.4, 0.3][:epochs] for k in keys}
    log.update(epoch_start_timestamps=[0.0, 10.0, 20.0][:epochs], epoch_end_timestamps=[9.0, 19.0, 29.0][:epochs],
               stage=[0] * epochs)
    for name in term_names:
        scale = 20.0 if name == "clin" else 0.5
        log.update({f"train_{name}_losses": [scale, scale * 0.9, scale * 0.8][:epochs],
                    f"val_{name}_losses": [scale, scale * 0.95, scale * 0.85][:epochs]})
    log.update({k: [0.2, 0.3, 0.4][:epochs] for k in extra_keys})
    return log


def test_progress_png_gives_a_large_loss_term_its_own_axis_and_keeps_legends_off_the_curves(tmp_path):
    """Salama et al.'s guidance loss (8-25) on the tasks' axis would flatten them (below 1): it gets a panel of its
    own, log-scaled, with the RLAR penalty on a second axis; every legend lies outside its panel."""
    from nnunet_mtl.trainers.progress_logger import MultitaskLocalLogger, progress_figure
    fig = progress_figure(_logged(("seg", "cls", "clin"), ["train_rlar_penalty"]), ("seg", "cls", "clin"),
                          ["train_rlar_penalty"])
    fig.canvas.draw()
    panels = [a for a in fig.axes if a.get_title(loc="left")]
    assert len(panels) == 5
    labels = [{line.get_label() for line in a.get_lines()} for a in fig.axes]
    tasks = next(lab for lab in labels if "loss_tr seg" in lab)
    assert "loss_tr cls" in tasks and not any("clin" in lab for lab in tasks)
    other = panels[1]
    assert {line.get_label() for line in other.get_lines()} == {"loss_tr clin", "loss_val clin"}
    assert other.get_yscale() == "log" and max(other.get_ylim()) < 30
    assert any("train_rlar_penalty" in lab for lab in labels)
    for a in panels[:3]:  # the duration and learning-rate panels have one curve and no legend
        legend = a.get_legend()
        assert legend is not None
        inside = a.get_window_extent()
        box = legend.get_window_extent()
        assert box.y1 <= inside.y0, a.get_title(loc="left")  # under the panel, not over its curves
    import matplotlib.pyplot as plt
    plt.close(fig)
    # seg and cls only: four panels, and the logger writes the file
    fig = progress_figure(_logged(("seg", "cls")), ("seg", "cls"))
    assert len([a for a in fig.axes if a.get_title(loc="left")]) == 4 and len(fig.axes) == 5  # + the Dice twin
    plt.close(fig)
    logger = MultitaskLocalLogger(term_names=("seg", "cls", "clin"))
    logger.my_fantastic_logging = _logged(("seg", "cls", "clin"))
    logger.plot_progress_png(str(tmp_path))
    assert (tmp_path / "progress.png").stat().st_size > 10_000


def test_pretrained_finds_a_users_trainer_in_an_ext_folder(tmp_path, monkeypatch):
    from nnunet_mtl.cli.pretrained import head_config_for
    from nnunet_mtl.paths import ext_trainer_dir
    (tmp_path / "my_trainers.py").write_text(
        "from nnunet_mtl.trainers import nnUNetTrainerMTL\n"
        "from nnunet_mtl.methods.multitask import BottleneckMLPConfig\n"
        "class nnUNetTrainerMine(nnUNetTrainerMTL):\n    head = BottleneckMLPConfig(embed_dim=32)\n")
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join([str(ext_trainer_dir()), str(tmp_path)]))
    assert head_config_for("nnUNetTrainerMine", {"a": 0, "b": 1}).embed_dim == 32


def test_the_decoder_part_is_the_decoder_without_its_encoder_reference():
    """nnU-Net's decoder holds the encoder (decoder.encoder.* in the state_dict): freezing the decoder must not
    freeze the encoder, and the three parts cover every parameter once."""
    net = small_net()
    encoder = {id(p) for p in net.part_parameters("encoder")}
    decoder = {id(p) for p in net.part_parameters("decoder")}
    head = {id(p) for p in net.part_parameters("head")}
    assert decoder and not encoder & decoder and not head & (encoder | decoder)
    assert encoder | decoder | head == {id(p) for p in net.parameters()}
    assert len(net.part_parameters("head.classifier")) == 2
    with pytest.raises(KeyError, match="no part 'neck'"):
        net.part("neck")


class TrainerStoppingEarly(nnUNetTrainerMTL_tiny):
    selection = "val_loss"
    schedule = {"num_epochs": 3, "early_stopping_patience": 0}


def test_selection_by_validation_loss_and_early_stopping_survive_a_resume(nnunet_env):
    trainer = train(nnunet_env, TrainerStoppingEarly)
    final = checkpoint(trainer)
    assert final["current_epoch"] == 1 and len(final["logging"]["val_losses"]) == 1
    assert final["_best_ema"] == pytest.approx(-final["logging"]["val_losses"][0])
    text = log_text(trainer)
    loss = final["logging"]["val_losses"][0]
    assert f"New best (lowest validation loss (the weighted total)): {np.round(loss, 4)}" in text  # signed
    assert "early stopping: the lowest validation loss (the weighted total) has not improved for 0 epochs" in text
    resumed = make_trainer(nnunet_env, TrainerStoppingEarly)
    resumed.load_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))  # nnUNetv2_train --c
    resumed.run_training()
    assert len(checkpoint(resumed)["logging"]["val_losses"]) == 1  # stopped runs stay stopped


def test_early_stopping_counts_epochs_since_the_best_selectable_score(nnunet_env):
    trainer = make_trainer(nnunet_env, TrainerInStages)  # stage 1 (epoch 0) is not selectable
    trainer.selection, trainer.early_stopping_patience = "val_loss", 2
    log = trainer.logger.local_logger.my_fantastic_logging
    log["val_losses"], log["stage"] = [0.1, 0.9, 0.5, 0.6], [0, 1, 1, 1]
    log["ema_mtl_score"] = [0.0] * 4
    assert trainer.early_stop_reason() is None  # best selectable epoch 2, one epoch ago
    log["val_losses"].append(0.7), log["stage"].append(1), log["ema_mtl_score"].append(0.0)
    assert "not improved for 2 epochs (best at epoch 2" in trainer.early_stop_reason()


class TrainerRefusedAtStart(nnUNetTrainerMTL):
    """Its results folder does not exist before the test."""


@pytest.mark.parametrize("text, needle", [('[{"train": ["x"], "val": ', "is not readable JSON"),
                                          ('[{"train": ["nope"], "val": ["nope"]}]', "not in the preprocessed")])
def test_a_bad_split_file_is_refused_at_start_and_leaves_no_results_folder(nnunet_env, capsys, text, needle):
    """Issue 13: nnUNetv2_train with a truncated splits_final.json raised JSONDecodeError from nnU-Net's do_split
    (or trained on cases that do not exist), after nnU-Net had made the results folder and its log."""
    splits = next((nnunet_env / "nnUNet_preprocessed").glob("Dataset503_*")) / "splits_final.json"
    results = next((nnunet_env / "nnUNet_results").glob("Dataset503_*"), None)
    before = splits.read_bytes() if splits.exists() else None
    splits.write_text(text)
    try:
        with pytest.raises(SystemExit) as e:
            make_trainer(nnunet_env, TrainerRefusedAtStart)
    finally:
        splits.unlink()
        if before is not None:
            splits.write_bytes(before)
    message = str(e.value.code)
    assert message.startswith("nnunet_mtl: error: ") and needle in message and "\n" not in message
    assert not list((nnunet_env / "nnUNet_results").rglob("TrainerRefusedAtStart*"))
    if results is None:  # the dataset's results folder was made by nnU-Net for this trainer alone: gone again
        assert not list((nnunet_env / "nnUNet_results").glob("Dataset503_*"))


def test_selection_ema_smooths_restarts_per_stage_and_survives_an_undefined_epoch():
    from nnunet_mtl.trainers.mtl import selection_ema
    assert selection_ema([], 0.5, restart=False) == 0.5
    assert selection_ema([0.5], 0.9, restart=False) == pytest.approx(0.54)  # nnU-Net's 0.9 old + 0.1 new
    assert selection_ema([0.5], 0.9, restart=True) == 0.9  # a new stage starts its own EMA
    # a partially annotated validation epoch without an annotated lesion pixel: the pseudo Dice is NaN
    assert selection_ema([0.5, 0.54], float("nan"), restart=False) == 0.54
    assert np.isnan(selection_ema([], float("nan"), restart=False))
    assert selection_ema([0.5, float("nan")], 0.7, restart=False) == 0.7  # and the next defined epoch starts again


@pytest.mark.parametrize("suffix, schedule", [("breastpaper", "BreastPaperSchedule"), ("fanpaper", "FanPaperSchedule"),
                                              ("cpu", "CPUSchedule"), ("paper", "ThyroidPaperSchedule")])
def test_each_papers_baselines_train_on_that_papers_schedule(suffix, schedule):
    """A paper recipe's baselines sit next to its method under the same schedule: SegOnly / ClsOnly / MTL with the
    breast (Zhang, Moradi, Saha), lesion-aware (Fan et al.), thyroid (Salama et al. 2026) or CPU recipe's schedule,
    the same dict as the method's own variant, and nothing else of the trainer changed."""
    from nnunet_mtl import trainers
    from nnunet_mtl.trainers import schedules
    from nnunet_mtl.trainers.mtl import merged_along_mro
    wanted = getattr(schedules, schedule).schedule
    for base in ("nnUNetTrainerSegOnly", "nnUNetTrainerClsOnly", "nnUNetTrainerMTL"):
        variant = getattr(trainers, f"{base}_{suffix}")
        assert variant.__mro__[1] is getattr(schedules, schedule) and variant.__mro__[2] is getattr(trainers, base)
        merged = merged_along_mro(variant, "schedule")
        assert {k: merged[k] for k in wanted} == wanted
    method = {"breastpaper": "nnUNetTrainerBIRADS_paper", "fanpaper": "nnUNetTrainerLesionAware_paper",
              "cpu": "nnUNetTrainerBIRADS_cpu", "paper": "nnUNetTrainerRLAR_paper"}[suffix]
    assert merged_along_mro(getattr(trainers, method), "schedule") == merged_along_mro(
        getattr(trainers, f"nnUNetTrainerMTL_{suffix}"), "schedule")


class TrainerWithAreaToTensorBoard(TrainerWithArea):
    """Its own results folder: TensorBoard's event files of this test only."""


def test_tensorboard_receives_every_logged_value_per_epoch(nnunet_env, monkeypatch):
    """nnUNet_mtl_tensorboard=1: nnU-Net's values and ours (a new term, the classification curves, the selection
    score) reach TensorBoard's event files in fold_K/tensorboard, one value per epoch; a bad value of the variable
    is a one-line refusal before training."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nnunet_mtl.trainers.tensorboard_logger import TensorBoardLogger
    monkeypatch.setenv("nnUNet_mtl_tensorboard", "1")
    trainer = train(nnunet_env, TrainerWithAreaToTensorBoard)
    assert any(isinstance(logger, TensorBoardLogger) for logger in trainer.logger.loggers)
    events = EventAccumulator(str(Path(trainer.output_folder) / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in ("train_losses", "val_losses", "ema_fg_dice", "lrs", "train_area_losses", "val_cls_losses",
                "ema_mtl_score"):
        assert key in tags, key
        assert [e.step for e in events.Scalars(key)] == [0, 1], key
    logged = checkpoint(trainer)["logging"]
    assert [e.value for e in events.Scalars("train_area_losses")] == pytest.approx(logged["train_area_losses"])
    # an undefined value (the AUC of an epoch whose validation patches hold one class) is left out, not drawn as 0
    finite = [k for k, v in enumerate(logged["val_auc"]) if v == v]
    assert ([e.step for e in events.Scalars("val_auc")] if "val_auc" in tags else []) == finite
    assert "config/text_summary" in events.Tags()["tensors"]
    monkeypatch.setenv("nnUNet_mtl_tensorboard", "yes")
    with pytest.raises(SystemExit, match="nnUNet_mtl_tensorboard='yes'; expected 1"):
        make_trainer(nnunet_env, TrainerWithAreaToTensorBoard, fold=1)


def test_a_split_file_with_a_case_on_both_sides_is_refused_unless_allowed(nnunet_env, monkeypatch):
    """A hand-edited splits_final.json that validates a case it trains on: one line naming the fold and the case
    before training (nnU-Net alone warns and trains to the end); nnUNet_mtl_allow_split_leak=1 trains anyway."""
    from nnunet_mtl.dataset.splits import write_splits
    pre = next((nnunet_env / "nnUNet_preprocessed").glob("Dataset503_*"))
    path = pre / "splits_final.json"
    before = path.read_text() if path.is_file() else None
    trainer = make_trainer(nnunet_env, TrainerWithArea)
    trainer.initialize()
    try:
        trainer.do_split()  # writes the trainer's split when there is none yet
        splits = json.loads(path.read_text())
        leaked = splits[0]["val"][0]
        splits[0]["train"] = sorted(splits[0]["train"] + [leaked])
        write_splits(splits, path)
        with pytest.raises(SystemExit, match=rf"fold 0 has case\(s\) {leaked} in both train and val.*"
                                             rf"nnUNet_mtl_allow_split_leak=1"):
            trainer.do_split()
        monkeypatch.setenv("nnUNet_mtl_allow_split_leak", "1")
        train_keys, val_keys = trainer.do_split()
        assert leaked in train_keys and leaked in val_keys
        assert "WARNING: fold 0 has case(s)" in log_text(trainer)
    finally:
        if before is None:
            path.unlink()
        else:
            path.write_text(before)


def test_a_bad_case_table_is_named_by_the_raw_file_the_user_edits(nnunet_env):
    """The trainer reads a copy of cases.csv beside the preprocessed data; an unknown class is reported against
    nnUNet_raw's cases.csv, the file to fix, not against the copy."""
    import csv
    import io
    raw = next((nnunet_env / "nnUNet_raw").glob("Dataset503_*")) / "cases.csv"
    before = raw.read_text()
    rows = list(csv.DictReader(io.StringIO(before)))
    first_train = next(r for r in rows if r["split"] == "train")
    first_train["class"] = "cyst"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    raw.write_text(out.getvalue())
    try:
        with pytest.raises(SystemExit) as info:
            make_trainer(nnunet_env, TrainerWithArea)
        message = str(info.value)
        assert "'cyst'" in message and str(raw) in message and "nnUNet_preprocessed" not in message, message
    finally:
        raw.write_text(before)


def test_pretrained_weights_without_our_head_are_refused_with_the_command_that_adds_one(nnunet_env, tmp_path):
    """nnUNetv2_train -pretrained_weights PLAIN.pth: one line naming nnunet_mtl pretrained, before nnU-Net's
    'AssertionError: Key cls_head... is missing'; a checkpoint with our head passes."""
    from nnunet_mtl.networks.multitask_unet import HEAD_PREFIX
    from nnunet_mtl.seams.backward import unwrap
    from nnunet_mtl.trainers.mtl import pretrained_weights_argument
    trainer = make_trainer(nnunet_env, TrainerWithArea)
    trainer.initialize()
    state = unwrap(trainer.network).state_dict()
    plain, mine = tmp_path / "plain.pth", tmp_path / "mine.pth"
    torch.save({"network_weights": {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}}, plain)
    torch.save({"network_weights": state}, mine)
    with pytest.raises(SystemExit, match=rf"-pretrained_weights {plain} has no classification head.*nnunet_mtl "
                                         rf"pretrained -i {plain} -tr TrainerWithArea -d Dataset503_"):
        trainer._check_pretrained_weights(str(plain))
    trainer._check_pretrained_weights(str(mine))
    assert pretrained_weights_argument(["nnUNetv2_train", "1", "2d", "0", "-pretrained_weights", "x.pth"]) == "x.pth"
    assert pretrained_weights_argument(["nnUNetv2_train", "1", "2d", "0"]) is None
