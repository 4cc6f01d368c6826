"""The tiny SAM that ships with the package, and the synthetic shapes it was pre-trained on.

`default_model_path()` is a `SamModel.save_pretrained` folder: a 128 x 128 SAM (16 x 16 tokens) trained in
full by `scripts/pretrain_tiny_sam.py` to segment the object a box or clicks point at, on grey-level images
of random shapes (`synthetic_scenes`). It gives the offline demo a real starting point; its README.md says
how it was made and how well it does. `prompted_dice` scores such a model on shapes with a given prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from transformers import SamModel

from .data.preprocess import SamFrame, frame_images, sam_logits_to_original
from .data.prompt_spec import PromptSpec
from .metrics import dice

SHAPE_KINDS = ("ellipse", "rectangle", "blob", "wobbly")
_MIN_CONTRAST = 0.12  # least intensity step between a shape and what it is painted over
_MIN_AREA_FRACTION = 0.01  # least visible area of a target object, as a fraction of the image
_MAX_TRIES = 100


def default_model_path() -> Path:
    """The folder of the shipped tiny SAM (config.json, model.safetensors, README.md)."""
    return Path(__file__).resolve().parent / "assets" / "sam-tiny-shapes"


def _unit_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed with `sigma` pixels, rescaled to unit standard deviation."""
    noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _shape_mask(
    kind: str, center: np.ndarray, radius: float, rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A random shape of `kind` about `center` (row, col), roughly `radius` pixels in size: (H, W) bool."""
    angle = rng.uniform(0, np.pi)
    dy, dx = rows - center[0], cols - center[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)  # coordinates along the shape's own axes
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    stretch = rng.uniform(0.4, 1.0)
    if kind == "ellipse":
        return (u / radius) ** 2 + (v / (radius * stretch)) ** 2 <= 1
    if kind == "rectangle":
        return (np.abs(u) <= radius) & (np.abs(v) <= radius * stretch)
    if kind == "blob":  # union of gaussians, thresholded
        field = np.zeros_like(rows)
        for _ in range(rng.integers(2, 6)):
            offset = rng.normal(scale=radius / 2, size=2)
            sigma = radius * rng.uniform(0.3, 0.6)
            field += np.exp(-((dy - offset[0]) ** 2 + (dx - offset[1]) ** 2) / (2 * sigma**2))
        return field >= rng.uniform(0.3, 0.6) * field.max()
    if kind == "wobbly":  # a star-shaped outline: the radius varies with a few harmonics of the angle
        theta = np.arctan2(v, u)
        outline = np.ones_like(theta)
        for harmonic in range(2, 6):
            outline += rng.uniform(0, 0.25) * np.sin(harmonic * theta + rng.uniform(0, 2 * np.pi))
        return np.hypot(u, v) <= radius * outline
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")


def _smooth_bias(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative intensity bias: 1 + a quadratic in the image coordinates, at most +-0.3."""
    y, x = rows / rows.max() * 2 - 1, cols / cols.max() * 2 - 1
    field = sum(rng.normal() * term for term in (x, y, x * y, x**2, y**2))
    return 1 + rng.uniform(0, 0.3) * field / max(float(np.abs(field).max()), 1e-6)


def _contrasting_level(under: np.ndarray, rng: np.random.Generator) -> float:
    """An intensity in [0, 1] at least _MIN_CONTRAST away from the median of the pixels `under` a new shape."""
    median = float(np.median(under))
    choices = np.concatenate([np.linspace(0, median - _MIN_CONTRAST, 50), np.linspace(median + _MIN_CONTRAST, 1, 50)])
    return float(rng.choice(choices[(choices >= 0) & (choices <= 1)]))


def _scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W) float32 in [0, 1] and its label map (H, W) int: 0 background, k the k-th shape painted."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    size = min(height, width)
    # Every region's texture mixes the same fine and coarse noise with its own weights: two filters per image.
    fine, coarse = (_unit_noise((height, width), sigma, rng) for sigma in (rng.uniform(0.5, 1.5), rng.uniform(2, 5)))
    image = rng.uniform(0, 0.6) + rng.uniform(0, 0.05) * coarse
    labels = np.zeros((height, width), dtype=np.int64)
    previous, previous_radius = None, 0.0
    for label in range(1, rng.integers(2, 6) + 1):
        if previous is not None and rng.random() < 0.35:  # nested: inside the previous shape, smaller
            center = np.argwhere(previous)[rng.integers(np.count_nonzero(previous))].astype(np.float32)
            radius = max(3.0, previous_radius * rng.uniform(0.3, 0.6))
        else:
            center = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
            radius = size * rng.uniform(0.06, 0.3)
        mask = _shape_mask(rng.choice(SHAPE_KINDS), center, radius, rows, cols, rng)
        if not mask.any():
            continue
        texture = rng.normal(scale=0.04) * fine[mask] + rng.normal(scale=0.04) * coarse[mask]
        image[mask] = _contrasting_level(image[mask], rng) + texture
        labels[mask] = label
        previous, previous_radius = mask, radius
    image = ndimage.gaussian_filter(image * _smooth_bias(rows, cols, rng), rng.uniform(0, 1))
    image = image + rng.normal(scale=rng.uniform(0, 0.06), size=image.shape)
    return np.clip(image, 0, 1).astype(np.float32), labels


