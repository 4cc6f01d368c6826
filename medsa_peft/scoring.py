"""Score a (Med-)SAM model on the evaluation cases of a split: Dice, IoU and HD95 on the original voxel grid."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .data import (
    EvaluationCase,
    PromptSpec,
    SamFrame,
    covering_windows,
    evaluation_cases,
    frame_masks,
    resized_shape,
)
from .data.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD, sam_logits_to_original
from .data.samples import nearest_present_slices
from .metrics import MaskScores, mask_scores, summarize
from .overlay import PREDICTION_COLOUR, TRUTH_COLOUR, overlay


SHOWCASE_MIN_SIZE = 384


@dataclass
class Evaluation:
    """Scores of one evaluation run: `summary` as `metrics.summarize` gives it, the per-volume scores, and an
    overlay of prediction (red) against truth (green) on the slice with the most foreground."""

    summary: dict[str, float]
    per_volume: dict[str, dict[str, MaskScores]] = field(default_factory=dict)
    overlay: Image.Image | None = None


def _prompts_for(case: EvaluationCase, slice_indices: np.ndarray) -> dict[str, torch.Tensor]:
    """The prompts of `slice_indices`, each slice taking the prompt of the nearest slice that holds the class."""
    present = np.zeros(case.pixel_values.shape[0], dtype=bool)
    present[case.prompt_slices.numpy()] = True
    nearest = nearest_present_slices(present)[slice_indices]
    rows = np.searchsorted(case.prompt_slices.numpy(), nearest)
    return {name: prompt[rows] for name, prompt in case.prompts.items()}


@torch.no_grad()
def predict_case(model, case: EvaluationCase, depth: int | None, batch_size: int = 8) -> torch.Tensor:
    """Mask logits (D, s, s) in SAM's frame for every slice of `case`; slices left out hold -inf.

    Without `depth` (a 2D model) only the slices with a prompt are predicted. With `depth`, windows of
    `depth` consecutive slices cover the class's extent; slices inside it without the object carry the
    prompt of the nearest slice with it, as in training.
    """
    total = case.pixel_values.shape[0]
    device = next(model.parameters()).device
    logits = None
    if depth is None:
        groups = [case.prompt_slices[i : i + batch_size].numpy() for i in range(0, len(case.prompt_slices), batch_size)]
        window = 1
    else:
        window = min(depth, total)
        first, stop = int(case.prompt_slices.min()), int(case.prompt_slices.max()) + 1
        windows = covering_windows(first, stop, window, total)
        per_call = max(1, batch_size // window)
        groups = [
            np.concatenate([np.asarray(indices) for indices in windows[i : i + per_call]])
            for i in range(0, len(windows), per_call)
        ]
    for indices in groups:
        inputs = {name: value.to(device) for name, value in _prompts_for(case, indices).items()}
        if depth is not None:
            inputs["depth"] = window
        out = model(pixel_values=case.pixel_values[indices].to(device), multimask_output=False, **inputs)
        predicted = out.pred_masks[:, 0, 0].float().cpu()
        if logits is None:
            logits = torch.full((total, *predicted.shape[1:]), float("-inf"))
        logits[torch.as_tensor(indices)] = predicted
    if depth is not None:  # keep the prediction inside the class's extent only
        outside = torch.ones(total, dtype=torch.bool)
        outside[first:stop] = False
        logits[outside] = float("-inf")
    return logits


def _showcase_picture(case: EvaluationCase, logits: torch.Tensor, image_size: int):
    """The slice with the most foreground: image, prediction and truth in SAM's (unpadded) frame."""
    index = int(np.argmax(case.truth.sum(axis=(0, 1))))
    height, width = resized_shape(case.original_size, image_size)
    mean, std = torch.tensor(SAM_PIXEL_MEAN)[:, None, None], torch.tensor(SAM_PIXEL_STD)[:, None, None]
    image = (case.pixel_values[index] * std + mean).permute(1, 2, 0)[:height, :width].numpy()
    upsampled = F.interpolate(logits[index][None, None], (image_size, image_size), mode="bilinear")[0, 0]
    prediction = (upsampled > 0)[:height, :width].numpy()
    truth = frame_masks(case.truth[None, :, :, index], image_size)[0, :height, :width].numpy()
    picture = overlay(image, [(truth, TRUTH_COLOUR), (prediction, PREDICTION_COLOUR)])
    zoom = max(1, -(-SHOWCASE_MIN_SIZE // max(height, width)))  # small frames are enlarged to be seen
    return picture.resize((width * zoom, height * zoom), Image.NEAREST)


def evaluate_model(
    model,
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

    Each (example, class present) is segmented from prompts simulated on the truth (`prompt`, seeded by
    `seed` so every evaluation of a run sees the same prompts). `max_cases` caps the cases for quick checks.
    """
    was_training = model.training
    model.eval()
    per_volume: dict[str, dict[str, MaskScores]] = defaultdict(dict)
    showcase, showcase_size = None, -1
    cases: Iterable[EvaluationCase] = evaluation_cases(split, classes, modality, frame, prompt, seed=seed)
    for number, case in enumerate(tqdm(cases, desc="evaluating", disable=not progress, leave=False)):
        if max_cases is not None and number >= max_cases:
            break
        logits = predict_case(model, case, depth, batch_size)
        original = sam_logits_to_original(logits.clamp(min=-1e4), case.original_size, frame.image_size)
        prediction = (original > 0).permute(1, 2, 0).numpy()
        truth, spacing = case.truth, case.spacing
        if truth.shape[2] == 1:  # a 2D image: score it in 2D (a one-slice volume would be all surface for HD95)
            prediction, truth, spacing = prediction[..., 0], truth[..., 0], spacing[:2]
        per_volume[case.id][case.class_name] = mask_scores(prediction, truth, spacing)
        if case.truth.sum() > showcase_size:
            showcase, showcase_size = (case, logits), int(case.truth.sum())
    model.train(was_training)
    if not per_volume:
        raise ValueError("the evaluation split holds no example with any of the classes")
    picture = _showcase_picture(*showcase, frame.image_size) if showcase else None
    return Evaluation(summary=summarize(list(per_volume.values())), per_volume=dict(per_volume), overlay=picture)
