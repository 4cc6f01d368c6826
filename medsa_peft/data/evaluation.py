"""Evaluation cases: for every example and every class present in it, the whole stack in SAM's frame,
per-slice prompts for the slices that hold the class, and the truth on the original grid."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import torch

from .examples import decode_example
from .preprocess import SamFrame
from .prompts import PromptSpec


@dataclass
class EvaluationCase:
    """One (example, class) to evaluate, a 2D image being a stack of depth 1.

    pixel_values: (D, 3, S, S) every slice in SAM's frame (the same tensor for all classes of an example).
    prompt_slices: (M,) int64, the slices that hold the class; only they carry a prompt, the others are
        predicted empty.
    prompts: SamModel prompt inputs for those M slices, in their order: {"input_boxes": (M, 1, 4)} or
        {"input_points": (M, 1, k, 2), "input_labels": (M, 1, k)}.
    truth: (H, W, D) bool on the original grid, voxel order as in `decode_example` (canonical for volumes).
    spacing: (3,) mm along H, W, D.
    """

    id: str
    class_name: str
    pixel_values: torch.Tensor
    prompt_slices: torch.Tensor
    prompts: dict[str, torch.Tensor]
    truth: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of a slice on the original grid, the size `sam_logits_to_original` maps back to."""
        return self.truth.shape[:2]


def evaluation_cases(
    split: datasets.Dataset,
    classes: Mapping[str, Sequence[int]],
    modality: str,
    frame: SamFrame,
    prompt: PromptSpec,
    seed: int = 0,
) -> Iterator[EvaluationCase]:
    """Yield an `EvaluationCase` per (example, class present), examples in split order, classes in `classes`
    order. Prompt randomness (jitter, clicks) comes from `seed`, so two runs see the same prompts."""
    rng = np.random.default_rng(seed)
    for example in split:
        decoded = decode_example(example, modality)
        pixel_values = None
        for class_name, values in classes.items():
            truth = decoded.class_mask(values)
            prompt_slices = np.flatnonzero(truth.any(axis=(0, 1)))
            if not len(prompt_slices):
                continue
            if pixel_values is None:
                pixel_values = decoded.sam_pixel_values(frame.image_size)
            slice_masks = np.moveaxis(truth[:, :, prompt_slices], 2, 0)
            yield EvaluationCase(
                id=decoded.id,
                class_name=class_name,
                pixel_values=pixel_values,
                prompt_slices=torch.from_numpy(prompt_slices).long(),
                prompts=prompt.sam_prompts(slice_masks, frame.image_size, rng),
                truth=truth,
                spacing=decoded.spacing,
            )
