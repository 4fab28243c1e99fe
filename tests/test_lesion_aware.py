"""Fan et al.'s lesion-aware head and losses (nnunet_mtl.methods.lesion_aware) and the batch composition by annotation
(nnunet_mtl.trainers.sampling), on tiny hand-made tensors, without nnU-Net's training."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mtl.methods.lesion_aware import (BOX, FULL, NONE, CBAM, ChannelAttention, LesionAwareConfig,
                                             LesionAwareHead, LesionAwareNet, PseudoSegmentation, SpatialAttention,
                                             localization_loss, localization_targets, loss_weights,
                                             pseudo_localization_loss, pseudo_labels, resize_to)
from nnunet_mtl.seams.terms import Batch


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------------------------------------ CBAM
def test_channel_attention_matches_hand_computation():
    torch.manual_seed(0)
    cam = ChannelAttention(channels=4, reduction=2)  # MLP 4 -> 2 -> 4
    x = torch.randn(2, 4, 3, 3)
    w1, b1 = cam.mlp[0].weight.detach().numpy(), cam.mlp[0].bias.detach().numpy()
    w2, b2 = cam.mlp[2].weight.detach().numpy(), cam.mlp[2].bias.detach().numpy()
    mlp = lambda v: w2 @ np.maximum(w1 @ v + b1, 0) + b2  # noqa: E731  (one shared MLP, ReLU)
    a = x.numpy()
    for b in range(2):
        avg, mx = a[b].reshape(4, -1).mean(1), a[b].reshape(4, -1).max(1)
        expected = a[b] * sigmoid(mlp(avg) + mlp(mx))[:, None, None]
        np.testing.assert_allclose(cam(x)[b].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_channel_attention_reduction_16_and_at_least_one_hidden_unit():
    assert ChannelAttention(64).mlp[0].out_features == 4
    assert ChannelAttention(8).mlp[0].out_features == 1


def test_spatial_attention_matches_hand_computation():
    torch.manual_seed(1)
    sam = SpatialAttention(kernel_size=3)
    x = torch.randn(1, 3, 4, 5)
    a = x.numpy()[0]
    pooled = np.stack([a.mean(0), a.max(0)])  # channel-average, channel-maximum
    w, bias = sam.conv.weight.detach().numpy()[0], sam.conv.bias.item()
    padded = np.pad(pooled, ((0, 0), (1, 1), (1, 1)))
    conv = np.array([[(padded[:, i:i + 3, j:j + 3] * w).sum() + bias for j in range(5)] for i in range(4)])
    np.testing.assert_allclose(sam(x).detach().numpy()[0], a * sigmoid(conv)[None], rtol=1e-5, atol=1e-6)
    assert SpatialAttention().conv.kernel_size == (7, 7)  # CBAM's 7 x 7
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(4)


def test_cbam_is_channel_then_spatial_and_each_can_be_ablated():
    torch.manual_seed(2)
    x = torch.randn(2, 16, 4, 4)
    cbam = CBAM(16)
    assert torch.allclose(cbam(x), cbam.spatial(cbam.channel(x)))
    assert isinstance(CBAM(16, channel=False).channel, nn.Identity)
    assert isinstance(CBAM(16, spatial=False).spatial, nn.Identity)
    assert torch.equal(CBAM(16, channel=False, spatial=False)(x), x)


# ------------------------------------------------------------------------------------------------ fusion, MAM
def test_resize_averages_areas_when_shrinking():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    np.testing.assert_allclose(resize_to(x, (2, 2))[0, 0].numpy(), [[2.5, 4.5], [10.5, 12.5]])
    assert resize_to(x, (4, 4)) is x
    assert resize_to(torch.ones(1, 1, 2, 2), (4, 4)).shape == (1, 1, 4, 4)


def encoder_outputs(batch=2, channels=(4, 8, 16, 32, 32), size=32, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(batch, c, size >> i, size >> i) for i, c in enumerate(channels)]


def test_head_reads_the_deepest_stages_and_fuses_them_at_the_bottleneck_size():
    skips = encoder_outputs()
    head = LesionAwareHead([s.shape[1] for s in skips], LesionAwareConfig(num_classes=3)).eval()
    assert head.num_read == 4 and [p.in_channels for p in head.attention.project] == [8, 16, 32, 32]
    assert {p.out_channels for p in head.attention.project} == {8}  # width: the narrowest stage read
    out = head(skips)
    assert out["attention"].shape == (2, 1, 2, 2) == out["attention_logits"].shape  # the bottleneck's 2 x 2
    assert out["logits"].shape == (2, 3)
    assert torch.allclose(out["attention"], torch.sigmoid(out["attention_logits"]))
    # by hand: each stage squeezed, area-resized to 2 x 2, concatenated in stage order, conv + BN
    net = head.attention
    maps = [F.adaptive_avg_pool2d(net.squeeze(net.cbam(proj(f))), (2, 2)) for proj, f in zip(net.project, skips[1:])]
    assert torch.allclose(out["attention_logits"], net.norm(net.fuse(torch.cat(maps, 1))), atol=1e-6)
    # fewer encoder stages than asked: all of them
    assert LesionAwareHead([4, 8], LesionAwareConfig(num_classes=2)).num_read == 2


class FixedMap(nn.Module):
    def __init__(self, logit):
        super().__init__()
        self.logit = logit

    def forward(self, features):
        return self.logit


@pytest.mark.parametrize("mask_attention", [True, False])
def test_mask_attention_and_classifier_match_eq_3_and_4(mask_attention):
    skips = encoder_outputs(seed=3)
    head = LesionAwareHead([s.shape[1] for s in skips], LesionAwareConfig(num_classes=2, mask_attention=mask_attention))
    head.eval()  # BatchNorm1d with its initial running statistics (mean 0, variance 1)
    logit = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]], [[[1.0, -2.0], [0.5, 0.0]]]])
    head.attention = FixedMap(logit)
    f_n = skips[-1]
    p = torch.sigmoid(logit)
    f_att = f_n + f_n * p if mask_attention else f_n  # Eq. 3
    h = f_att.mean((2, 3)) / math.sqrt(1 + head.pool_norm.eps)
    out = head(skips)
    assert torch.allclose(out["embedding"], h, atol=1e-6)
    assert torch.allclose(out["logits"], head.classifier(h), atol=1e-6)  # Eq. 4: pool, linear


# ------------------------------------------------------------------------------------------------ Eq. 5-6
def tiny_target():
    """Three 4 x 4 samples: full (lesion in the top-left 2 x 2 and one more pixel), box (ignore inside rows 2-3,
    columns 0-3), none (all ignore)."""
    t = torch.zeros(3, 1, 4, 4)
    t[0, 0, :2, :2] = 1
    t[0, 0, 2, 2] = 1
    t[1, 0, 2:, :] = 2
    t[2] = 2
    return t, torch.tensor([FULL, BOX, NONE])


def test_localization_targets_are_cells_covered_by_half_or_more_of_the_lesion_or_the_box():
    target, kinds = tiny_target()
    hard, annotated = localization_targets(target, kinds, (2, 2))
    np.testing.assert_array_equal(hard[0, 0].numpy(), [[1.0, 0.0], [0.0, 0.0]])  # the cell with 1/4 lesion is not
    np.testing.assert_array_equal(hard[1, 0].numpy(), [[0.0, 0.0], [1.0, 1.0]])  # the filled box
    np.testing.assert_array_equal(hard[2, 0].numpy(), 0)
    assert annotated.tolist() == [True, True, False]
    # boundaries: exactly half a cell is lesion; a fraction just below half is not
    t = torch.zeros(1, 1, 4, 4)
    t[0, 0, :2, 0] = 1                                   # 2 of the top-left cell's 4 pixels
    t[0, 0, 0, 2] = 1                                    # 1 of the top-right cell's 4 pixels (another lesion)
    hard, _ = localization_targets(t, torch.tensor([FULL]), (2, 2))
    np.testing.assert_array_equal(hard[0, 0].numpy(), [[1.0, 0.0], [0.0, 0.0]])


def test_a_lesion_smaller_than_half_a_cell_marks_its_best_covered_cell():
    """With area fractions as targets P would learn the fraction and never reach tau = 0.8 on a small lesion, so
    Eq. 6's pseudo-labels would all be background: the target is binary, and a small lesion keeps one cell."""
    t = torch.zeros(2, 1, 8, 8)
    t[0, 0, 3:5, 3:6] = 1     # 6 pixels over the 4 cells (4 x 4 each): 1/16 left, 2/16 right, top and bottom
    hard, _ = localization_targets(t, torch.tensor([FULL, FULL]), (2, 2))
    fraction = torch.nn.functional.adaptive_avg_pool2d(t, (2, 2))
    assert fraction.max() < 0.5
    np.testing.assert_array_equal(hard[0, 0].numpy(), (fraction[0, 0] == fraction[0, 0].max()).float().numpy())
    np.testing.assert_array_equal(hard[0, 0].numpy(), [[0.0, 1.0], [0.0, 1.0]])  # the two best-covered cells
    np.testing.assert_array_equal(hard[1].numpy(), 0)  # no lesion: no cell


