"""Prompts for SAM: simulated from a mask (clicks, boxes, jittered boxes), a recipe for them (`PromptSpec`), one
slice's prompt in pixels (`SlicePrompt`) and the one conversion of prompts into SamModel inputs (`prompt_tensors`).

Frame. Everything lives in the pixel frame of the (H, W) boolean mask given, with coordinates
(x, y) = (column, row) as SAM expects them (the authors' code swaps them; we don't).

- Clicks: a click on the pixel at row r, column c is the point (x, y) = (c, r). SAM's prompt
  encoder adds 0.5, which puts it at the centre of that pixel. Clicks always lie on such pixels.
- Boxes: pixel-edge convention. The pixel (r, c) covers [c, c + 1) x [r, r + 1), and the box of a
  mask, (x0, y0, x1, y1) = (min c, min r, max c + 1, max r + 1), is the rectangle covering its
  pixels exactly (as COCO and SA-1B boxes do). `box_iou` is the IoU of such rectangles, so a box
  of a one-pixel object has area 1.
- Resizing by s (e.g. s = 1024 / max(H, W)) scales both: (x * s, y * s). With a centre-aligned
  nearest-neighbour resize of the mask (PIL NEAREST, torch "nearest-exact") and s >= 1, a scaled
  click still falls on an object pixel: the pixel floor(x * s + 0.5), the one SAM reads.

Empty regions. A prompt that must come from an empty region raises `EmptyMaskError` (a
ValueError): k >= 1 positive clicks, a box or a jittered box of an empty mask; k >= 1 negative
clicks of a mask without background.
Negative clicks of an empty mask are drawn anywhere in the image.

Correction clicks (`correction_click`): SAM's iterative protocol, the next click on the error of a
prediction against the truth, positive in a missed region, negative in a false positive.

Points and boxes are float32, labels int64, ready for `torch.from_numpy`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from .preprocess import SamFrame, frame_coordinates

__all__ = [
    "EmptyMaskError",
    "PromptError",
    "PromptSpec",
    "SlicePrompt",
    "bounding_box",
    "box_iou",
    "click_prompt",
    "correction_click",
    "jittered_box",
    "negative_clicks",
    "positive_clicks",
    "prompt_tensors",
]

# Jitter search: the box is moved along a random direction by t box sizes, t on this grid.
_JITTER_MAX_STEP = 32.0
_JITTER_GRID_POINTS = 513
_JITTER_BISECTION_STEPS = 40
_JITTER_DIRECTIONS = 100


class EmptyMaskError(ValueError):
    """The region a prompt has to come from holds no pixel."""


def _check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"{name} must be a boolean array (H, W); got dtype {mask.dtype}, shape {mask.shape}")
    return mask


def _check_count(k: int) -> None:
    if k < 0:
        raise ValueError(f"the number of clicks must be >= 0, got {k}")


def _sample_pixels(region: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k pixels of `region` as (x, y) points, (k, 2); distinct while the region has k pixels.

    The pixels are drawn by their rank in row-major order, and only the rows that hold a drawn rank are searched,
    so a large region costs counts per row, not a list of its pixels.
    """
    row_counts = np.count_nonzero(region, axis=1)
    total = int(row_counts.sum())
    chosen = rng.choice(total, size=k, replace=k > total)
    ends = np.cumsum(row_counts)
    rows = np.searchsorted(ends, chosen, side="right")
    cols = [np.flatnonzero(region[row])[rank - (ends[row] - row_counts[row])] for row, rank in zip(rows, chosen)]
    return np.stack([np.asarray(cols, dtype=np.int64), rows], axis=1).astype(np.float32)


