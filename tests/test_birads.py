"""BI-RADS consistency (Zhang, Moradi, Saha): the soft-mask features of Table 1 by hand on a disk, a square, an
ellipse and a spiculated shape, their gradients, the prior of Eq. 1, the terms of Eq. 2, and every choice of
docs/birads_consistency.md."""
import math

import pytest
import torch

from nnunet_mtl.methods.birads_consistency import (INITIAL_WEIGHTS, BIRADSConsistency, BIRADSPrior, NoTumourPenalty,
                                                   PriorWeightDecay, birads_features, class_indices, edge_magnitude,
                                                   loss_weights)
from nnunet_mtl.seams.terms import Batch, Setup

SIZE = 128


def grid():
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64),
                          indexing="ij")
    return y - SIZE / 2 + 0.5, x - SIZE / 2 + 0.5


def disk(r=40.0):
    y, x = grid()
    return ((y ** 2 + x ** 2) <= r ** 2).double()


def square(side=60):
    m = torch.zeros(SIZE, SIZE, dtype=torch.float64)
    a = (SIZE - side) // 2
    m[a:a + side, a:a + side] = 1
    return m


def ellipse(a=40.0, b=20.0):
    y, x = grid()
    return ((x / a) ** 2 + (y / b) ** 2 <= 1).double()


def spiculated(r=30.0, spikes=12, depth=0.45):
    y, x = grid()
    angle, radius = torch.atan2(y, x), torch.sqrt(y ** 2 + x ** 2)
    return (radius <= r * (1 + depth * torch.cos(spikes * angle).clamp_min(0) ** 3)).double()


def features(mask, grey=None):
    grey = torch.zeros_like(mask) if grey is None else grey
    return {k: v.item() for k, v in birads_features(mask[None], grey[None]).items()}


# ------------------------------------------------------------------------------------------------ Table 1 by hand
def test_area_is_the_mean_of_the_mask():
    m = disk()
    assert features(m)["A"] == pytest.approx(m.mean().item(), rel=1e-12)


def test_perimeter_of_a_square_is_its_side_times_four():
    """Sobel / 8: a sharp straight edge's magnitudes sum to its length (0.5 on each side of the edge)."""
    f = features(square(60))
    assert f["P"] == pytest.approx(240, rel=0.02)
    assert f["C"] == pytest.approx(math.pi / 4, rel=0.04)  # 4 pi s^2 / (4 s)^2


def test_compactness_of_a_large_disk_is_near_one_and_unscaled_sobel_would_not_be():
    f = features(disk(40))
    assert 0.93 <= f["C"] <= 1.0  # about 0.96: the digital circle's outline is slightly longer than 2 pi r
    assert f["R"] == pytest.approx(2 * math.sqrt(math.pi) / math.sqrt(f["C"]), rel=1e-6)  # R = P / sqrt(sum)
    unscaled = 4 * math.pi * disk(40).sum().item() / (8 * f["P"]) ** 2
    assert unscaled < 0.02  # why the kernels are scaled: 1 - C would be almost constant


def test_an_ellipse_is_less_compact_than_a_disk_by_the_ratio_of_their_shapes():
    a, b = 40.0, 20.0
    ramanujan = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    expected = 4 * math.pi * math.pi * a * b / ramanujan ** 2  # 0.841
    assert features(ellipse(a, b))["C"] / features(disk(40))["C"] == pytest.approx(expected, rel=0.03)


def test_a_spiculated_outline_is_rougher_and_less_compact():
    d, s = features(disk(30)), features(spiculated(30))
    assert s["R"] > 1.3 * d["R"] and s["C"] < 0.75 * d["C"]


def test_texture_is_the_mask_weighted_variance_of_the_grey_values():
    m = square(40)
    checker = ((torch.arange(SIZE)[:, None] + torch.arange(SIZE)[None]) % 2).double() * 2  # 0 / 2 inside: variance 1
    grey = checker + 100 * (1 - m)  # whatever lies outside does not count
    assert features(m, grey)["T"] == pytest.approx(1.0, rel=1e-6)
    soft = 0.5 * m  # a uniform soft mask weights the same pixels equally: the same variance
    assert features(soft, grey)["T"] == pytest.approx(1.0, rel=1e-6)


