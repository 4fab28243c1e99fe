"""The plans name each head's and each loss module's class by import path (nnunet_mtl.seams.heads,
nnunet_mtl.seams.import_paths): rebuilding imports just that module (installed, or in a folder of
nnUNet_extTrainer), plans written before the paths keep loading by kind, and a path that cannot be imported is one
line. The rebuilds run in fresh processes, so that no class registered by an earlier import can make them pass."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnunet_mtl.errors import NnunetMtlError

HEAD_MODULE = '''
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from nnunet_mtl.seams import Head, HeadConfig, register_head, register_loss_module


@dataclass(kw_only=True)
class ExtConfig(HeadConfig):
    kind: ClassVar[str] = "test_ext_head"
    hidden: int = 4


@register_head
class ExtHead(Head):
    config_class = ExtConfig

    def __init__(self, encoder_channels, config):
        super().__init__(encoder_channels, config)
        self.mlp = nn.Linear(encoder_channels[-1], config.hidden)
        self.classifier = nn.Linear(config.hidden, config.num_classes)

    def forward(self, skips):
        h = self.mlp(skips[-1].flatten(2).mean(-1))
        return {"logits": self.classifier(h), "embedding": h}


@register_loss_module("test_ext_prior")
class ExtPrior(nn.Module):
    def __init__(self, init: float = 0.0):
        super().__init__()
        self.u = nn.Parameter(torch.tensor(float(init)))
'''

TRAINER_MODULE = '''
from ext_heads import ExtConfig
from nnunet_mtl.seams import LossTerm
from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL


class PriorTerm(LossTerm):
    name, task, acts_on = "prior", False, ("loss_module",)

    def loss_modules(self):
        return {"prior": {"kind": "test_ext_prior", "init": 0.5}}

    def __call__(self, outputs, batch):
        return batch.loss_module("prior").u ** 2


class nnUNetTrainerExtHead(nnUNetTrainerMTL):
    head = ExtConfig(hidden=6)
    terms = (*nnUNetTrainerMTL.terms, PriorTerm())
    loss_weights = {"prior": 0.1}
'''

# the plans of nnUNetTrainerExtHead, written the way the trainer writes them (found by nnU-Net's own lookup)
WRITE_PLANS = '''
import json, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
trainer = recursive_find_trainer_class_by_name("nnUNetTrainerExtHead")
head = trainer.head_config(3).to_dict()
assert "ext_heads" not in sys.modules and "ext_trainers" not in sys.modules  # nnU-Net dropped them
json.dump({"nnunet_mtl": {"head": head, "class_labels": {"a": 0, "b": 1, "c": 2}}}, open(sys.argv[1], "w"))
'''

# a fresh process rebuilds the head from the plans alone: no trainer lookup, no nnU-Net, no method module
REBUILD = '''
import json, sys
import torch
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.networks.multitask_unet import head_config_from_plans
from nnunet_mtl.seams.heads import build_head
try:
    config = head_config_from_plans(json.load(open(sys.argv[1])), source=sys.argv[1])
except NnunetMtlError as e:
    print("ERROR", e)
    sys.exit(3)
head = build_head(config, [8, 16, 32, 32])
out = head([torch.zeros(2, c, 4, 4) for c in (8, 16, 32, 32)])
print(json.dumps({"head": type(head).__module__ + ":" + type(head).__qualname__,
                  "prior": type(head.loss_modules["prior"]).__qualname__, "hidden": config.hidden,
                  "prior_u": float(head.loss_modules["prior"].u), "logits": list(out["logits"].shape),
                  "loaded": sorted(m for m in sys.modules if m.startswith(("ext_", "nnunetv2", "nnunet_mtl.methods",
                                                                           "nnunet_mtl.trainers")))}))
'''


def run_python(code: str, *args: str, ext: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    if ext is not None:
        env["nnUNet_extTrainer"] = str(ext)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[1], timeout=300)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def ext_plans(tmp_path_factory) -> tuple[Path, Path]:
    """(the nnUNet_extTrainer folder holding ext_heads.py and ext_trainers.py, the plans written for its trainer)."""
    root = tmp_path_factory.mktemp("ext")
    folder = root / "user_trainers"
    folder.mkdir()
    (folder / "ext_heads.py").write_text(HEAD_MODULE)
    (folder / "ext_trainers.py").write_text(TRAINER_MODULE)
    plans = root / "plans.json"
    result = run_python(WRITE_PLANS, str(plans), ext=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder, plans


def test_the_plans_name_the_head_and_loss_module_classes(ext_plans):
    _, plans = ext_plans
    head = json.loads(plans.read_text())["nnunet_mtl"]["head"]
    assert head == {"kind": "test_ext_head", "import_path": "ext_heads:ExtHead", "num_classes": 3, "hidden": 6,
                    "loss_modules": {"prior": {"kind": "test_ext_prior", "init": 0.5,
                                               "import_path": "ext_heads:ExtPrior"}}}


def test_a_head_under_nnUNet_extTrainer_is_rebuilt_from_the_plans_alone(ext_plans):
    folder, plans = ext_plans
    rebuilt = last_json(run_python(REBUILD, str(plans), ext=folder))
    assert rebuilt["head"] == "ext_heads:ExtHead" and rebuilt["prior"] == "ExtPrior"
    assert rebuilt["hidden"] == 6 and rebuilt["prior_u"] == 0.5 and rebuilt["logits"] == [2, 3]
    # just the head's module was imported, and dropped again as nnU-Net's lookup drops it; no method, no nnU-Net
    assert rebuilt["loaded"] == []


def test_a_path_that_cannot_be_imported_is_one_line_naming_it_and_the_plans(ext_plans):
    _, plans = ext_plans
    result = run_python(REBUILD, str(plans))  # nnUNet_extTrainer unset: ext_heads is nowhere
    assert result.returncode == 3, result.stdout + result.stderr
    line = result.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("ERROR head class 'ext_heads:ExtHead'")
    for needle in ("(kind 'test_ext_head')", str(plans), "No module named 'ext_heads'", "nnUNet_extTrainer"):
        assert needle in line, (needle, line)


def test_unimportable_paths_in_process():
    from nnunet_mtl.seams.heads import head_config_from_dict
    with pytest.raises(NnunetMtlError) as info:
        head_config_from_dict({"kind": "test_nowhere", "import_path": "no_such_module_for_tests:Head",
                               "num_classes": 2}, source="/models/x/plans.json")
    message = str(info.value)
    assert isinstance(info.value, KeyError) and "\n" not in message  # a KeyError too: the trainer's one-line catch
    assert message.startswith("head class 'no_such_module_for_tests:Head' (kind 'test_nowhere') named in "
                              "/models/x/plans.json cannot be imported")
    section = {"kind": "bottleneck_mlp", "import_path": "nnunet_mtl.methods.multitask:BottleneckMLPHead",
               "num_classes": 2, "loss_modules": {"p": {"kind": "test_gone", "import_path": "torch.nn:NoSuchThing"}}}
    with pytest.raises(NnunetMtlError, match=r"^loss module 'p': loss module class 'torch.nn:NoSuchThing' \(kind "
                                             r"'test_gone'\) named in the plans .* has no NoSuchThing"):
        head_config_from_dict(section)
    # importable, but not the class registered under the kind
    with pytest.raises(NnunetMtlError, match="not registered under that kind once imported; expected a class "
                                             "decorated with @register_head"):
        head_config_from_dict({"kind": "test_other", "import_path": "torch.nn:Linear", "num_classes": 2})
    with pytest.raises(NnunetMtlError, match="not of the form module:qualname"):
        head_config_from_dict({"kind": "test_other", "import_path": "torch.nn.Linear", "num_classes": 2})


def test_the_trainer_turns_an_unimportable_path_into_one_line():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
    from tests.network_helpers import make_plans
    plans = make_plans()
    plans["nnunet_mtl"]["head"]["import_path"] = "gone_module_for_tests:Head"
    manager = PlansManager(plans)
    with pytest.raises(SystemExit, match="nnunet_mtl: error: head class 'gone_module_for_tests:Head' .*cannot be "
                                         "imported"):
        nnUNetTrainerMTL.build_network_architecture(manager, manager.get_configuration("2d"), 1, 2)


def test_the_declared_config_round_trips_through_the_plans():
    from nnunet_mtl.methods.birads_consistency import BIRADSConsistency
    from nnunet_mtl.methods.multitask import BottleneckMLPConfig
    from nnunet_mtl.seams.heads import head_config_from_dict
    config = BottleneckMLPConfig(num_classes=2, hidden=16, embed_dim=8, loss_modules=BIRADSConsistency().loss_modules())
    stored = json.loads(json.dumps(config.to_dict()))  # as plans.json holds it
    assert stored["import_path"] == "nnunet_mtl.methods.multitask:BottleneckMLPHead"
    assert stored["loss_modules"]["birads_prior"]["import_path"] == "nnunet_mtl.methods.birads_consistency:BIRADSPrior"
    assert head_config_from_dict(stored) == config  # the paths are not part of the config


# ---------------------------------------------------------------------------------------- plans written before
# the nnunet_mtl sections of plans.json as trainers wrote them before import paths were stored (kind only)
PLANS_WITHOUT_PATHS = {
    "birads": {"kind": "bottleneck_mlp", "num_classes": 2, "loss_modules": {
        "birads_prior": {"kind": "birads_prior", "init_weights": [0.15, 0.35, 0.25, 0.25], "momentum": 0.99}},
        "hidden": 256, "embed_dim": 128, "dropout": 0.2, "guided_dim": 0},
    "uncertainty": {"kind": "bottleneck_mlp", "num_classes": 3, "loss_modules": {
        "uncertainty": {"kind": "log_variances", "tasks": ["seg", "cls"]}},
        "hidden": 256, "embed_dim": 128, "dropout": 0.2, "guided_dim": 13},
    "lesion_aware": {"kind": "lesion_aware", "num_classes": 2, "loss_modules": {}, "stages": 4, "width": 0,
                     "reduction": 16, "spatial_kernel": 7, "channel_attention": True, "spatial_attention": True,
                     "mask_attention": True},
    "seg_only": {"kind": "none", "num_classes": 2, "loss_modules": {}},
    "first_release": {"num_classes": 3, "hidden": 16, "embed_dim": 8, "dropout": 0.2, "guided_dim": 4},
}

REBUILD_OLD = '''
import json, sys
BROKEN = sys.argv[2]
if BROKEN:
    sys.modules[BROKEN] = None  # importing it now raises ImportError, as a method module with a broken import would
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.networks.multitask_unet import head_config_from_plans
from nnunet_mtl.seams.heads import build_head
result = {}
for name, section in json.loads(sys.argv[1]).items():
    try:
        head = build_head(head_config_from_plans({"nnunet_mtl": {"head": section}}), [8, 16, 32, 32])
    except NnunetMtlError as e:
        result[name] = "ERROR " + str(e)
        continue
    result[name] = [type(head).__qualname__, {k: type(m).__qualname__ for k, m in head.loss_modules.items()},
                    sorted(m for m, module in sys.modules.items() if module and m.startswith("nnunet_mtl.methods."))]
print(json.dumps(result))
'''


def test_plans_written_before_import_paths_rebuild_by_kind_in_a_fresh_process():
    rebuilt = last_json(run_python(REBUILD_OLD, json.dumps(PLANS_WITHOUT_PATHS), ""))
    assert rebuilt["birads"][:2] == ["BottleneckMLPHead", {"birads_prior": "BIRADSPrior"}]
    assert rebuilt["uncertainty"][:2] == ["BottleneckMLPHead", {"uncertainty": "LogVariances"}]
    assert rebuilt["lesion_aware"][:2] == ["LesionAwareHead", {}]
    assert rebuilt["seg_only"][:2] == ["NoHead", {}]
    assert rebuilt["first_release"][:2] == ["BottleneckMLPHead", {}]
    # each rebuild imported only the modules its kinds are defined in (the first: multitask and birads_consistency)
    assert rebuilt["birads"][2] == ["nnunet_mtl.methods.birads_consistency", "nnunet_mtl.methods.multitask"]


def test_a_method_module_that_fails_to_import_breaks_only_the_models_that_use_it():
    rebuilt = last_json(run_python(REBUILD_OLD, json.dumps(PLANS_WITHOUT_PATHS), "nnunet_mtl.methods.lesion_aware"))
    for name in ("birads", "uncertainty", "seg_only", "first_release"):
        assert not str(rebuilt[name]).startswith("ERROR"), (name, rebuilt[name])
    message = rebuilt["lesion_aware"]
    assert message.startswith("ERROR head kind 'lesion_aware' of the plans") and "\n" not in message
    assert "nnunet_mtl.methods.lesion_aware:LesionAwareHead, which cannot be imported" in message


def test_new_plans_rebuild_in_a_fresh_process_importing_only_their_modules():
    from nnunet_mtl.methods.lesion_aware import LesionAwareConfig
    section = LesionAwareConfig(num_classes=2).to_dict()
    assert section["import_path"] == "nnunet_mtl.methods.lesion_aware:LesionAwareHead"
    rebuilt = last_json(run_python(REBUILD_OLD, json.dumps({"new": section}), "nnunet_mtl.methods.multitask"))
    assert rebuilt["new"] == ["LesionAwareHead", {}, ["nnunet_mtl.methods.lesion_aware"]]


def test_the_ext_trainer_module_name_is_looked_up_only_where_the_module_itself_is_missing(tmp_path, monkeypatch):
    """A module that exists but fails on a missing import of its own reports that import, not a search."""
    from nnunet_mtl.seams.import_paths import import_class
    (tmp_path / "needs_missing_dep.py").write_text(textwrap.dedent("""
        import a_dependency_that_is_not_installed
        class Thing:
            pass
    """))
    monkeypatch.setenv("nnUNet_extTrainer", str(tmp_path))
    with pytest.raises(ImportError, match="No module named 'a_dependency_that_is_not_installed'"):
        import_class("needs_missing_dep:Thing")
    assert "needs_missing_dep" not in sys.modules and str(tmp_path) not in sys.path
    (tmp_path / "plain_module.py").write_text("class Thing:\n    pass\n")
    assert import_class("plain_module:Thing").__qualname__ == "Thing"
    assert "plain_module" not in sys.modules and str(tmp_path) not in sys.path
