"""The methods' losses as pure functions, without nnU-Net (this module imports nothing of nnunetv2; that the method
modules load without it is checked in tests/test_seams.py): the RLAR penalty by hand (Salama et al. 2026, Eq. 4-6),
the clinical guidance loss (Eq. 3), the class-balanced weights of the multitask classification loss."""
import math

import numpy as np
import pytest
import torch

from nnunet_mtl.methods.clinical_guidance import clinical_guidance_loss
from nnunet_mtl.methods.multitask import class_weights_from_counts
from nnunet_mtl.methods.rlar import rlar_penalty


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_penalty_by_hand_two_tasks():
    a = t([1.0, 0.0], [1.0, 2.0], [3.0, -1.0])
    b = t([0.0, 5.0], [2.0, 4.0], [-6.0, 2.0])  # orthogonal, parallel, anti-parallel
    assert rlar_penalty([a, b]).item() == pytest.approx((0 + 1 + 1) / 3)
    # 45 degrees: |cos| = 1/sqrt(2)
    assert rlar_penalty([t([1.0, 0.0]), t([1.0, 1.0])]).item() == pytest.approx(1 / math.sqrt(2))


def test_penalty_three_tasks_is_mean_over_unordered_pairs():
    g1, g2, g3 = t([1.0, 0.0, 0.0]), t([1.0, 1.0, 0.0]), t([0.0, 0.0, 2.0])
    # pairs: (1,2) 1/sqrt2, (1,3) 0, (2,3) 0
    assert rlar_penalty([g1, g2, g3]).item() == pytest.approx((1 / math.sqrt(2)) / 3)


def test_penalty_flattens_each_sample():
    a = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    b = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    by_hand = torch.stack([torch.nn.functional.cosine_similarity(a[i].flatten(), b[i].flatten(), dim=0).abs()
                           for i in range(4)]).mean()
    assert rlar_penalty([a, b]).item() == pytest.approx(by_hand.item())
    assert rlar_penalty([a, -3 * a]).item() == pytest.approx(1.0)  # scale- and sign-free


def test_zero_gradient_sample_contributes_zero_and_stays_finite():
    a = t([0.0, 0.0], [1.0, 0.0]).requires_grad_()
    b = t([1.0, 1.0], [1.0, 0.0]).requires_grad_()
    p = rlar_penalty([a, b])
    assert p.item() == pytest.approx((0 + 1) / 2)
    p.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    zero = torch.zeros(3, 4, requires_grad=True)
    p0 = rlar_penalty([zero, zero * 2, zero + 0])
    p0.backward()
    assert p0.item() == 0.0 and torch.isfinite(zero.grad).all()


def test_penalty_input_checks():
    with pytest.raises(ValueError, match="at least two"):
        rlar_penalty([torch.ones(2, 3)])
    with pytest.raises(ValueError, match="one shape"):
        rlar_penalty([torch.ones(2, 3), torch.ones(2, 4)])


def test_guidance_loss_skips_cases_without_lesion():
    h = torch.tensor([[1.0, 2.0], [5.0, 5.0]], requires_grad=True)
    r = torch.tensor([[0.0, 0.0], [float("nan"), float("nan")]])
    loss = clinical_guidance_loss(h, torch.nan_to_num(r), torch.tensor([True, False]))
    assert loss.item() == pytest.approx(1 + 4)  # Eq. 3: squared L2 norm of the one valid sample
    loss.backward()
    assert torch.equal(h.grad, torch.tensor([[2.0, 4.0], [0.0, 0.0]]))
    none = clinical_guidance_loss(h, torch.zeros(2, 2), torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def test_balanced_class_weights():
    w = class_weights_from_counts(np.array([60, 30, 10]))
    assert np.allclose(w, [100 / 180, 100 / 90, 100 / 30])
    # weighted counts are equal: every class contributes the same total weight
    assert np.allclose(w * [60, 30, 10], 100 / 3)


def test_absent_class_gets_finite_weight():
    w = class_weights_from_counts(np.array([5, 0, 5]))
    assert np.all(np.isfinite(w)) and w[1] == 1.0 and np.allclose(w[[0, 2]], 10 / 15)
