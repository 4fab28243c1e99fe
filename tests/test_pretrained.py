"""`nnunet_mtl pretrained`: a plain nnU-Net checkpoint becomes loadable by nnU-Net's own -pretrained_weights."""
import json

import pytest
import torch
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

from nnunet_mtl.cli.pretrained import add_head_to_checkpoint, head_config_for
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.methods.multitask import BottleneckMLPConfig
from nnunet_mtl.networks.multitask_unet import MultitaskUNet
from tests.network_helpers import make_unet

CONFIG = BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8, guided_dim=4)


def plain_checkpoint(tmp_path):
    torch.manual_seed(1)
    unet = make_unet()
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": unet.state_dict(), "trainer_name": "nnUNetTrainer"}, path)
    return path, unet


def test_plain_checkpoint_is_refused_by_nnunet_and_accepted_after_adding_the_head(tmp_path):
    source, unet = plain_checkpoint(tmp_path)
    torch.manual_seed(2)
    net = MultitaskUNet(make_unet(), CONFIG)
    with pytest.raises(AssertionError, match="cls_head"):  # why the command exists
        load_pretrained_weights(net, str(source))
    out = tmp_path / "with_head.pth"
    assert add_head_to_checkpoint(source, out, CONFIG) == len(net.cls_head.state_dict())
    load_pretrained_weights(net, str(out))
    pretrained = unet.state_dict()
    for key, value in net.state_dict().items():
        if key.startswith(("encoder.", "decoder.")) and ".seg_layers." not in key:
            assert torch.equal(value, pretrained[key]), key
    assert torch.load(out, weights_only=False)["trainer_name"] == "nnUNetTrainer"  # the rest is copied


def test_head_shape_follows_the_trainer():
    labels = {"TR1": 0, "TR2": 1, "TR3": 2, "TR4": 3, "TR5": 4}
    rlar = head_config_for("nnUNetTrainerRLAR", labels)
    assert (rlar.num_classes, rlar.embed_dim, rlar.guided_dim) == (5, 128, 13)
    assert head_config_for("nnUNetTrainerMTL", labels).guided_dim == 0
    with pytest.raises(NnunetMtlError, match="not an nnunet_mtl trainer"):
        head_config_for("nnUNetTrainer", labels)


def test_an_unknown_trainer_is_one_line_without_nnunets_lookup_chatter(capsys):
    """nnU-Net's trainer lookup prints where it searched (seven lines) before it gives up: not shown to the user,
    whose one line says what was expected."""
    with pytest.raises(NnunetMtlError, match="'nnUNetTrainerNope' is not an nnunet_mtl trainer"):
        head_config_for("nnUNetTrainerNope", {"a": 0, "b": 1})
    assert capsys.readouterr().out == ""


def test_checkpoint_with_a_head_is_refused_with_a_clear_line(tmp_path):
    source, _ = plain_checkpoint(tmp_path)
    once = tmp_path / "once.pth"
    add_head_to_checkpoint(source, once, CONFIG)
    with pytest.raises(NnunetMtlError, match="already has a classification head"):
        add_head_to_checkpoint(once, tmp_path / "twice.pth", CONFIG)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(NnunetMtlError, match="cannot be read as a checkpoint"):
        add_head_to_checkpoint(tmp_path / "junk.pth", tmp_path / "x.pth", CONFIG)


def test_pretrained_command(tmp_path, monkeypatch, capsys):
    from nnunet_mtl.cli.main import main
    source, _ = plain_checkpoint(tmp_path)
    pre = tmp_path / "pre" / "Dataset777_Thy"
    pre.mkdir(parents=True)
    (pre / "dataset.json").write_text(json.dumps({"class_labels": {"benign": 0, "malignant": 1}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    out = tmp_path / "init.pth"
    assert main(["pretrained", "-i", str(source), "-o", str(out), "-d", "777", "-tr", "nnUNetTrainerRLAR"]) == 0
    weights = torch.load(out, weights_only=False)["network_weights"]
    assert weights["cls_head.classifier.weight"].shape == (2, 128)
    assert "-pretrained_weights" in capsys.readouterr().out
    assert main(["pretrained", "-i", str(source), "-o", str(out), "-d", "777"]) != 0  # exists, no --overwrite


def test_a_head_reading_every_encoder_stage_is_added_too(tmp_path):
    """`pretrained` builds whatever head the trainer declares, from the encoder widths it reads off the checkpoint."""
    from dataclasses import dataclass
    from typing import ClassVar

    from nnunet_mtl.cli.pretrained import encoder_channels
    from nnunet_mtl.seams import Head, HeadConfig, register_head

    @dataclass(kw_only=True)
    class StagesConfig(HeadConfig):
        kind: ClassVar[str] = "test_all_stages"

    @register_head
    class StagesHead(Head):
        config_class = StagesConfig

        def __init__(self, encoder_channels, config):
            super().__init__(encoder_channels, config)
            self.classifier = torch.nn.Linear(sum(encoder_channels), config.num_classes)

        def forward(self, skips):
            return {"logits": self.classifier(torch.cat([s.flatten(2).mean(-1) for s in skips], 1))}

    source, unet = plain_checkpoint(tmp_path)
    assert encoder_channels(unet.state_dict(), source) == list(unet.encoder.output_channels) == [8, 16, 32, 32]
    out = tmp_path / "with_stages_head.pth"
    config = StagesConfig(num_classes=2)
    assert add_head_to_checkpoint(source, out, config) == 2
    net = MultitaskUNet(make_unet(), config)
    load_pretrained_weights(net, str(out))
    assert net.head.classifier.in_features == 88
