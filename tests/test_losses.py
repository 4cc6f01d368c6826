"""Dice + BCE on mask logits: values by hand, ordering, gradients, mixed precision."""

import math

import pytest
import torch
import torch.nn.functional as F

from medsa_peft.training.losses import DiceBCELoss


def square_targets(batch=2, size=16):
    targets = torch.zeros(batch, size, size)
    targets[:, 4:10, 5:12] = 1.0
    return targets


def test_confident_right_logits_give_almost_no_loss_and_wrong_ones_a_lot():
    targets = square_targets()
    loss = DiceBCELoss()
    right = loss(20.0 * (2 * targets - 1), targets)
    unsure = loss(torch.zeros_like(targets), targets)
    wrong = loss(-20.0 * (2 * targets - 1), targets)
    assert right.ndim == 0 and right.item() < 1e-3
    assert right < unsure < wrong
    assert wrong.item() > 10


def test_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]], [[-2.0, -2.0], [-2.0, -2.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])  # second sample empty
    smooth = 1.0
    dice_terms = []
    for sample_logits, sample_targets in zip(logits, targets):
        p = [1 / (1 + math.exp(-v)) for v in sample_logits.flatten().tolist()]
        t = sample_targets.flatten().tolist()
        overlap = sum(pi * ti for pi, ti in zip(p, t))
        dice_terms.append(1 - (2 * overlap + smooth) / (sum(p) + sum(t) + smooth))
    bce_terms = [
        -(ti * math.log(1 / (1 + math.exp(-v))) + (1 - ti) * math.log(1 - 1 / (1 + math.exp(-v))))
        for v, ti in zip(logits.flatten().tolist(), targets.flatten().tolist())
    ]
    expected_dice, expected_bce = sum(dice_terms) / 2, sum(bce_terms) / len(bce_terms)

    for dice_weight, bce_weight in [(1.0, 1.0), (2.0, 0.0), (0.0, 0.5)]:
        loss = DiceBCELoss(dice_weight, bce_weight, smooth=smooth)(logits, targets)
        assert loss.item() == pytest.approx(dice_weight * expected_dice + bce_weight * expected_bce, rel=1e-5)


def test_gradients_are_finite_even_for_extreme_logits():
    targets = square_targets()
    logits = torch.full_like(targets, -1e4)
    logits[:, 0, 0] = 1e4
    logits.requires_grad_(True)
    loss = DiceBCELoss()(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_bf16_autocast_computes_in_float32():
    torch.manual_seed(0)
    targets = square_targets(batch=4, size=32)
    features = torch.randn(4, 8, 32, 32)
    head = torch.nn.Conv2d(8, 1, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)[:, 0]
        assert logits.dtype == torch.bfloat16
        loss = DiceBCELoss()(logits, targets)
    assert loss.dtype == torch.float32
    reference = DiceBCELoss()(logits.float(), targets)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_bce_part_is_torch_bce_with_logits():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 8, 8), (torch.rand(3, 8, 8) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert DiceBCELoss(dice_weight=0.0)(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_rejects_mismatched_shapes_and_weights():
    with pytest.raises(ValueError, match="share one shape"):
        DiceBCELoss()(torch.zeros(2, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="weights"):
        DiceBCELoss(dice_weight=0.0, bce_weight=0.0)
