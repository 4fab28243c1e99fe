"""The multitask network: nnU-Net-compatible forward, extras on request, shape from the plans only."""
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mtl.methods.multitask import BottleneckMLPConfig
from nnunet_mtl.networks.multitask_unet import PLANS_KEY, MultitaskUNet, head_config_from_plans
from tests.network_helpers import make_plans, make_unet


def test_plain_forward_is_segmentation_only():
    net = MultitaskUNet(make_unet(deep_supervision=False), BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8))
    out = net(torch.randn(2, 1, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)


def test_aux_outputs_share_one_encoder_pass():
    net = MultitaskUNet(make_unet(), BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8)).eval()
    x = torch.randn(2, 1, 32, 32)
    out = net(x, return_aux=True)
    assert isinstance(out["seg"], list) and out["seg"][0].shape == (2, 2, 32, 32)  # deep supervision
    assert out["logits"].shape == (2, 3) and out["embedding"].shape == (2, 8)
    assert out["skips"][-1].shape[1] == 32  # bottleneck channels
    with torch.no_grad():
        assert torch.equal(net(x)[0], out["seg"][0])


def test_state_dict_keys_match_plain_nnunet():
    unet = make_unet()
    net = MultitaskUNet(make_unet(), BottleneckMLPConfig(num_classes=2))
    seg_keys = {k for k in net.state_dict() if not k.startswith("cls_head.")}
    assert seg_keys == set(unet.state_dict())
    # a plain nnU-Net checkpoint's weights load into the segmentation part
    missing, unexpected = net.load_state_dict(unet.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("cls_head.") for k in missing)


def test_deep_supervision_toggle_reaches_decoder():
    net = MultitaskUNet(make_unet(), BottleneckMLPConfig(num_classes=2))
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert isinstance(net(torch.randn(1, 1, 32, 32)), torch.Tensor)


def test_trainer_builds_same_network_from_plans_and_loads_strictly():
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
    pm = PlansManager(make_plans(num_classes=3))
    cm = pm.get_configuration("2d")
    a = nnUNetTrainerMTL.build_network_architecture(pm, cm, 1, 2, enable_deep_supervision=True)
    b = nnUNetTrainerMTL.build_network_architecture(pm, cm, 1, 2, enable_deep_supervision=False)
    b.load_state_dict(a.state_dict(), strict=True)
    assert b.cls_head.classifier.out_features == 3


def test_missing_plans_section_is_a_clear_error():
    plans = make_plans()
    del plans[PLANS_KEY]
    with pytest.raises(KeyError, match="not trained by an nnunet_mtl trainer"):
        head_config_from_plans(plans)
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
    pm = PlansManager(plans)
    with pytest.raises(SystemExit, match="nnunet_mtl"):
        nnUNetTrainerMTL.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2)


def test_guided_dim_cannot_exceed_embedding():
    with pytest.raises(ValueError):
        MultitaskUNet(make_unet(), BottleneckMLPConfig(num_classes=2, embed_dim=8, guided_dim=13))
