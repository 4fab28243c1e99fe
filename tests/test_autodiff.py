"""The hand-written derivatives of nnunet_mtl.autodiff against PyTorch's autograd: instance norm's closed-form double
backward, and the decoder's written-out data gradient (values, first and second derivatives)."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_mtl.autodiff import decoder_forward, decoder_input_gradients, instance_norm_with_stats, unsupported, \
    use_fast_instance_norm
from nnunet_mtl.autodiff.instance_norm import InstanceNormBackward


def affine_norm(channels, dim=2, seed=0):
    norm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, affine=True).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # not the identity initialisation, so that w and b matter
        norm.weight.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(channels, generator=g, dtype=torch.float64))
    return norm


# ---------------------------------------------------------------------------------------------- instance norm
def test_instance_norm_values_and_first_backward_are_pytorchs():
    norm = affine_norm(5).float()
    x = (3 * torch.randn(3, 5, 7, 6) + 2).requires_grad_()
    y, mean, invstd = instance_norm_with_stats(x, norm)
    reference = F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    assert torch.allclose(y, reference, atol=1e-6)
    assert torch.allclose(mean, x.mean((2, 3)), atol=1e-6)
    assert torch.allclose(invstd, 1 / torch.sqrt(x.var((2, 3), unbiased=False) + norm.eps), rtol=1e-5)
    gy = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, norm.weight, norm.bias), gy)
    theirs = torch.autograd.grad(reference, (x, norm.weight, norm.bias), gy)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_instance_norm_double_backward_is_exact(dim):
    """gradgradcheck: the closed form equals finite differences of the first derivative, for every input (x, w, b)
    and every upstream gradient (of gx, gw and gb)."""
    norm = affine_norm(3, dim)
    x = torch.randn(2, 3, *([4] * dim), dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return instance_norm_with_stats(x, _Norm(w, b))[0]

    assert torch.autograd.gradcheck(f, (x, norm.weight, norm.bias))
    assert torch.autograd.gradgradcheck(f, (x, norm.weight, norm.bias))


class _Norm:
    """Just what instance_norm_with_stats reads from a module, with tensors gradcheck can perturb."""

    def __init__(self, weight, bias, eps=1e-5):
        self.weight, self.bias, self.eps = weight, bias, eps


def test_instance_norm_double_backward_matches_autograd_on_a_realistic_tensor():
    norm = affine_norm(8)
    x = (torch.randn(3, 8, 16, 16, dtype=torch.float64) * 4 + 5).requires_grad_()
    gy = torch.randn_like(x, requires_grad=True)
    u = torch.randn_like(x)
    ours = instance_norm_with_stats(x, norm)[0]
    theirs = F.instance_norm(x, weight=norm.weight, bias=norm.bias, eps=norm.eps)
    results = []
    for y in (ours, theirs):
        gx = torch.autograd.grad(y, x, gy, create_graph=True)[0]
        results.append(torch.autograd.grad(gx, (x, gy, norm.weight), u))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_instance_norm_low_precision_input_is_computed_in_float32():
    """AMP: bfloat16 / float16 activations with float32 parameters; the double backward's group sums are float32."""
    norm = affine_norm(4).float()
    x64 = torch.randn(2, 4, 32, 32, dtype=torch.float64) * 50  # large sums: float16 group sums would overflow
    u64 = torch.randn_like(x64) * 100
    gy64 = torch.randn_like(x64) * 100
    reference = InstanceNormBackward.apply(gy64.requires_grad_(), x64.requires_grad_(), norm.weight.double(),
                                           x64.mean((2, 3)), 1 / torch.sqrt(x64.var((2, 3), unbiased=False) + 1e-5),
                                           1e-5)
    ref_grads = torch.autograd.grad(reference[0], (gy64, x64), u64)
    x, gy = x64.bfloat16().requires_grad_(), gy64.bfloat16().requires_grad_()
    _, mean, invstd = instance_norm_with_stats(x, norm)
    gx = InstanceNormBackward.apply(gy, x, norm.weight, mean, invstd, norm.eps)[0]
    assert gx.dtype == torch.bfloat16
    grads = torch.autograd.grad(gx, (gy, x), u64.bfloat16())
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.bfloat16 and torch.isfinite(g).all()
        assert (g.double() - r).norm() <= 0.02 * r.norm()


def test_use_fast_instance_norm_keeps_parameters_values_and_state_dict():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), affine_norm(4).float(), nn.InstanceNorm2d(4),  # not affine: untouched
                        nn.BatchNorm2d(4), nn.InstanceNorm2d(4, affine=True, track_running_stats=True))
    before = copy.deepcopy(net)
    assert use_fast_instance_norm(net) == 1
    assert type(net[1]).__name__ == "FastInstanceNorm2d" and isinstance(net[1], nn.InstanceNorm2d)
    assert [type(m) for m in net[2:]] == [type(m) for m in before[2:]]
    assert net.state_dict().keys() == before.state_dict().keys()
    x = torch.randn(2, 1, 9, 9)
    net.train(), before.train()
    assert torch.allclose(net[:2](x), before[:2](x), atol=1e-6)
    with torch.no_grad():  # evaluation goes through the module's own forward
        assert torch.equal(net[:2](x), before[:2](x))
    assert torch.equal(pickle.loads(pickle.dumps(net))[:2](x), net[:2](x))


