"""Score a (Med-)SAM model on a split: Dice, IoU and HD95 on the original voxel grid, through the predictor users run.

Every (example, class present) is an `EvaluationCase`: the example's normalised slices in canonical order and one
prompt, simulated on the truth, for each slice that holds the class. `MedSAPredictor.predict_logits` segments it
exactly as it segments a user's file; slices without the class get no prompt and an empty mask.
`evaluate_interactive` scores SAM's iterative protocol: a first click, then correction clicks on each slice's error.
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

from ..data.examples import decode_example, is_volume_dataset
from ..data.preprocess import SamFrame
from ..data.prompts import PromptSpec, SlicePrompt, correction_click
from ..inference.predictor import MedSAPredictor
from ..overlay import class_colour, figure, overlay, radiological
from .metrics import MaskScores, mask_scores, summarize

__all__ = [
    "Evaluation",
    "EvaluationCase",
    "case_scores",
    "evaluate_interactive",
    "evaluate_model",
    "evaluation_cases",
]

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
    overlay of the example with the most foreground (`_showcase_picture`)."""

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


def case_scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> MaskScores:
    """`mask_scores` of a case's (H, W, D) bool prediction and truth with its (3,) spacing; a 2D image (D = 1) is
    scored in 2D, since as a one-slice volume all of it would be surface for HD95."""
    if truth.shape[2] == 1:
        return mask_scores(prediction[..., 0], truth[..., 0], spacing[:2])
    return mask_scores(prediction, truth, spacing)


class _Showcase:
    """Keeps, of the cases seen so far (grouped by example, as `evaluation_cases` yields them), the example with the
    most foreground over all its classes: its slice with the most foreground, and each class's truth and prediction
    there. The example being seen is held with its masks bit-packed, one bit a voxel."""

    def __init__(self):
        self.size = -1
        self.image: np.ndarray | None = None  # the kept slice, (H, W) grey or (H, W, 3) colour, canonical order
        self.masks: list[tuple[str, np.ndarray, np.ndarray]] = []  # (class name, truth, prediction), (H, W) bool
        self._id: str | None = None
        self._slices: np.ndarray | None = None
        self._areas: np.ndarray | int = 0
        self._packed: list[tuple[str, np.ndarray, np.ndarray]] = []

    def add(self, case: EvaluationCase, prediction: np.ndarray) -> None:
        """Take one case and its prediction, (H, W, D) bool like `case.truth`."""
        if case.id != self._id:
            self.close()
            self._id, self._slices, self._areas, self._packed = case.id, case.slices, 0, []
        self._areas = self._areas + case.truth.sum(axis=(0, 1))
        self._packed.append((case.class_name, np.packbits(case.truth), np.packbits(prediction)))

    def close(self) -> None:
        """Keep the example being seen if it has more foreground than the one kept."""
        if self._id is None or int(np.sum(self._areas)) <= self.size:
            return
        index = int(np.argmax(self._areas))
        shape = (*self._slices.shape[1:3], len(self._areas))

        def plane(packed: np.ndarray) -> np.ndarray:
            return np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape)[:, :, index].astype(bool)

        self.size, self.image = int(np.sum(self._areas)), self._slices[index].copy()
        self.masks = [(name, plane(truth), plane(prediction)) for name, truth, prediction in self._packed]


def _showcase_picture(showcase: _Showcase, class_names: Sequence[str], axial: bool) -> Image.Image:
    """Truth beside prediction on the kept slice, on the original grid, enlarged when small: a colour per class (by
    its place in `class_names`) and a legend naming the classes shown; `axial` slices (of volumes) in radiological
    view, as `medsa-peft predict` shows them, pictures as stored."""
    view = radiological if axial else np.asarray
    colours = {name: class_colour(index) for index, name in enumerate(class_names)}
    panels = [
        (title, overlay(view(showcase.image), [(view(masks[which]), colours[name]) for name, *masks in showcase.masks]))
        for title, which in (("truth", 0), ("prediction", 1))
    ]
    return figure(panels, [(name, colours[name]) for name, *_ in showcase.masks], min_size=SHOWCASE_MIN_SIZE)


