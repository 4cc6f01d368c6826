"""Score a (Med-)SAM model on a split: Dice, IoU and HD95 on the original voxel grid, through the predictor users run.

Every (example, class present) is an `EvaluationCase`: the example's normalised slices in canonical order and one
prompt, simulated on the truth, for each slice that holds the class. `MedSAPredictor.predict_logits` segments it
exactly as it segments a user's file; slices without the class get no prompt and an empty mask.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..data.examples import decode_example
from ..data.preprocess import SamFrame
from ..data.prompts import PromptSpec, SlicePrompt
from ..inference.predictor import MedSAPredictor
from ..overlay import PREDICTION_COLOUR, TRUTH_COLOUR, busiest_slice, overlay
from .metrics import MaskScores, mask_scores, summarize

__all__ = ["Evaluation", "EvaluationCase", "evaluate_model", "evaluation_cases"]

SHOWCASE_MIN_SIZE = 384


@dataclass
class EvaluationCase:
    """One (example, class) to evaluate, a 2D image being a stack of depth 1.

    slices: (D, H, W) grey or (D, H, W, 3) colour, normalised to [0, 1], in the voxel order of `decode_example`
        (canonical for volumes); the same array for all classes of an example.
    prompts: one prompt per slice, in its pixels: on the slices that hold the class, None on the others.
    truth: (H, W, D) bool on the original grid. spacing: (3,) mm along H, W, D.
    """

    id: str
    class_name: str
    slices: np.ndarray
    prompts: list[SlicePrompt | None]
    truth: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class Evaluation:
    """Scores of one evaluation run: `summary` as `metrics.summarize` gives it, the per-volume scores, and an
    overlay of prediction (red) against truth (green) on the slice with the most foreground."""

    summary: dict[str, float]
    per_volume: dict[str, dict[str, MaskScores]] = field(default_factory=dict)
    overlay: Image.Image | None = None


def evaluation_cases(
    split: datasets.Dataset, classes: Mapping[str, Sequence[int]], modality: str, prompt: PromptSpec, seed: int = 0
) -> Iterator[EvaluationCase]:
    """Yield an `EvaluationCase` per (example, class present), examples in split order, classes in `classes`
    order. Prompt randomness (jitter, clicks) comes from `seed`, so two runs see the same prompts."""
    rng = np.random.default_rng(seed)
    for example in split:
        decoded = decode_example(example, modality)
        slices = np.moveaxis(decoded.image, 2, 0)
        slices = slices[..., 0] if slices.shape[-1] == 1 else slices
        for class_name, values in classes.items():
            truth = decoded.class_mask(values)
            present = np.flatnonzero(truth.any(axis=(0, 1)))
            if not len(present):
                continue
            prompts: list[SlicePrompt | None] = [None] * truth.shape[2]
            for index, slice_prompt in zip(present, prompt.slice_prompts(np.moveaxis(truth[:, :, present], 2, 0), rng)):
                prompts[index] = slice_prompt
            yield EvaluationCase(decoded.id, class_name, slices, prompts, truth, decoded.spacing)


def _showcase_picture(case: EvaluationCase, logits: torch.Tensor) -> Image.Image:
    """The slice with the most foreground: image, prediction and truth on the original grid, enlarged when small."""
    index = busiest_slice(case.truth)
    truth = case.truth[:, :, index]
    picture = overlay(case.slices[index], [(truth, TRUTH_COLOUR), (logits[index].numpy() > 0, PREDICTION_COLOUR)])
    height, width = truth.shape
    zoom = max(1, -(-SHOWCASE_MIN_SIZE // max(height, width)))
    return picture.resize((width * zoom, height * zoom), Image.NEAREST)


def evaluate_model(
    model: torch.nn.Module,
    split: datasets.Dataset,
    classes: Mapping[str, Sequence[int]],
    modality: str,
    frame: SamFrame,
    prompt: PromptSpec,
    depth: int | None = None,
    batch_size: int = 8,
    max_cases: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Evaluation:
    """Dice, IoU and HD95 (mm) per class and per volume, means over volumes, on the original voxel grid.

    `model` is called like SamModel (with `depth` when `depth` is given: chunks of that many slices, as the
    predictor runs a depth adapter, without overlap). Each case is segmented from prompts simulated on the truth
    (`prompt`, seeded by `seed`); `max_cases` caps the cases for quick checks.
    """
    was_training = model.training
    predictor = MedSAPredictor(
        model,
        chunk_depth=depth or 1,
        overlap=0,
        batch_size=batch_size,
        progress=False,
        frame=frame,
        depth_adapter=depth is not None,
    )
    per_volume: dict[str, dict[str, MaskScores]] = defaultdict(dict)
    showcase, showcase_size = None, -1
    cases = evaluation_cases(split, classes, modality, prompt, seed=seed)
    for number, case in enumerate(tqdm(cases, desc="evaluating", disable=not progress, leave=False)):
        if max_cases is not None and number >= max_cases:
            break
        logits = predictor.predict_logits(case.slices, case.prompts)
        prediction = (logits > 0).permute(1, 2, 0).numpy()
        truth, spacing = case.truth, case.spacing
        if truth.shape[2] == 1:  # a 2D image: score it in 2D (a one-slice volume would be all surface for HD95)
            prediction, truth, spacing = prediction[..., 0], truth[..., 0], spacing[:2]
        per_volume[case.id][case.class_name] = mask_scores(prediction, truth, spacing)
        if case.truth.sum() > showcase_size:
            showcase, showcase_size = (case, logits), int(case.truth.sum())
    model.train(was_training)
    if not per_volume:
        raise ValueError("the evaluation split holds no example with any of the classes")
    picture = _showcase_picture(*showcase) if showcase else None
    return Evaluation(summary=summarize(list(per_volume.values())), per_volume=dict(per_volume), overlay=picture)
