"""Which prompt a sample gets: a (jittered) box or k clicks, parsed from the CLI, made in SAM's frame."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .preprocess import frame_coordinates
from .prompts import bounding_box, click_prompt, jittered_box

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

    def sam_prompts(self, masks: np.ndarray, image_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Prompts for N non-empty masks (N, H, W), one per mask, in SAM's frame and shaped as SamModel takes
        them: {"input_boxes": (N, 1, 4)} or {"input_points": (N, 1, k, 2) float32, "input_labels": (N, 1, k) int64}.
        """
        original_size = masks.shape[1:]
        if self.mode == "box":
            boxes = [
                bounding_box(mask) if self.box_iou is None else jittered_box(mask, self.box_iou, rng) for mask in masks
            ]
            framed = frame_coordinates(np.stack(boxes), original_size, image_size)
            return {"input_boxes": torch.from_numpy(framed[:, None])}
        points, labels = zip(*(click_prompt(mask, self.num_positive, self.num_negative, rng) for mask in masks))
        framed = frame_coordinates(np.stack(points), original_size, image_size)
        return {
            "input_points": torch.from_numpy(framed[:, None]),
            "input_labels": torch.as_tensor(np.stack(labels), dtype=torch.int64)[:, None],
        }