def positive_clicks(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k clicks drawn uniformly from the object pixels of `mask` (H, W): (k, 2) float32 (x, y).

    The clicks are distinct when the object has at least k pixels, else pixels repeat.
    """
    mask = _check_mask(mask)
    _check_count(k)
    if k and not mask.any():
        raise EmptyMaskError("mask has no object pixel: cannot place a positive click")
    return _sample_pixels(mask, k, rng)


def negative_clicks(mask: np.ndarray, k: int, rng: np.random.Generator, *, margin: float = 0.5) -> np.ndarray:
    """k clicks on background pixels near the object of `mask` (H, W): (k, 2) float32 (x, y).

    "Near" is the object's bounding box grown on each side by `margin` times its width (height),
    at least one pixel, clipped to the image: its background pixels are drawn uniformly. That
    region holds background whenever the image does, so clicks never fall back elsewhere. An
    empty mask gives clicks anywhere; a mask without background raises EmptyMaskError.
    """
    mask = _check_mask(mask)
    _check_count(k)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not mask.any():
        return _sample_pixels(np.ones_like(mask), k, rng)
    x0, y0, x1, y1 = bounding_box(mask).astype(int)
    grow_x = max(1, math.ceil(margin * (x1 - x0)))
    grow_y = max(1, math.ceil(margin * (y1 - y0)))
    top, left = max(0, y0 - grow_y), max(0, x0 - grow_x)
    # the grown box holds every candidate; its row-major order is the image's, so ranks draw the same pixels
    surroundings = ~mask[top : y1 + grow_y, left : x1 + grow_x]
    if k and not surroundings.any():
        raise EmptyMaskError("mask covers the whole image: no background pixel for a negative click")
    return _sample_pixels(surroundings, k, rng) + np.array([left, top], dtype=np.float32)


def click_prompt(
    mask: np.ndarray, num_positive: int, num_negative: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positive then negative clicks: points (n, 2) float32 (x, y) and labels (n,) int64, 1 / 0."""
    points = np.concatenate([positive_clicks(mask, num_positive, rng), negative_clicks(mask, num_negative, rng)])
    labels = np.concatenate([np.ones(num_positive, np.int64), np.zeros(num_negative, np.int64)])
    return points, labels


def correction_click(
    prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator, *, uniform: bool = False
) -> tuple[np.ndarray, int] | None:
    """The next click of SAM's iterative protocol on `prediction` against `truth`, both (H, W) bool.

    The error splits into connected regions (4-connected) of missed object pixels and of false positives; the
    click goes into the largest one (a missed region first on a tie), positive (label 1) in a missed region,
    negative (label 0) in a false positive. It lands on the region's pixel farthest from the region's boundary
    (Euclidean distance transform; the image edge counts as boundary), as interactive evaluations click, the
    ties drawn by `rng`; with `uniform`, on a pixel of the region drawn uniformly, as SAM trains.
    Returns the point (2,) float32 (x, y) and the label, or None when the prediction is exact.
    """
    prediction, truth = _check_mask(prediction, "prediction"), _check_mask(truth, "truth")
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} must have one shape")
    largest, label = None, 1
    for error, error_label in ((truth & ~prediction, 1), (prediction & ~truth, 0)):
        regions, count = ndimage.label(error)
        if count:
            sizes = np.bincount(regions.ravel())[1:]
            if largest is None or sizes.max() > np.count_nonzero(largest):
                largest, label = regions == np.argmax(sizes) + 1, error_label
    if largest is None:
        return None
    if uniform:
        return _sample_pixels(largest, 1, rng)[0], label
    distance = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
    return _sample_pixels(distance == distance.max(), 1, rng)[0], label


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """The box (4,) float32 (x0, y0, x1, y1) covering the object pixels of `mask` (H, W).

    Pixel-edge convention (module docstring): x1 = last object column + 1, y1 = last row + 1.
    """
    mask = _check_mask(mask)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise EmptyMaskError("mask has no object pixel: cannot compute its bounding box")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def _check_box(box: np.ndarray, name: str) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,) or box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{name} must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box.tolist()}")
    return box