def test_the_image_border_counts_as_background():
    """Zero padding: a lesion cut by the frame has an outline there; an all-one mask's outline is the frame."""
    ones = torch.ones(1, 32, 32, dtype=torch.float64)
    assert edge_magnitude(ones).sum().item() == pytest.approx(4 * 32, rel=0.05)
    zeros = torch.zeros(1, 32, 32, dtype=torch.float64)
    assert edge_magnitude(zeros).abs().max().item() == 0.0  # exactly 0 on flat regions


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("value", [0.0, 1.0], ids=["all-zero", "all-one"])
def test_gradients_are_finite_for_an_empty_and_a_full_mask(value):
    soft = torch.full((2, 32, 32), value, dtype=torch.float64, requires_grad=True)
    grey = torch.randn(2, 32, 32, dtype=torch.float64)
    f = birads_features(soft, grey)
    (f["A"] + f["R"] + f["C"] + f["T"]).sum().backward()
    assert torch.isfinite(soft.grad).all()
    logits = torch.full((2, 32, 32), 30.0 if value else -30.0, dtype=torch.float64, requires_grad=True)
    f = birads_features(torch.sigmoid(logits), grey)
    (f["R"] + f["C"] + f["T"]).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_features_pass_gradcheck_in_float64():
    g = torch.Generator().manual_seed(0)
    soft = (0.2 + 0.6 * torch.rand(2, 12, 12, generator=g, dtype=torch.float64)).requires_grad_()
    grey = torch.randn(2, 12, 12, generator=g, dtype=torch.float64, requires_grad=True)

    def all_features(s, gr):
        f = birads_features(s, gr)
        return torch.stack([f["A"], f["R"], f["C"], f["T"]])

    assert torch.autograd.gradcheck(all_features, (soft, grey), eps=1e-6, atol=1e-5)


def test_features_are_float32_under_half_precision():
    soft = torch.rand(1, 256, 256).half()
    f = birads_features(soft, torch.randn(1, 256, 256).half())
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in f.values())


# ------------------------------------------------------------------------------------------------ Eq. 1, the prior
def test_the_prior_starts_at_the_papers_weights_and_combines_the_features():
    prior = BIRADSPrior()
    assert torch.allclose(prior.weights, torch.tensor(INITIAL_WEIGHTS), atol=1e-7)
    prior.update(torch.tensor([[2.0, 0.5], [4.0, 1.5]]))  # R in [2, 4], T in [0.5, 1.5]
    f = {"A": torch.tensor([0.1]), "R": torch.tensor([3.0]), "C": torch.tensor([0.8]), "T": torch.tensor([1.5])}
    expected = 0.15 * 0.1 + 0.35 * 0.5 + 0.25 * (1 - 0.8) + 0.25 * 1.0
    assert prior(f).item() == pytest.approx(expected, rel=1e-6)
    f["R"] = torch.tensor([10.0])  # beyond the running maximum: clipped to 1
    assert prior(f).item() == pytest.approx(expected + 0.35 * 0.5, rel=1e-6)


def test_running_statistics_start_from_the_first_batch_then_move_by_one_percent():
    prior = BIRADSPrior()
    prior.update(torch.zeros(0, 2))  # a batch without lesions changes nothing
    assert not bool(prior.initialized)
    prior.update(torch.tensor([[2.0, 0.5], [4.0, 1.5]]))
    assert prior.running_min.tolist() == [2.0, 0.5] and prior.running_max.tolist() == [4.0, 1.5]
    prior.update(torch.tensor([[1.0, 0.5], [6.0, 1.5]]))
    assert prior.running_min.tolist() == pytest.approx([0.99 * 2 + 0.01 * 1, 0.5])
    assert prior.running_max.tolist() == pytest.approx([0.99 * 4 + 0.01 * 6, 1.5])


# ------------------------------------------------------------------------------------------------ Eq. 2, the terms
def make_batch(training=True):
    """Four 32 x 32 patches: benign and malignant with a lesion, a malignant patch that misses its lesion, a normal
    image."""
    from nnunet_mtl.dataset.case_table import CaseTable
    import pandas as pd
    cases = pd.DataFrame({"case_id": ["b", "m", "m_off", "n"], "split": "train",
                          "class": ["benign", "malignant", "malignant", "normal"], "patient_id": ["1", "2", "2", "3"]})
    table = CaseTable(cases, {"benign": 0, "malignant": 1, "normal": 2})
    target = torch.zeros(4, 1, 32, 32)
    target[0, 0, 8:20, 8:24] = 1
    target[1, 0, 6:26, 12:20] = 1
    network = torch.nn.Module()
    network.head = torch.nn.Module()
    network.head.loss_modules = torch.nn.ModuleDict({"birads_prior": BIRADSPrior()})
    return Batch(data=torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)), target=[target],
                 keys=["b", "m", "m_off", "n"], cases=table, training=training, network=network)


def outputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"seg": [torch.randn(4, 2, 32, 32, generator=g, requires_grad=True)],
            "logits": torch.randn(4, 3, generator=g, requires_grad=True)}


def set_up(term, names=("benign", "malignant", "normal")):
    term.setup(Setup(cases=None, train_keys=[], class_names=list(names), device=torch.device("cpu"), log=print))
    return term


