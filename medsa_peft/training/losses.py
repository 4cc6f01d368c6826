"""Dice + binary cross-entropy on mask logits, the training loss of Med-SA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = [
    "DiceBCELoss",
]


class DiceBCELoss(nn.Module):
    """dice_weight * soft Dice loss + bce_weight * BCE, from logits of binary masks.

    forward(logits (N, ...), targets (N, ...) in {0, 1}) -> scalar. The soft Dice of sample i,
    (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth) with p = sigmoid(logits), is taken over
    all its pixels (voxels); the loss is the mean of 1 - Dice over samples. BCE is the mean over
    all pixels. Everything runs in float32, also under bf16 / fp16 autocast.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(f"weights must be >= 0 and not both 0, got dice {dice_weight}, bce {bce_weight}")
        self.dice_weight = dice_weight
        self.bce_weight = bce_weight
        # Per sample (batch=False) and per channel, with the mask as the one channel.
        self.dice = DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth, reduction="mean")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape or logits.ndim < 2:
            raise ValueError(
                f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must share one shape (N, ...)"
            )
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits, targets = logits.float(), targets.float()
            dice = self.dice(logits.unsqueeze(1), targets.unsqueeze(1))
            bce = F.binary_cross_entropy_with_logits(logits, targets)
            return self.dice_weight * dice + self.bce_weight * bce