def _scoring_predictor(
    model: torch.nn.Module, frame: SamFrame, depth: int | None, batch_size: int, **options
) -> MedSAPredictor:
    """The predictor scoring runs `model` through: chunks of `depth` slices without overlap, as training sees them;
    `options`: other arguments of `MedSAPredictor`."""
    return MedSAPredictor(
        model,
        chunk_depth=depth or 1,
        overlap=0,
        batch_size=batch_size,
        progress=False,
        frame=frame,
        depth_adapter=depth is not None,
        **options,
    )


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
    axial_pictures: bool = False,
) -> Evaluation:
    """Dice, IoU and HD95 (mm) per class and per volume, means over volumes, on the original voxel grid.

    `model` is called like SamModel (with `depth` when `depth` is given: chunks of that many slices, as the
    predictor runs a depth adapter, without overlap). Each case is segmented from prompts simulated on the truth
    (`prompt`, seeded by `seed`); `max_cases` caps the cases for quick checks. `progress`: a bar over the examples
    when stderr is a terminal. `axial_pictures`: the split's 2D pictures are axial slices in canonical (RAS+) voxel
    order (the MNI152 "2d" config), shown in radiological view in the overlay as volumes are.
    """
    was_training = model.training
    predictor = _scoring_predictor(model, frame, depth, batch_size, embedding_cache=0)  # a slice decoded once: no cache
    per_volume: dict[str, dict[str, MaskScores]] = defaultdict(dict)
    showcase = _Showcase()
    cases = evaluation_cases(split, classes, modality, prompt, seed=seed)
    # counts examples (their cases are known only once decoded); a bar on a terminal only, none in a log file
    bar = tqdm(total=len(split), desc="evaluating", unit="example", disable=None if progress else True, leave=False)
    for number, case in enumerate(cases):
        if max_cases is not None and number >= max_cases:
            break
        if case.id not in per_volume:  # the first case of an example
            bar.update()
        logits = predictor.predict_logits(case.slices, case.prompts)
        prediction = (logits > 0).permute(1, 2, 0).numpy()
        per_volume[case.id][case.class_name] = case_scores(prediction, case.truth, case.spacing)
        showcase.add(case, prediction)
    bar.close()
    model.train(was_training)
    if not per_volume:
        raise ValueError("the evaluation split holds no example with any of the classes")
    showcase.close()
    picture = _showcase_picture(showcase, list(classes), axial_pictures or is_volume_dataset(split.features))
    return Evaluation(summary=summarize(list(per_volume.values())), per_volume=dict(per_volume), overlay=picture)


def evaluate_interactive(
    model: torch.nn.Module,
    split: datasets.Dataset,
    classes: Mapping[str, Sequence[int]],
    modality: str,
    frame: SamFrame,
    clicks: Sequence[int] = (1, 3, 5),
    depth: int | None = None,
    batch_size: int = 8,
    max_cases: int | None = None,
    seed: int = 0,
    progress: bool = True,
    input_masks: bool = True,
) -> dict[int, Evaluation]:
    """Scores after 1, 3, 5... clicks of SAM's iterative protocol, as `evaluate_model` scores one prompt.

    Every slice that holds the class gets a first positive click drawn in the object (`points:1`, seeded by `seed`),
    then, while its mask is wrong, a correction click on its error (`correction_click`: in the largest error region,
    farthest from its boundary); each round segments the slices that got a click from all their clicks so far, with
    their previous low-resolution logits as `input_masks` (unless `input_masks` is False: for a model whose mask
    input never trained), the image embeddings served from the predictor's cache. A slice whose mask is exact takes
    no more clicks and keeps it. `clicks`: the counts to score, 1 or more; the others as in `evaluate_model`.
    Returns an Evaluation (without overlay) per count of clicks.
    """
    if not clicks or min(clicks) < 1:
        raise ValueError(f"clicks must be counts of 1 or more, got {list(clicks)}")
    was_training = model.training
    predictor = _scoring_predictor(model, frame, depth, batch_size)  # clicks come back: cached
    rng = np.random.default_rng(seed)
    per_volume: dict[int, dict[str, dict[str, MaskScores]]] = {count: defaultdict(dict) for count in clicks}
    cases = evaluation_cases(split, classes, modality, PromptSpec("points", num_positive=1), seed=seed)
    bar = tqdm(total=len(split), desc="evaluating", unit="example", disable=None if progress else True, leave=False)
    seen: set[str] = set()
    for number, case in enumerate(cases):
        if max_cases is not None and number >= max_cases:
            break
        if case.id not in seen:
            seen.add(case.id)
            bar.update()
        # the slices of an example stay cached through its classes' rounds
        predictor.embedding_cache = max(predictor.embedding_cache, len(case.slices))
        truth = np.moveaxis(case.truth, 2, 0)
        prompts, clicked = list(case.prompts), list(case.prompts)
        masks = predictor.predict_masks(case.slices, clicked)
        prediction, low_res = masks.logits[:, 0] > 0, masks.low_res[:, 0].clone()
        for count in range(1, max(clicks) + 1):
            if count > 1:
                clicked = [None] * len(prompts)
                for index, prompt in enumerate(prompts):
                    click = None if prompt is None else correction_click(prediction[index].numpy(), truth[index], rng)
                    if click is not None:
                        point, label = click
                        prompts[index] = clicked[index] = SlicePrompt(
                            points=(*prompt.points, tuple(point.tolist())), labels=(*prompt.labels, label)
                        )
                if any(clicked):
                    masks = predictor.predict_masks(case.slices, clicked, input_masks=low_res if input_masks else None)
                    again = [index for index, prompt in enumerate(clicked) if prompt is not None]
                    prediction[again], low_res[again] = masks.logits[again, 0] > 0, masks.low_res[again, 0]
            if count in per_volume:
                scored = prediction.permute(1, 2, 0).numpy()
                per_volume[count][case.id][case.class_name] = case_scores(scored, case.truth, case.spacing)
    bar.close()
    model.train(was_training)
    if not seen:
        raise ValueError("the evaluation split holds no example with any of the classes")
    return {
        count: Evaluation(summary=summarize(list(scores.values())), per_volume=dict(scores))
        for count, scores in sorted(per_volume.items())
    }