def synthetic_scenes(
    count: int, height: int, width: int, rng: np.random.Generator, targets_per_image: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """`count` grey-level images of random shapes, and `targets_per_image` target objects in each.

    A scene is a background and 2-5 shapes (ellipses, rectangles, blobs made of thresholded gaussians and
    star-shaped outlines), some nested in the shape before, painted in turn, so later shapes cover earlier
    ones. Each has its own intensity, at least 0.12 away from what it covers, and texture; the image then
    gets a smooth intensity bias, blur and noise. A target is the visible part of one shape, drawn among
    those covering at least 1% of the image; the targets of an image differ while it has enough of them.

    Returns images (N, H, W) float32 in [0, 1] and masks (N, T, H, W) bool, T = targets_per_image.
    """
    if count < 1 or targets_per_image < 1 or min(height, width) < 16:
        raise ValueError(
            f"need count >= 1, targets_per_image >= 1 and images of at least 16 x 16 pixels, "
            f"got {count}, {targets_per_image}, {height} x {width}"
        )
    min_area = max(16, _MIN_AREA_FRACTION * height * width)
    images = np.empty((count, height, width), np.float32)
    masks = np.empty((count, targets_per_image, height, width), bool)
    for index in range(count):
        for _ in range(_MAX_TRIES):
            image, labels = _scene(height, width, rng)
            candidates = np.flatnonzero(np.bincount(labels.ravel())[1:] >= min_area) + 1
            if candidates.size:
                break
        else:
            raise RuntimeError(f"no scene of {height} x {width} pixels with a large enough shape in {_MAX_TRIES} tries")
        chosen = rng.choice(candidates, targets_per_image, replace=candidates.size < targets_per_image)
        images[index], masks[index] = image, labels[None] == chosen[:, None, None]
    return images, masks


def synthetic_shapes(count: int, height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`synthetic_scenes` with one target each: images (N, H, W) float32 in [0, 1], masks (N, H, W) bool."""
    images, masks = synthetic_scenes(count, height, width, rng)
    return images, masks[:, 0]


@torch.no_grad()
def prompted_dice(
    model: SamModel, images: np.ndarray, masks: np.ndarray, prompt: PromptSpec, rng: np.random.Generator
) -> np.ndarray:
    """Dice (N,) of `model`'s single-mask answer to `prompt` for each image (N, H, W) in [0, 1] and its mask.

    Prompts come from the masks (`PromptSpec.sam_prompts`); logits are mapped back to the (H, W) grid and
    thresholded at 0, as in inference.
    """
    frame = SamFrame.from_config(model.config)
    device = next(model.parameters()).device
    inputs = {
        "pixel_values": frame_images(images, frame.image_size),
        **prompt.sam_prompts(masks, frame.image_size, rng),
    }
    outputs = model(**{name: value.to(device) for name, value in inputs.items()}, multimask_output=False)
    logits = sam_logits_to_original(outputs.pred_masks[:, 0, 0].cpu(), masks.shape[1:], frame.image_size)
    return np.array([dice(logit > 0, mask) for logit, mask in zip(logits, masks)])
