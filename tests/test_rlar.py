"""RLAR (Salama et al. 2026, Eq. 4-7) in the network: the penalty's gradient into the encoder, and the fast training
step against the straightforward one. The penalty and the guidance loss alone: tests/test_losses.py."""
import pytest
import torch

from nnunet_mtl.autodiff import use_fast_instance_norm
from nnunet_mtl.methods.clinical_guidance import clinical_guidance_loss
from nnunet_mtl.methods.multitask import BottleneckMLPConfig
from nnunet_mtl.methods.rlar import (rlar_backward, rlar_penalty, rlar_penalty_at,
                                     why_seg_gradient_not_written_out)
from nnunet_mtl.networks.multitask_unet import MultitaskUNet
from nnunet_mtl.seams.terms import TermLosses
from tests.network_helpers import ARCH, make_unet


# ---------------------------------------------------------------------------------------- the training step
def make_net(seed=0):
    torch.manual_seed(seed)
    net = MultitaskUNet(make_unet(deep_supervision=True), BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8,
                                                                     dropout=0.0, guided_dim=4))
    return net.double()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(4, 1, 32, 32, generator=g, dtype=torch.float64)
    seg = (torch.rand(4, 1, 32, 32, generator=g) > 0.6).long()
    cls = torch.tensor([0, 1, 2, 1])
    radiomics = torch.randn(4, 4, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    return data, seg, cls, radiomics, valid


# what each loss below is computed from (LossTerm.acts_on), as the trainer's compute_losses passes it on
ACTS_ON = {"seg": ("segmentation",), "cls": ("classification",), "clin": ("embedding",)}


def task_losses_for(seg, cls, radiomics, valid):
    def losses(output):
        seg_out = output["seg"]
        seg_loss = sum(torch.nn.functional.cross_entropy(
            s, torch.nn.functional.interpolate(seg.double(), size=s.shape[2:]).long()[:, 0]) / 2 ** i
            for i, s in enumerate(seg_out))
        return TermLosses({"seg": seg_loss, "cls": torch.nn.functional.cross_entropy(output["logits"], cls),
                           "clin": clinical_guidance_loss(output["embedding"][:, :4], radiomics, valid)}, ACTS_ON)
    return losses


WEIGHTS = {"seg": 1.0, "cls": 1.0, "clin": 0.1}


def close(a, b, rel=1e-6):
    """Normwise comparison: some CPU backward kernels round in float32 even on float64 tensors, so single entries
    near 0 (e.g. conv biases in front of instance norm, whose true gradient is 0) carry ~1e-16 noise."""
    return (a - b).norm() <= rel * b.norm() + 1e-12


def test_without_penalty_the_step_is_the_weighted_multitask_backward():
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)
    step, plain = make_net(), make_net()
    losses, penalty = rlar_backward(step, data, losses_fn, WEIGHTS, [3], adv_weight=0.0)
    out = plain(data, return_aux=True)
    reference = losses_fn(out)
    sum(WEIGHTS[t] * reference[t] for t in WEIGHTS).backward(retain_graph=True)
    for t in WEIGHTS:
        assert losses[t].item() == pytest.approx(reference[t].item(), rel=1e-12)
    for (name, a), b in zip(step.named_parameters(), plain.parameters()):
        assert close(a.grad, b.grad), name
    # the penalty is computed (and logged) even at lambda_adv = 0, from the unweighted losses' directions
    z = out["skips"][3]
    by_hand = rlar_penalty([torch.autograd.grad(reference[t], z, retain_graph=True)[0] for t in WEIGHTS])
    assert penalty.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_amp_scale_scales_the_gradients_not_the_penalty():
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)
    scaled, plain = make_net(), make_net()
    _, p_scaled = rlar_backward(scaled, data, losses_fn, WEIGHTS, [3], 0.5, scale=lambda x: 1024.0 * x)
    _, p_plain = rlar_backward(plain, data, losses_fn, WEIGHTS, [3], 0.5)
    assert p_scaled.item() == pytest.approx(p_plain.item(), rel=1e-6)
    for a, b in zip(scaled.parameters(), plain.parameters()):
        assert close(a.grad, 1024.0 * b.grad)