# ---------------------------------------------------------------------------------------------- decoder
def make_unet(deep_supervision=True, n_stages=4, **overrides):
    kwargs = dict(input_channels=1, n_stages=n_stages, features_per_stage=[4, 8, 8, 16, 16][:n_stages],
                  conv_op=nn.Conv2d, kernel_sizes=3, strides=[1] + [2] * (n_stages - 1),
                  n_conv_per_stage=[2] * n_stages, num_classes=2, n_conv_per_stage_decoder=[2] * (n_stages - 1),
                  conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  dropout_op=None, dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
                  deep_supervision=deep_supervision)
    kwargs.update(overrides)
    torch.manual_seed(0)
    net = PlainConvUNet(**kwargs).double()
    for m in net.modules():  # instance norm starts as the identity: perturb it so its derivatives are exercised
        if isinstance(m, nn.InstanceNorm2d) and m.affine:
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return net


def seg_loss(outputs, target):
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    # the lowest output gets weight 0, as in nnU-Net's deep supervision: its seed is None
    weights = [1 / 2 ** i for i in range(len(outputs) - 1)] + [0.0] if len(outputs) > 1 else [1.0]
    return sum(w * F.cross_entropy(o, F.interpolate(target, size=o.shape[2:]).long()[:, 0])
               for w, o in zip(weights, outputs) if w)


def skips_and_target(net, size=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, size, size, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 1, size, size, generator=g) > 0.5).double()
    # the decoder's inputs as independent leaves: autograd then gives each one's direct gradient
    skips = [s.detach().requires_grad_() for s in net.encoder(x)]
    return skips, target


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_decoder_forward_is_the_decoder(deep_supervision):
    net = make_unet(deep_supervision)
    skips, _ = skips_and_target(net, size=24)  # 24 -> 12 -> 6 -> 3: an odd bottleneck
    theirs = net.decoder(skips)
    ours, records = decoder_forward(net.decoder, skips)
    if deep_supervision:
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    else:
        assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert [len(r) for r in records] == [len(st.convs) for st in net.decoder.stages]


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_decoder_input_gradients_equal_autograd(deep_supervision):
    net = make_unet(deep_supervision)
    skips, target = skips_and_target(net, size=24)
    outputs, records = decoder_forward(net.decoder, skips)
    loss = seg_loss(outputs, target)
    listed = outputs if deep_supervision else [outputs]
    seeds = torch.autograd.grad(loss, listed, retain_graph=True, allow_unused=True)
    ours = decoder_input_gradients(net.decoder, records, seeds, skip_levels=range(len(skips) - 1))
    theirs = torch.autograd.grad(loss, skips)
    assert sorted(ours) == list(range(len(skips)))
    for level, g in enumerate(theirs):
        assert torch.allclose(ours[level], g, rtol=1e-9, atol=1e-13), level


def test_decoder_input_gradients_second_derivatives_equal_autograd():
    """What RLAR needs: differentiating a function of the gradient at z gives autograd's second derivatives, into
    every decoder parameter and every decoder input."""
    net = make_unet()
    skips, target = skips_and_target(net)
    probe = torch.randn_like(skips[-1])

    def second_order(written_out: bool):
        net.zero_grad(set_to_none=True)
        for s in skips:
            s.grad = None
        if written_out:
            outputs, records = decoder_forward(net.decoder, skips)
            loss = seg_loss(outputs, target)
            seeds = torch.autograd.grad(loss, outputs, create_graph=True, allow_unused=True)
            g = decoder_input_gradients(net.decoder, records, seeds)[len(skips) - 1]
        else:
            loss = seg_loss(net.decoder(skips), target)
            g = torch.autograd.grad(loss, skips[-1], create_graph=True)[0]
        # a non-linear function of g, like the cosine penalty
        (g * probe).sum().square().backward()
        return [p.grad.clone() for p in net.decoder.parameters() if p.grad is not None], [s.grad.clone()
                                                                                          for s in skips]

    (ours_p, ours_s), (theirs_p, theirs_s) = second_order(True), second_order(False)
    assert len(ours_p) == len(theirs_p) and len(ours_p) > 0
    for a, b in zip(ours_p + ours_s, theirs_p + theirs_s):
        assert (a - b).norm() <= 1e-9 * b.norm() + 1e-14


@pytest.mark.parametrize("change, reason", [
    ({"nonlin_first": True}, "conv -> norm -> non-linearity"),
    ({"dropout_op": nn.Dropout2d, "dropout_op_kwargs": {"p": 0.1}}, "conv -> norm -> non-linearity"),
    ({"norm_op": nn.BatchNorm2d, "norm_op_kwargs": {}}, "BatchNorm2d"),
    ({"nonlin": nn.ELU, "nonlin_kwargs": {}}, "ELU"),
], ids=["nonlin_first", "dropout", "batchnorm", "elu"])
def test_unsupported_decoders_say_why(change, reason):
    assert unsupported(make_unet().decoder) is None
    why = unsupported(make_unet(**change).decoder)
    assert why is not None and reason in why
    assert "UNetDecoder" in unsupported(nn.Module())