def test_localization_loss_is_bce_over_annotated_samples_only():
    target, kinds = tiny_target()
    logit = torch.tensor([0.3, -1.0, 2.0, 0.5] * 3).view(3, 1, 2, 2).requires_grad_()
    hard, _ = localization_targets(target, kinds, (2, 2))
    p = torch.sigmoid(logit.detach())
    bce = -(hard * torch.log(p) + (1 - hard) * torch.log(1 - p)).flatten(1).mean(1)
    loss = localization_loss(logit, target, kinds)
    assert loss.item() == pytest.approx(bce[:2].mean().item(), rel=1e-6)
    loss.backward()
    assert logit.grad[2].abs().sum() == 0  # the unannotated sample gets nothing from L_loc
    # no annotated sample: an exact zero that still backpropagates
    logit.grad = None
    zero = localization_loss(logit[2:], target[2:], kinds[2:])
    assert zero.item() == 0 and zero.requires_grad


def test_pseudo_labels_binarize_p_above_tau_and_are_detached():
    logit = torch.tensor([math.log(0.8 / 0.2), 0.0, 3.0, -3.0]).view(1, 1, 2, 2)  # P = 0.8, 0.5, 0.95, 0.05
    assert pseudo_labels(logit, 0.8).flatten().tolist() == [0.0, 0.0, 1.0, 0.0]  # strictly above tau
    assert pseudo_labels(logit, 0.4).flatten().tolist() == [1.0, 1.0, 1.0, 0.0]
    logit = logit.repeat(2, 1, 1, 1).requires_grad_()
    loss = pseudo_localization_loss(logit, torch.tensor([FULL, NONE]), tau=0.8)
    loss.backward()
    y = torch.tensor([0.0, 0.0, 1.0, 0.0])
    # d BCE / d logit = (sigmoid(logit) - y) / cells, with y a constant (no gradient through the pseudo-label)
    expected = (torch.sigmoid(logit.detach()[1].flatten()) - y) / 4
    assert torch.allclose(logit.grad[1].flatten(), expected, atol=1e-6)
    assert logit.grad[0].abs().sum() == 0  # annotated samples are L_loc's