@pytest.mark.parametrize("fast", [True, False], ids=["written-out", "autograd"])
@pytest.mark.parametrize("layers", [[3], [2], [1], [1, 2, 3]], ids=["bottleneck", "last", "mid", "last3"])
def test_penalty_changes_the_gradient_by_its_own_derivative(layers, fast):
    """lambda_adv adds lambda_adv * dP/dtheta (through the double backward), for every layer choice and both ways
    of computing the segmentation gradient at z; P at several layers is the mean of the per-layer penalties.
    The reference is plain autograd on nnU-Net's own decoder forward."""
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)
    with_pen, without = make_net(), make_net()
    if fast:
        assert why_seg_gradient_not_written_out(with_pen) is None  # nnU-Net's network: the fast path is taken
        use_fast_instance_norm(with_pen.encoder)  # as the trainer does for the stages above a z below the bottleneck
    _, penalty = rlar_backward(with_pen, data, losses_fn, WEIGHTS, layers, adv_weight=0.5, fast=fast)
    rlar_backward(without, data, losses_fn, WEIGHTS, layers, adv_weight=0.0, fast=fast)
    only = make_net()
    out = only(data, return_aux=True)
    losses = losses_fn(out)
    per_layer = [rlar_penalty([torch.autograd.grad(losses[t], out["skips"][k], retain_graph=True, create_graph=True)[0]
                               for t in WEIGHTS]) for k in layers]
    by_hand = torch.stack(per_layer).mean()
    assert penalty.item() == pytest.approx(by_hand.item(), rel=1e-6)
    by_hand.backward()
    for (name, a), b, c in zip(with_pen.named_parameters(), without.parameters(), only.parameters()):
        assert close(a.grad - b.grad, 0.5 * c.grad, rel=1e-5), name


def test_penalty_gradient_reaches_encoder_weights():
    """The penalty at the bottleneck trains the encoder below it (first stage included)."""
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)
    net = make_net()
    out = net(data, return_aux=True)
    weighted = {t: WEIGHTS[t] * v for t, v in losses_fn(out).items()}
    rlar_penalty_at(weighted, list(WEIGHTS), out, [3]).backward()
    for stage in net.encoder.stages:
        weight = next(stage.parameters())
        assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


def make_net_with(**arch_changes):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(0)
    kwargs = {**ARCH["arch_kwargs"], **arch_changes}
    unet = get_network_from_plans(ARCH["network_class_name"], kwargs, ARCH["_kw_requires_import"], 1, 2,
                                  allow_init=True, deep_supervision=True)
    head = BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8, dropout=0.0, guided_dim=4)
    return MultitaskUNet(unet, head).double()