def test_consistency_uses_lesion_patches_of_benign_and_malignant_cases_only():
    batch, out = make_batch(), outputs()
    term = set_up(BIRADSConsistency())
    loss = term(out, batch)
    soft = torch.softmax(out["seg"][0], 1)[:, 1]
    prior = batch.loss_module("birads_prior")
    phi = prior(birads_features(soft, batch.data[:, 0]))
    p = torch.softmax(out["logits"], 1)[:, 1]  # P(malignant) of the 3-way softmax
    assert loss.item() == pytest.approx(((p - phi)[:2] ** 2).mean().item(), rel=1e-5)
    assert bool(prior.initialized)  # the running statistics came from the two lesion patches
    loss.backward()
    assert out["seg"][0].grad[2:].abs().max() == 0  # the lesion-free patches get no consistency gradient


def test_running_statistics_move_only_in_training():
    batch, out = make_batch(training=False), outputs()
    set_up(BIRADSConsistency())(out, batch)
    assert not bool(batch.loss_module("birads_prior").initialized)


def test_a_batch_without_lesion_patches_gives_an_exact_zero():
    batch, out = make_batch(), outputs()
    batch.target[0].zero_()
    loss = set_up(BIRADSConsistency())(out, batch)
    assert loss.item() == 0.0 and loss.requires_grad


def test_the_no_tumour_penalty_is_the_mean_soft_mask_of_lesion_free_patches_zero_elsewhere():
    batch, out = make_batch(), outputs()
    soft = torch.softmax(out["seg"][0], 1)[:, 1]
    expected = (soft[2].mean() + soft[3].mean()) / 4  # patches 2 and 3 have no lesion pixel
    assert NoTumourPenalty()(out, batch).item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------ partial masks
def make_partial_batch(training=True):
    """Five 32 x 32 patches with nnU-Net's ignore label (2): a benign case with its full mask (lesion), a malignant
    case without a mask (all 2), a malignant box case whose patch holds part of its box (2 inside, 0 outside), a
    benign box case whose patch lies wholly outside its box (all 0: known background) and a normal image (all 0)."""
    from nnunet_mtl.dataset.case_table import CaseTable
    import pandas as pd
    keys = ["full", "none", "box_in", "box_out", "normal"]
    cases = pd.DataFrame({"case_id": keys, "split": "train",
                          "class": ["benign", "malignant", "malignant", "benign", "normal"],
                          "patient_id": ["1", "2", "3", "4", "5"], "mask": ["full", "none", "box", "box", "full"]})
    table = CaseTable(cases, {"benign": 0, "malignant": 1, "normal": 2})
    target = torch.zeros(5, 1, 32, 32)
    target[0, 0, 8:20, 8:24] = 1
    target[1] = 2
    target[2, 0, 4:30, 10:28] = 2
    network = torch.nn.Module()
    network.head = torch.nn.Module()
    network.head.loss_modules = torch.nn.ModuleDict({"birads_prior": BIRADSPrior()})
    return Batch(data=torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(0)), target=[target],
                 keys=keys, cases=table, training=training, network=network)


def partial_outputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"seg": [torch.randn(5, 2, 32, 32, generator=g, requires_grad=True)],
            "logits": torch.randn(5, 3, generator=g, requires_grad=True)}


def test_with_ignore_pixels_consistency_uses_the_annotated_lesion_patch_only():
    batch, out = make_partial_batch(), partial_outputs()
    loss = set_up(BIRADSConsistency())(out, batch)
    soft = torch.softmax(out["seg"][0], 1)[:, 1]
    features = birads_features(soft, batch.data[:, 0])
    prior = batch.loss_module("birads_prior")
    # the running min/max came from the full case alone: min = max = its R and T
    assert prior.running_min.tolist() == pytest.approx([features["R"][0].item(), features["T"][0].item()])
    assert prior.running_max.tolist() == prior.running_min.tolist()
    p = torch.softmax(out["logits"], 1)[:, 1]
    assert loss.item() == pytest.approx(((p[0] - prior(features)[0]) ** 2).item(), rel=1e-5)
    loss.backward()
    assert out["seg"][0].grad[1:].abs().max() == 0 and out["logits"].grad[1:].abs().max() == 0


def test_ignore_pixels_are_never_read_as_lesion():
    """The old rule (target > 0) would have counted the unannotated (2) patches as lesion patches."""
    batch, out = make_partial_batch(), partial_outputs()
    batch.target[0][0] = 0  # the only lesion pixels gone: left are an all-ignore, a box and lesion-free patches
    loss = set_up(BIRADSConsistency())(out, batch)
    assert loss.item() == 0.0 and loss.requires_grad
    assert not bool(batch.loss_module("birads_prior").initialized)  # no statistics from unannotated patches


