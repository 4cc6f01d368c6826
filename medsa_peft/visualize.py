"""Overlay PNGs: masks tinted and outlined over a grey or colour image."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .files import atomic_path

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


def save_png(picture: Image.Image, path: str | os.PathLike) -> Path:
    """Write `picture` to `path` as PNG, atomically."""
    with atomic_path(path, suffix=".png") as temporary:
        picture.save(temporary, format="PNG")
    return Path(path)
