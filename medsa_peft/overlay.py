"""Overlay pictures: masks tinted and outlined over a grey or colour image, on the slice that shows them best."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "busiest_slice",
    "overlay",
]

PREDICTION_COLOUR = (255, 64, 32)
TRUTH_COLOUR = (48, 220, 64)


def overlay(
    image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]], alpha: float = 0.35
) -> Image.Image:
    """`image` (H, W) or (H, W, 3) in [0, 1] with each (mask (H, W) bool, RGB colour) tinted and outlined."""
    rgb = np.clip(image, 0.0, 1.0)
    rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb[..., :3]
    rgb = (rgb * 255.0).astype(np.float32)
    for mask, colour in masks:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask of shape {mask.shape} does not match the image {rgb.shape[:2]}")
        colour = np.asarray(colour, dtype=np.float32)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
    return Image.fromarray(rgb.round().astype(np.uint8))


def busiest_slice(mask: np.ndarray) -> int:
    """The index along the last axis of `mask` (H, W, D) with the most foreground; the middle slice if it is empty."""
    areas = np.asarray(mask).reshape(-1, mask.shape[-1]).sum(axis=0)
    return int(np.argmax(areas)) if areas.any() else mask.shape[-1] // 2