def test_the_no_tumour_penalty_skips_patches_with_ignore_pixels():
    batch, out = make_partial_batch(), partial_outputs()
    soft = torch.softmax(out["seg"][0], 1)[:, 1]
    # known background throughout: the box case's patch outside its box (3) and the normal image (4); not the lesion
    # patch (0), the unannotated one (1) nor the one overlapping the box (2)
    expected = (soft[3].mean() + soft[4].mean()) / 5
    ntp = NoTumourPenalty()(out, batch)
    assert ntp.item() == pytest.approx(expected.item(), rel=1e-6)
    ntp.backward()
    grad = out["seg"][0].grad
    assert grad[:3].abs().max() == 0 and grad[3:].abs().min() > 0


def test_an_all_ignore_batch_gives_zero_penalties():
    batch, out = make_partial_batch(), partial_outputs()
    batch.target[0].fill_(2)
    assert NoTumourPenalty()(out, batch).item() == 0.0
    assert set_up(BIRADSConsistency())(out, batch).item() == 0.0


def test_the_birads_terms_declare_partial_masks():
    from nnunet_mtl.trainers import nnUNetTrainerBIRADS
    assert all(t.partial_masks for t in nnUNetTrainerBIRADS.terms)  # the trainer accepts partially annotated data


def test_the_prior_weight_decay_is_the_squared_norm_of_u():
    batch = make_batch()
    u = batch.loss_module("birads_prior").u
    assert PriorWeightDecay()(outputs(), batch).item() == pytest.approx((u ** 2).sum().item())


def test_eq2_weights():
    assert loss_weights(0.17) == {"seg": 0.9, "cls": 0.1, "consistency": 0.17, "ntp": 0.085, "prior_l2": 1e-3}


@pytest.mark.parametrize("names", [("benign", "malignant"), ("malignant", "benign", "normal")])
def test_class_lists_it_accepts(names):
    malignant, normal = class_indices(names)
    assert names[malignant] == "malignant" and (normal is None) == ("normal" not in names)


@pytest.mark.parametrize("names", [("TR1", "TR2", "TR3"), ("benign", "malignant", "other"), ("malignant",)])
def test_other_class_lists_get_one_clear_error(names):
    from nnunet_mtl.errors import NnunetMtlError
    with pytest.raises(NnunetMtlError, match="needs the classes benign and malignant.*--target malignancy"):
        class_indices(names)


def test_the_trainers_declare_the_papers_loss_and_selection():
    from nnunet_mtl.trainers import TRAINERS, nnUNetTrainerBIRADS
    from nnunet_mtl.trainers.mtl import merged_along_mro
    assert nnUNetTrainerBIRADS.resolved_loss_weights() == loss_weights(0.17)
    assert nnUNetTrainerBIRADS.selection == "val_loss" and nnUNetTrainerBIRADS.early_stopping_patience == 50
    assert TRAINERS["nnUNetTrainerBIRADS_alpha0p18"].resolved_loss_weights()["consistency"] == 0.18
    for k in range(1, 10):
        name = f"nnUNetTrainerBIRADS_alpha0p{k}"
        assert TRAINERS[name].resolved_loss_weights()["ntp"] == pytest.approx(0.05 * k)
        assert merged_along_mro(TRAINERS[name + "_paper"], "schedule")["initial_lr"] == 9.2e-4
    assert TRAINERS["nnUNetTrainerBIRADS_alpha0"].resolved_loss_weights()["consistency"] == 0.0
    paper = merged_along_mro(TRAINERS["nnUNetTrainerBIRADS_paper"], "schedule")
    assert (paper["optimizer_name"], paper["weight_decay"], paper["fixed_batch_size"], paper["lr_schedule"]) == \
        ("adamw", 1e-4, 32, "cosine")
    classification = next(t for t in nnUNetTrainerBIRADS.terms if t.name == "cls")
    assert classification.balanced is False  # Zhang, Moradi, Saha's plain BCE
    from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerCELoss import nnUNetTrainerCELoss
    assert TRAINERS["nnUNetTrainerBIRADS_CE"]._build_loss is nnUNetTrainerCELoss._build_loss


def test_cosine_annealing():
    from nnunet_mtl.seams import Stage
    from nnunet_mtl.seams.stages import StagedLRScheduler, resolve_stages
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = StagedLRScheduler(optimizer, 1e-3, resolve_stages([Stage("all")], 4), shape="cosine")
    assert [scheduler.lr_at(e) for e in range(4)] == pytest.approx(
        [1e-3 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    with pytest.raises(ValueError, match="expected one of poly, cosine"):
        StagedLRScheduler(optimizer, 1e-3, resolve_stages([Stage("all")], 4), shape="step")
