"""Baselines (issue 12): TorchJD's aggregation path against the weighted-sum step and a hand-computed PCGrad step,
the homogeneity the AMP scaling relies on, and uncertainty weighting against its formula. The tiny nnUNetv2_train
run of every baseline is in tests/test_e2e.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nnunet_mtl.methods.gradient_aggregation import AGGREGATORS, TorchJDAggregation, make_aggregator, torchjd_step
from nnunet_mtl.methods.uncertainty_weighting import (LogVariances, UncertaintyWeighting,
                                                      uncertainty_weighted_total)
from nnunet_mtl.seams import WeightedSum
from tests.network_helpers import small_net, toy_losses


def grads(net) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def test_torchjd_sum_reproduces_the_weighted_sum_step():
    """Sum over the rows of the Jacobian at every encoder output = one backward of the weighted total: the
    aggregation path (feature cut, TorchJD's mtl_backward + jac_to_grad, the regularizer's plain gradient) adds
    and loses nothing."""
    data = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = {"seg": 1.0, "cls": 0.5, "area": 0.1}
    results = []
    for rule in (WeightedSum(), TorchJDAggregation(aggregator="sum")):
        net = small_net()
        rule.validate()
        rule.setup(net, print)
        out = rule(net, data, toy_losses, weights, tasks=("seg", "cls"))
        results.append((grads(net), out.total))
    assert torch.allclose(results[1][0], results[0][0], rtol=1e-10, atol=1e-14)
    assert torch.equal(results[1][1], results[0][1])


class TwoTasks(nn.Module):
    """A shared linear layer (the 'encoder') and two linear heads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.shared = nn.Linear(3, 4).double()
        self.head_a, self.head_b = nn.Linear(4, 1).double(), nn.Linear(4, 1).double()

    def losses(self, x):
        z = torch.tanh(self.shared(x))
        return z, (self.head_a(z) - 1.0).square().mean(), (self.head_b(z) + 1.0).square().mean()


def test_torchjd_pcgrad_step_matches_a_hand_computed_one():
    """Yu et al. 2020, Alg. 1 for two tasks: g_i' = g_i - (g_i . g_j) / |g_j|^2 g_j when g_i . g_j < 0; the update
    of the shared parameters is g_1' + g_2'; the heads get their own plain gradients."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = TwoTasks()
    shared = list(model.shared.parameters())
    _, la, lb = model.losses(x)
    ga = torch.cat([g.flatten() for g in torch.autograd.grad(la, shared, retain_graph=True)])
    gb = torch.cat([g.flatten() for g in torch.autograd.grad(lb, shared, retain_graph=True)])
    assert ga @ gb < 0  # the tasks conflict: PCGrad changes something
    pa = ga - (ga @ gb) / (gb @ gb) * gb
    pb = gb - (gb @ ga) / (ga @ ga) * ga
    expected = pa + pb
    head_a = torch.autograd.grad(la, list(model.head_a.parameters()), retain_graph=True)
    z, la, lb = model.losses(x)
    torchjd_step([la, lb], [z], shared, make_aggregator("pcgrad"))
    assert torch.allclose(torch.cat([p.grad.flatten() for p in shared]), expected, rtol=1e-10, atol=1e-12)
    for p, g in zip(model.head_a.parameters(), head_a):
        assert torch.allclose(p.grad, g)
    assert not torch.allclose(expected, ga + gb)  # and it differs from the sum


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_aggregator_scales_with_the_losses(name):
    """AMP hands the rule losses multiplied by the grad scaler's scale: the aggregate must be that scale times the
    unscaled aggregate (positive homogeneity of degree 1), or the optimizer's unscale would be wrong."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    results = []
    for scale in (1.0, 1024.0):
        model = TwoTasks()
        z, la, lb = model.losses(x)
        torchjd_step([scale * la, scale * lb], [z], list(model.shared.parameters()), make_aggregator(name))
        results.append(torch.cat([p.grad.flatten() for p in model.shared.parameters()]))
    assert torch.allclose(results[1], 1024.0 * results[0], rtol=1e-5, atol=1e-9)


def test_an_unknown_aggregator_is_refused_when_the_trainer_is_made():
    with pytest.raises(ValueError, match="aggregator 'nash': expected one of sum, pcgrad"):
        TorchJDAggregation(aggregator="nash").validate()
    rule = TorchJDAggregation(aggregator="upgrad")
    rule.validate()
    assert "UPGrad" in rule.describe({"seg": 1.0, "cls": 1.0}, ("seg", "cls"))


def test_uncertainty_weighted_total_follows_kendall():
    """Kendall et al. 2018, Sec. 3.2: exp(-s_t) w_t L_t + s_t / 2 per task, regularizers with their fixed weight."""
    losses = {"seg": torch.tensor(0.8, dtype=torch.float64), "cls": torch.tensor(0.3, dtype=torch.float64),
              "area": torch.tensor(2.0, dtype=torch.float64)}
    s = torch.tensor([0.4, -0.2], dtype=torch.float64, requires_grad=True)
    total = uncertainty_weighted_total(losses, {"seg": 1.0, "cls": 0.5, "area": 0.1}, s, ["seg", "cls"])
    expected = (torch.exp(torch.tensor(-0.4)) * 0.8 + 0.2 + torch.exp(torch.tensor(0.2)) * 0.5 * 0.3 - 0.1 + 0.2)
    assert torch.isclose(total, expected.double())
    total.backward()
    # d/ds_t = -exp(-s_t) w_t L_t + 1/2: the optimum is exp(s_t) = 2 w_t L_t (sigma^2 tracks the loss)
    assert torch.allclose(s.grad, torch.tensor([-torch.exp(torch.tensor(-0.4)) * 0.8 + 0.5,
                                                -torch.exp(torch.tensor(0.2)) * 0.15 + 0.5], dtype=torch.float64))


def test_uncertainty_weighting_rule_learns_its_log_variances_in_the_head():
    from nnunet_mtl.methods.multitask import BottleneckMLPConfig
    from nnunet_mtl.networks.multitask_unet import MultitaskUNet
    from tests.network_helpers import make_unet
    rule = UncertaintyWeighting()
    config = BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8, dropout=0.0,
                                 loss_modules=rule.loss_modules(["seg", "cls"]))
    torch.manual_seed(0)
    net = MultitaskUNet(make_unet(), config).double()
    module = net.head.loss_modules["uncertainty"]
    assert isinstance(module, LogVariances) and module.tasks == ["seg", "cls"]
    assert "cls_head.loss_modules.uncertainty.log_variances" in net.state_dict()
    assert net.head.no_weight_decay_parameters() == [module.log_variances]
    data = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    out = rule(net, data, toy_losses, {"seg": 1.0, "cls": 1.0, "area": 0.1}, tasks=("seg", "cls"))
    assert module.log_variances.grad is not None and set(out.extras) == {"sigma_seg", "sigma_cls"}
    assert torch.allclose(torch.stack([out.extras["sigma_seg"], out.extras["sigma_cls"]]),
                          torch.ones(2, dtype=torch.float64))  # s = 0 at the start: sigma = 1
    losses = toy_losses(net(data, return_aux=True))
    assert torch.isclose(out.total, losses["seg"] + losses["cls"] + 0.1 * losses["area"])