def _iou_with(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of every box of `boxes` (n, 4) with `box` (4,): (n,); 0 where the union is empty."""
    inter_w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    intersection = inter_w * inter_h
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0.0 when both have zero area."""
    return float(_iou_with(_check_box(a, "a")[None], _check_box(b, "b"))[0])


def _ordered_inside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (n, 4) with corners put in order and clipped to the image; continuous in the input."""
    x0, x1 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y0, y1 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    ordered = np.stack([x0, y0, x1, y1], axis=1)
    return np.clip(ordered, 0, [width, height, width, height]).astype(np.float32)


def _moved_boxes(
    truth: np.ndarray, move: np.ndarray, steps: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes truth + t * move for t in `steps`, inside the image: (n, 4) float32, and their IoU with truth (n,)."""
    boxes = _ordered_inside(truth + steps[:, None] * move, width, height)
    return boxes, _iou_with(boxes.astype(np.float64), truth)


def jittered_box(
    mask: np.ndarray, target_iou: float, rng: np.random.Generator, tolerance: float = 0.05
) -> np.ndarray:
    """A box (4,) float32 inside the image whose IoU with `bounding_box(mask)` is target_iou +- tolerance.

    The paper's "BBox 0.5 / 0.75" prompts. The true box is moved along a random direction of
    R^4 (each corner coordinate scaled by the box width or height, so shifts, growth and
    shrinkage all occur), ordered and clipped to the image. Its IoU is continuous in the step
    length and 1 at 0: the first grid step below the target brackets a crossing, which
    bisection pins down, so the IoU is the target up to float32 rounding; `tolerance` guards
    that. Directions whose IoU never drops that low (growth clipped by the image) are redrawn.
    target_iou = 1 gives the exact box.
    """
    truth = bounding_box(mask)
    if not 0 < target_iou <= 1:
        raise ValueError(f"target_iou must be in (0, 1], got {target_iou}")
    if target_iou == 1:
        return truth
    if not 0 < tolerance < target_iou:
        raise ValueError(f"tolerance must be in (0, target_iou={target_iou}), got {tolerance}")
    height, width = np.shape(mask)
    truth64 = truth.astype(np.float64)
    box_size = np.array([truth[2] - truth[0], truth[3] - truth[1]] * 2, dtype=np.float64)
    steps = np.linspace(0.0, _JITTER_MAX_STEP, _JITTER_GRID_POINTS)

    for _ in range(_JITTER_DIRECTIONS):
        direction = rng.normal(size=4)
        move = direction / np.linalg.norm(direction) * box_size
        _, grid_ious = _moved_boxes(truth64, move, steps, width, height)
        below = np.flatnonzero(grid_ious < target_iou)
        if below.size == 0:
            continue
        low, high = steps[below[0] - 1], steps[below[0]]  # IoU(low) >= target > IoU(high)
        for _ in range(_JITTER_BISECTION_STEPS):
            middle = (low + high) / 2
            _, ious = _moved_boxes(truth64, move, np.array([middle]), width, height)
            low, high = (middle, high) if ious[0] >= target_iou else (low, middle)
        boxes, ious = _moved_boxes(truth64, move, np.array([low]), width, height)
        if abs(ious[0] - target_iou) <= tolerance:
            return boxes[0]
    raise RuntimeError(
        f"no box with IoU {target_iou} +- {tolerance} found for box {truth.tolist()} in a {width}x{height} image"
    )


class PromptError(ValueError):
    """A prompt that does not fit the image: outside it, the wrong count, or an unusable form."""


@dataclass(frozen=True)
class SlicePrompt:
    """The prompt of one slice: a box (x0, y0, x1, y1) and / or points (x, y) with labels (1 object, 0 background).

    Coordinates are pixels of the slice, (x, y) = (column, row); box edges are pixel edges (see the module docstring).
    Labels default to 1 for every point.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    def __post_init__(self):
        points = tuple(tuple(float(value) for value in point) for point in self.points)
        labels = tuple(int(label) for label in self.labels) if self.labels else (1,) * len(points)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            box = tuple(float(value) for value in self.box)
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(f"a box is (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {self.box}")
            object.__setattr__(self, "box", box)
        if self.box is None and not points:
            raise PromptError("a slice prompt needs a box or at least one point")
        if not all(math.isfinite(value) for value in (*(self.box or ()), *(v for point in points for v in point))):
            raise PromptError(f"prompt coordinates must be finite numbers, got box {self.box}, points {points}")
        if any(len(point) != 2 for point in points):
            raise PromptError(f"points are (x, y) pairs, got {self.points}")
        if len(labels) != len(points) or any(label not in (0, 1) for label in labels):
            raise PromptError(
                f"give one label, 1 (object) or 0 (background), per point; got {self.labels} for {len(points)} points"
            )

    @property
    def form(self) -> tuple[bool, int]:
        """(has a box, number of points): prompts batched together must share it."""
        return self.box is not None, len(self.points)

    def check_inside(self, height: int, width: int, where: str) -> None:
        """Raise PromptError unless the box and points lie in a `height` x `width` slice."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise PromptError(f"{where}: box {self.box} lies outside the {width} x {height} (x, y) slice")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(f"{where}: point ({x:g}, {y:g}) lies outside the {width} x {height} (x, y) slice")


def prompt_tensors(
    prompts: Sequence[SlicePrompt], original_size: tuple[int, int], frame: SamFrame | int
) -> dict[str, torch.Tensor]:
    """SamModel's prompt inputs for N slice prompts of one form, on (H, W) = `original_size` slices, in SAM's
    `frame` (`frame_coordinates`): input_boxes (N, 1, 4) float32, input_points (N, 1, k, 2) float32 and input_labels
    (N, 1, k) int64, as far as the prompts hold boxes and points. Training, evaluation and the predictor all
    convert prompts here."""
    tensors = {}
    if prompts[0].box is not None:
        boxes = frame_coordinates(np.array([prompt.box for prompt in prompts], np.float32), original_size, frame)
        tensors["input_boxes"] = torch.from_numpy(boxes)[:, None]
    if prompts[0].points:
        points = np.array([prompt.points for prompt in prompts], np.float32)
        tensors["input_points"] = torch.from_numpy(frame_coordinates(points, original_size, frame))[:, None]
        tensors["input_labels"] = torch.tensor([prompt.labels for prompt in prompts], dtype=torch.int64)[:, None]
    return tensors


_SPEC_PATTERN = re.compile(r"^(?:box(?::(?P<iou>[0-9.]+))?|points:(?P<positive>\d+)(?:\+(?P<negative>\d+))?)$")


@dataclass(frozen=True)
class PromptSpec:
    """A prompt recipe: `mode` "box" (exact when `box_iou` is None, else jittered to that IoU with the true
    box) or "points" (`num_positive` clicks inside the object, `num_negative` outside)."""

    mode: Literal["box", "points"]
    box_iou: float | None = None
    num_positive: int = 1
    num_negative: int = 0

    def __post_init__(self):
        if self.mode == "box":
            if self.box_iou is not None and not 0.0 < self.box_iou <= 1.0:
                raise ValueError(f"box_iou must be in (0, 1], got {self.box_iou}")
        elif self.mode == "points":
            if self.num_positive < 1 or self.num_negative < 0:
                raise ValueError(
                    f"points need num_positive >= 1 and num_negative >= 0, got {self.num_positive}, {self.num_negative}"
                )
        else:
            raise ValueError(f"prompt mode must be 'box' or 'points', got {self.mode!r}")

    @classmethod
    def parse(cls, text: str) -> PromptSpec:
        """Parse "box", "box:0.75", "points:1", "points:3" or "points:1+1" (positive+negative clicks)."""
        match = _SPEC_PATTERN.match(text.strip())
        if match is None:
            raise ValueError(
                f"cannot parse prompt {text!r}; expected 'box', 'box:IOU', 'points:K' or 'points:K+NEG'"
            )
        if match["positive"] is not None:
            return cls("points", num_positive=int(match["positive"]), num_negative=int(match["negative"] or 0))
        return cls("box", box_iou=None if match["iou"] is None else float(match["iou"]))

    def __str__(self) -> str:
        if self.mode == "box":
            return "box" if self.box_iou is None else f"box:{self.box_iou:g}"
        return f"points:{self.num_positive}" + (f"+{self.num_negative}" if self.num_negative else "")

    def slice_prompts(self, masks: np.ndarray, rng: np.random.Generator) -> list[SlicePrompt]:
        """One prompt for each of N non-empty masks (N, H, W), in the masks' pixels."""
        if self.mode == "box":
            return [
                SlicePrompt(box=bounding_box(mask) if self.box_iou is None else jittered_box(mask, self.box_iou, rng))
                for mask in masks
            ]
        clicks = (click_prompt(mask, self.num_positive, self.num_negative, rng) for mask in masks)
        return [SlicePrompt(points=points.tolist(), labels=labels.tolist()) for points, labels in clicks]

    def sam_prompts(
        self, masks: np.ndarray, frame: SamFrame | int, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """`slice_prompts` as SamModel inputs in SAM's `frame` (`prompt_tensors`)."""
        return prompt_tensors(self.slice_prompts(masks, rng), masks.shape[1:], frame)