def test_loss_weights_are_eq_6():
    assert loss_weights() == {"seg": 1.0, "cls": 0.5, "loc": 0.5, "pseudo_loc": pytest.approx(0.05)}
    assert loss_weights(lam=0.3, alpha=0.2)["pseudo_loc"] == pytest.approx(0.7 * 0.2)
    with pytest.raises(ValueError, match="lambda"):
        loss_weights(lam=1.5)


class RecordingLoss:
    def __init__(self):
        self.calls = []

    def __call__(self, outputs, targets):
        self.calls.append((outputs, targets))
        return sum(o.float().mean() for o in outputs)


def test_pseudo_segmentation_calls_the_loss_on_unannotated_samples_alone():
    term = PseudoSegmentation(tau=0.8)
    loss = RecordingLoss()
    term._loss = loss
    seg = [torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 2, 2)]
    seg[0][1, 1] = 5.0     # sample 1 says lesion everywhere at full resolution (softmax ~ 0.993)
    seg[1][1, 1, 0, 0] = 1.0  # softmax 0.73 <= tau: background
    target, kinds = tiny_target()
    batch = Batch(data=torch.zeros(3, 1, 4, 4), target=[target], keys=["a", "b", "c"])
    batch.case = lambda column, dtype=None: torch.tensor([FULL, NONE, NONE])
    term({"seg": seg}, batch)
    outputs, targets = loss.calls[0]
    assert [o.shape[0] for o in outputs] == [2, 2]  # samples 1 and 2 only, at every deep-supervision output
    assert targets[0][0].eq(1).all() and targets[0][1].eq(0).all() and targets[1].eq(0).all()
    batch.case = lambda column, dtype=None: torch.tensor([FULL, BOX, FULL])
    assert term({"seg": seg}, batch).item() == 0 and len(loss.calls) == 1  # nothing to pseudo-label: no call