def test_a_decoder_the_fast_path_does_not_know_falls_back_to_autograd():
    """nonlin_first (norm after the non-linearity) is not written out: the step says why and uses autograd, with
    the same result as asking for autograd explicitly."""
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)
    auto, plain = make_net_with(nonlin_first=True), make_net_with(nonlin_first=True)
    assert "non-linearity" in why_seg_gradient_not_written_out(auto)
    _, p_auto = rlar_backward(auto, data, losses_fn, WEIGHTS, [3], adv_weight=0.5)  # fast=None: decides itself
    _, p_plain = rlar_backward(plain, data, losses_fn, WEIGHTS, [3], adv_weight=0.5, fast=False)
    assert p_auto.item() == p_plain.item()
    for a, b in zip(auto.parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_written_out_and_autograd_agree_under_autocast():
    """Mixed precision (CPU bfloat16 autocast, the code path of CUDA AMP: low-precision activations, float32
    parameters): both ways give the same penalty and gradients up to bfloat16 rounding."""
    data, seg, cls, radiomics, valid = batch()
    losses_fn = task_losses_for(seg, cls, radiomics, valid)

    def losses32(output):  # the losses in float32, as nnU-Net computes them from autocast outputs
        out = {k: ([s.float() for s in v] if k == "seg" else v.float()) if k in ("seg", "logits", "embedding") else v
               for k, v in output.items()}
        return losses_fn(out)

    grads, penalties = [], []
    for fast in (True, False):
        net = make_net().float()
        _, p = rlar_backward(net, data.float(), losses32, WEIGHTS, [3], adv_weight=0.5, fast=fast,
                             scale=lambda x: 64.0 * x, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        penalties.append(p.item())
        grads.append(torch.cat([q.grad.flatten() for q in net.parameters() if q.grad is not None]))
    assert penalties[0] == pytest.approx(penalties[1], abs=0.02)
    assert torch.isfinite(grads[0]).all()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


# ---------------------------------------------------------------------------------------- partially annotated cases
IGNORE = 2  # nnU-Net's ignore label in a partially annotated dataset (nnunet_mtl.dataset.contract.IGNORE_LABEL)


def nnunet_ignore_loss():
    """nnU-Net's segmentation loss as its trainer builds it for a dataset with an ignore label: Dice (batch Dice,
    masked by the ignore label) + CE (ignore_index), deep supervision weights 1, 1/2, 0 normalized."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    loss = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=IGNORE, dice_class=MemoryEfficientSoftDiceLoss)
    weights = torch.tensor([1.0, 0.5, 0.0])
    return DeepSupervisionWrapper(loss, (weights / weights.sum()).tolist())


def partial_batch():
    """Four samples: two fully annotated (0 / 1), one without a mask (all ignore), one box (ignore inside the box,
    annotated background outside); the last two have no radiomics target."""
    data, seg, cls, radiomics, _ = batch()
    seg = seg.clone()
    seg[2] = IGNORE
    seg[3] = 0
    seg[3, :, 6:26, 4:20] = IGNORE
    return data, seg, cls, radiomics, torch.tensor([True, True, False, False])


def partial_losses_for(seg, cls, radiomics, valid):
    seg_loss = nnunet_ignore_loss()

    def losses(output):
        targets = [torch.nn.functional.interpolate(seg.double(), size=s.shape[2:], mode="nearest")
                   for s in output["seg"]]  # nnU-Net's downsampled deep-supervision targets
        return TermLosses({"seg": seg_loss(output["seg"], targets),
                           "cls": torch.nn.functional.cross_entropy(output["logits"], cls),
                           "clin": clinical_guidance_loss(output["embedding"][:, :4], radiomics, valid)}, ACTS_ON)
    return losses


@pytest.mark.parametrize("fast", [True, False], ids=["written-out", "autograd"])
@pytest.mark.parametrize("layers", [[3], [1]], ids=["bottleneck", "mid"])
def test_an_unannotated_sample_has_an_exactly_zero_segmentation_gradient_at_z(layers, fast):
    """With nnU-Net's ignore-aware loss an all-ignore sample contributes nothing to L_seg, and its gradient at z is
    exactly 0 (not merely small) through the written-out decoder gradient and through autograd alike: the decoder's
    operations act per sample (instance norm, not batch norm), so a zero seed stays zero. Its RLAR terms with seg
    are then 0 by the cosine's definition; a box sample's is not 0 (the background outside its box is annotated)."""
    from nnunet_mtl.methods.rlar import pairwise_abs_cosine, task_gradients
    data, seg, cls, radiomics, valid = partial_batch()
    losses_fn = partial_losses_for(seg, cls, radiomics, valid)
    net = make_net()
    if fast:
        use_fast_instance_norm(net.encoder)
    output = net(data, return_aux=True, record_decoder=fast)
    losses = losses_fn(output)
    grads = task_gradients({t: WEIGHTS[t] * v for t, v in losses.items()}, list(WEIGHTS), output, layers,
                           decoder=net.decoder if fast else None, segmentation_tasks=["seg"])
    for j in range(len(layers)):
        g = grads["seg"][j]
        assert torch.equal(g[2], torch.zeros_like(g[2]))  # exactly 0, every entry
        assert all(g[i].abs().sum() > 0 for i in (0, 1, 3))
        flat = {t: grads[t][j].flatten(1) for t in WEIGHTS}
        assert pairwise_abs_cosine(flat["seg"], flat["cls"])[2] == 0
        assert pairwise_abs_cosine(flat["seg"], flat["clin"])[2] == 0
        # the sample's penalty is then the cls-clin pair alone, over the three pairs
        penalty_2 = (pairwise_abs_cosine(flat["cls"], flat["clin"])[2] / 3).item()
        per_sample = torch.stack([pairwise_abs_cosine(flat[a], flat[b]) for a, b in
                                  (("seg", "cls"), ("seg", "clin"), ("cls", "clin"))], 1).mean(1)
        assert per_sample[2].item() == pytest.approx(penalty_2, rel=1e-12)
        assert rlar_penalty([grads[t][j] for t in WEIGHTS]).item() == pytest.approx(per_sample.mean().item(),
                                                                                    rel=1e-12)


def test_the_step_on_a_partial_batch_is_finite_and_an_all_ignore_batch_trains_no_decoder():
    """The whole RLAR step on the partial batch has finite gradients; on a batch without any annotated pixel the
    segmentation loss is constant, so the decoder gets no gradient from it, and the penalty (only cls-clin left)
    is finite."""
    data, seg, cls, radiomics, valid = partial_batch()
    net = make_net()
    _, penalty = rlar_backward(net, data, partial_losses_for(seg, cls, radiomics, valid), WEIGHTS, [3],
                               adv_weight=0.5)
    assert 0 <= penalty.item() <= 1
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net = make_net()
    unannotated = torch.full_like(seg, IGNORE)
    _, penalty = rlar_backward(net, data, partial_losses_for(unannotated, cls, radiomics, valid * False), WEIGHTS,
                               [3], adv_weight=0.5)
    assert 0 <= penalty.item() <= 1 / 3 + 1e-12  # seg-cls and seg-clin are 0, at most cls-clin is left
    decoder = [*net.decoder.stages.parameters(), *net.decoder.transpconvs.parameters(),
               *net.decoder.seg_layers.parameters()]  # nnU-Net's decoder also holds a reference to the encoder
    for p in decoder:
        assert p.grad is None or torch.equal(p.grad, torch.zeros_like(p.grad))


# ---------------------------------------------------------------------------------------- what a term acts on
def _terms_acting_on(seg_name, seg_acts_on):
    """A segmentation loss named ``seg_name`` declaring ``seg_acts_on``, and a classification loss (the batch's
    classes: :func:`batch`'s)."""
    from nnunet_mtl.seams.terms import LossTerm

    class MaskLoss(LossTerm):
        name, acts_on = seg_name, seg_acts_on

        def __call__(self, outputs, batch):
            return sum(torch.nn.functional.cross_entropy(
                s, torch.nn.functional.interpolate(batch.seg_target.double(), size=s.shape[2:]).long()[:, 0]) / 2 ** i
                for i, s in enumerate(outputs["seg"]))

    class ClassLoss(LossTerm):
        name, acts_on = "cls", ("classification",)

        def __call__(self, outputs, batch):
            return torch.nn.functional.cross_entropy(outputs["logits"], batch.case("class"))

    return [MaskLoss(), ClassLoss()]


class CaseClasses:
    """The one column of a case table these terms read: ``class``, by batch position."""

    def __init__(self, classes):
        self.classes = classes

    def tensor(self, column, keys, device=None, dtype=None):
        assert column == "class" and list(keys) == ["a", "b", "c", "d"]
        return self.classes.to(device)


def _rule_step(terms, fast=True, monkeypatch=None):
    """One RLAR rule step on a fresh network; (parameter gradients, log lines, calls of the written-out decoder
    gradient)."""
    import nnunet_mtl.methods.rlar as rlar_module
    from nnunet_mtl.methods.rlar import RLAR
    from nnunet_mtl.seams.terms import Batch, compute_losses
    data, seg, cls, _, _ = batch()
    net, calls, log = make_net(), [], []
    original = rlar_module.decoder_input_gradients

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(rlar_module, "decoder_input_gradients", counted)
    rule = RLAR(layer="bottleneck", adv_weight=0.5, fast=fast)
    rule.setup(net, log.append)
    context = Batch(data=data, target=seg, keys=["a", "b", "c", "d"], cases=CaseClasses(cls))
    weights = {t.name: 1.0 for t in terms}
    names = [t.name for t in terms]
    log.append(rule.describe(weights, names))
    rule(net, data, lambda outputs: compute_losses(terms, outputs, context), weights, tasks=names)
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]), log, len(calls)


def test_a_term_acting_on_the_segmentation_output_is_written_out_whatever_its_name(monkeypatch):
    """RLAR writes out the gradient at z of a task whose term declares acts_on = ("segmentation",), whatever its
    name, and asks autograd for a term that does not declare it, even one named "seg"; the log says which, and both
    give autograd's gradients."""
    grads, log, calls = _rule_step(_terms_acting_on("mask_dice", ("segmentation",)), monkeypatch=monkeypatch)
    assert calls == 1  # the written-out decoder gradient, once: the one segmentation task
    assert "segmentation gradient at z: written out" in log[0]
    assert "written out (nnunet_mtl.autodiff) for ['mask_dice'], from autograd for ['cls']" in log[1]
    undeclared, log_undeclared, calls_undeclared = _rule_step(_terms_acting_on("seg", ()), monkeypatch=monkeypatch)
    assert calls_undeclared == 0  # the name "seg" alone does not make it written out
    assert "written out (nnunet_mtl.autodiff) for no task, from autograd for ['seg', 'cls']" in log_undeclared[1]
    reference, log_autograd, calls_autograd = _rule_step(_terms_acting_on("mask_dice", ("segmentation",)), fast=False,
                                                         monkeypatch=monkeypatch)
    assert calls_autograd == 0 and "autograd (fast is False)" in log_autograd[0]
    assert close(grads, reference, rel=1e-6) and close(undeclared, reference, rel=1e-6)


def test_every_term_of_the_package_declares_what_it_acts_on():
    """acts_on is declared on every loss term of nnunet_mtl's methods, with names of OUTPUTS; the segmentation-only
    ones are exactly the terms on nnU-Net's decoder output."""
    import importlib
    import pkgutil

    import nnunet_mtl.methods
    from nnunet_mtl.seams.terms import OUTPUTS, LossTerm
    for module in pkgutil.iter_modules(nnunet_mtl.methods.__path__):
        importlib.import_module(f"nnunet_mtl.methods.{module.name}")

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {c.__name__: c for c in subclasses(LossTerm) if c.__module__.startswith("nnunet_mtl.methods.")}
    assert {"Segmentation", "Classification", "ClinicalGuidance", "BIRADSConsistency", "Localization"} <= set(ours)
    for name, cls in ours.items():
        assert cls.acts_on and set(cls.acts_on) <= set(OUTPUTS), name
    segmentation_only = sorted(n for n, c in ours.items() if tuple(c.acts_on) == ("segmentation",))
    assert segmentation_only == ["NoTumourPenalty", "PseudoSegmentation", "Segmentation"]