# ------------------------------------------------------------------------------------------------ batches
def test_batch_composition_counts_and_order():
    from nnunet_mtl.trainers.sampling import batch_counts, compose_batch
    assert batch_counts(8, 5, 20, "mixed") == (4, 4)
    assert batch_counts(8, 5, 20, "annotated") == (8, 0)
    assert batch_counts(8, 5, 0, "mixed") == (8, 0)  # a fully annotated fold
    assert batch_counts(3, 5, 20, "mixed") == (2, 1)
    assert batch_counts(9, 5, 20, "mixed") == (5, 4)  # an odd batch: one more annotated case
    assert batch_counts(1, 5, 20, "mixed") == (1, 0)
    with pytest.raises(ValueError, match="no training case has a mask"):
        batch_counts(8, 0, 20, "mixed")
    rng = np.random.RandomState(0)
    annotated, unannotated = ["a1", "a2"], ["u1", "u2", "u3"]
    for _ in range(20):
        keys = compose_batch(annotated, unannotated, 8, "mixed", rng)
        assert all(k in unannotated for k in keys[:4]) and all(k in annotated for k in keys[4:])
        assert set(compose_batch(annotated, unannotated, 6, "annotated", rng)) <= set(annotated)


class FakeDataset:
    identifiers = ["a1", "a2", "u1", "u2"]


def test_set_batch_composition_turns_nnunets_loader_into_the_composing_one():
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunet_mtl.trainers.sampling import CompositionDataLoader, set_batch_composition
    loader = nnUNetDataLoader(FakeDataset(), 4, (8, 8), (8, 8), LabelManager({"background": 0, "lesion": 1}, None))
    augmenter = SingleThreadedAugmenter(loader, None)
    np.random.seed(0)
    assert set(loader.get_indices()) <= set(FakeDataset.identifiers)
    assert set_batch_composition(augmenter, "annotated", ["a1", "a2"], ["u1", "u2"]) is False  # no workers to stop
    assert isinstance(loader, CompositionDataLoader) and loader.patch_size == (1, 8, 8)  # nnU-Net's state kept
    assert set(loader.get_indices()) <= {"a1", "a2"}
    set_batch_composition(augmenter, "mixed", ["a1", "a2"], ["u1", "u2"])
    keys = loader.get_indices()
    assert set(keys[:2]) <= {"u1", "u2"} and set(keys[2:]) <= {"a1", "a2"}
    set_batch_composition(augmenter, "random", ["a1", "a2"], ["u1", "u2"])
    assert set(loader.get_indices()) <= set(FakeDataset.identifiers)
    with pytest.raises(ValueError, match="no training case has a mask"):
        set_batch_composition(augmenter, "mixed", [], ["u1", "u2"])


def test_la_net_trained_on_binary_targets_gives_pseudo_labels_that_find_the_lesions():
    """Eq. 6's pseudo-labels are useful only when P becomes confident (> tau = 0.8) on lesion cells. Trained by L_loc
    alone on stage features that carry a lesion signal (a toy FEX: noise plus the lesion's area fraction in half of
    each stage's channels), 200 Adam steps, LA-Net's pseudo-labels on new images recover most lesion cells and are
    mostly right (measured: recall 0.91, precision 0.74). With the lesion's area fraction as the target P learns the
    fraction, and the same run recovers 0.44 of the lesion cells: this test fails."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    channels, sizes = [16, 32, 64, 64], [32, 16, 8, 4]
    net = LesionAwareNet(channels, 16, 4, 7, True, True)
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    carriers = [(torch.rand(1, c, 1, 1, generator=g) > 0.5).float() for c in channels]

    def batch(n):
        masks = torch.zeros(n, 1, 128, 128)
        for b in range(n):
            r = int(torch.randint(8, 20, (1,), generator=g))
            cy, cx = torch.randint(24, 104, (2,), generator=g).tolist()
            masks[b, 0] = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float()
        features = [torch.randn(n, c, s, s, generator=g) + 2 * F.adaptive_avg_pool2d(masks, s) * k
                    for c, s, k in zip(channels, sizes, carriers)]
        return features, masks

    for _ in range(200):
        features, masks = batch(8)
        loss = localization_loss(net(features), masks, torch.full((8,), FULL))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        features, masks = batch(32)
        target, _ = localization_targets(masks, torch.full((32,), FULL), (4, 4))
        labels = pseudo_labels(net(features))
    hits = float((labels * target).sum())
    assert float(target.max(1)[0].flatten(1).max(1)[0].min()) == 1  # every image has a lesion cell
    assert hits / float(target.sum()) > 0.6 and hits / float(labels.sum()) > 0.5  # recall, precision
