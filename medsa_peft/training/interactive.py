"""SAM's iterative training protocol, `examples/train.py --correction_clicks N`: simulated correction clicks.

After the forward pass with the sampled prompt, each of N rounds adds to every slice's prompt one click on the error
of its previous prediction against the target (`data.prompts.correction_click` with `uniform=True`: a pixel drawn
uniformly in the largest error region, positive in a miss, negative in a false positive; a box prompt keeps its box
and gains points, as SAM does), feeds the previous low-resolution logits back as `input_masks` (detached), and
decodes again. The image embeddings of the first pass serve every round: the image encoder (with Med-SA's depth
adapter, which needs the slices of a chunk together) runs once per batch, and only SAM's prompt encoder and mask
decoder (with HyP-Adpt, which reads the prompt) run again. Gradients reach the image encoder from every round.

Clicks lie in the mask grid of `pred_masks` (s x s), where the targets are, restricted to the part of SAM's frame
the image covers (errors in the padding are never shown to a user). A slice whose prediction is exact gets SAM's
"not a point" (label -1, the padding SAM's prompt encoder itself adds), so that every slice of the batch has the
same number of points.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel
from transformers import SamModel

from ..data.preprocess import SamFrame, resized_shape
from ..data.prompts import correction_click

__all__ = ["CorrectionRounds", "NOT_A_POINT", "image_regions", "next_clicks"]

NOT_A_POINT = -1  # SamPromptEncoder's label of a padding point
PROMPT_INPUTS = ("input_boxes", "input_points", "input_labels")


def image_regions(image_sizes: Sequence[tuple[int, int]], frame: SamFrame) -> np.ndarray:
    """(N, s, s) bool: the cells of the mask grid whose pixel of SAM's frame (the one the targets read) lies in the
    image, for N images of (h, w) = `image_sizes`, each resized along its long side into the frame."""
    cells = _frame_pixels(frame)
    regions = np.zeros((len(image_sizes), frame.mask_size, frame.mask_size), bool)
    for region, size in zip(regions, image_sizes):
        height, width = resized_shape(tuple(size), frame)
        region[np.ix_(cells < height, cells < width)] = True
    return regions


def _frame_pixels(frame: SamFrame) -> np.ndarray:
    """For each row (column) of the s x s mask grid, the row (column) of SAM's frame it is read from: the
    "nearest-exact" resize of `data.preprocess.decoder_targets`, floor((i + 0.5) * S / s)."""
    return (2 * np.arange(frame.mask_size) + 1) * frame.image_size // (2 * frame.mask_size)


def next_clicks(
    prediction: np.ndarray, truth: np.ndarray, regions: np.ndarray, frame: SamFrame, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction click per slice, in SAM's frame: points (N, 1, 1, 2) float32 (x, y) and labels (N, 1, 1) int64.

    prediction, truth, regions: (N, s, s) bool on the mask grid; the error is taken inside `regions`
    (`image_regions`). Label 1 in a missed region, 0 in a false positive, `NOT_A_POINT` at (0, 0) where the
    prediction is exact.
    """
    pixels = _frame_pixels(frame)
    points = np.zeros((len(prediction), 2), np.float32)
    labels = np.full(len(prediction), NOT_A_POINT, np.int64)
    for index, (predicted, target, region) in enumerate(zip(prediction, truth, regions)):
        click = correction_click(predicted & region, target & region, rng, uniform=True)
        if click is not None:
            (column, row), labels[index] = click[0].astype(int), click[1]
            points[index] = pixels[column], pixels[row]
    return torch.from_numpy(points)[:, None, None], torch.from_numpy(labels)[:, None, None]


def _with_clicks(prompts: dict[str, torch.Tensor], points: torch.Tensor, labels: torch.Tensor) -> dict:
    """`prompts` (SamModel's prompt inputs) with one more point per slice: `points` (N, 1, 1, 2), `labels` (N, 1, 1)."""
    if "input_points" not in prompts:
        return {**prompts, "input_points": points, "input_labels": labels}
    points = torch.cat([prompts["input_points"], points.to(prompts["input_points"].dtype)], dim=2)
    return {**prompts, "input_points": points, "input_labels": torch.cat([prompts["input_labels"], labels], dim=2)}


def _sam_model(model: torch.nn.Module) -> SamModel:
    """The SamModel inside `model` (a SamModel, or a PeftModel of one, possibly wrapped by DDP or compiled)."""
    model = extract_model_from_parallel(model)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if not isinstance(base, SamModel):
        raise ValueError(
            f"--correction_clicks needs a SamModel, whose decoder runs from image embeddings alone; got "
            f"{type(base).__name__} (SAM-HQ and SAM 2 decoders also read the encoder's intermediate features)"
        )
    return base


@dataclass(frozen=True)
class CorrectionRounds:
    """`clicks` rounds of correction clicks after the first forward pass of a training batch (module docstring).

    frame: SAM's frame (targets and clicks in its mask grid). input_masks: feed each round the previous round's
    low-resolution logits. seed: with the optimiser step, the micro-batch and the process, it seeds the clicks
    (`generator`), so that a resumed run draws the clicks of an uninterrupted one.
    """

    clicks: int
    frame: SamFrame
    input_masks: bool = True
    seed: int = 0

    def generator(self, step: int, micro_batch: int, process: int) -> np.random.Generator:
        """The click stream of micro-batch `micro_batch` of optimiser step `step` on process `process`."""
        # three keys: apart from the samples' (epoch, item) streams of the same seed
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(step, micro_batch, process)))

    def logits(
        self,
        model: torch.nn.Module,
        inputs: dict,
        labels: torch.Tensor,
        image_sizes: Sequence[tuple[int, int]],
        rng: np.random.Generator,
    ) -> list[torch.Tensor]:
        """The low-resolution mask logits (N, s, s) of the first pass and of each round: `clicks` + 1 tensors.

        model: called like SamModel (a prepared, possibly wrapped model). inputs: its inputs for the first pass
        (`loop.sam_inputs`: pixel values, prompt, `depth`). labels: the targets (N, s, s), 0 / 1. image_sizes: the
        (h, w) of the N images, as `collate_sam` gives them.
        """
        encoder = _sam_model(model).vision_encoder
        embeddings = []
        hook = encoder.register_forward_hook(lambda module, args, output: embeddings.append(output.last_hidden_state))
        try:
            rounds = [model(**inputs, multimask_output=False).pred_masks[:, 0, 0]]
        finally:
            hook.remove()
        prompts = {name: inputs[name] for name in PROMPT_INPUTS if name in inputs}
        truth = labels.detach().cpu().numpy() > 0.5
        regions = image_regions(image_sizes, self.frame)
        for _ in range(self.clicks):
            previous = rounds[-1].detach()
            points, point_labels = next_clicks((previous > 0).cpu().numpy(), truth, regions, self.frame, rng)
            prompts = _with_clicks(prompts, points.to(previous.device), point_labels.to(previous.device))
            masks = {"input_masks": previous[:, None]} if self.input_masks else {}
            outputs = model(image_embeddings=embeddings[0], **prompts, **masks, multimask_output=False)
            rounds.append(outputs.pred_masks[:, 0, 0])
        return rounds

    def loss(
        self,
        model: torch.nn.Module,
        inputs: dict,
        batch: dict,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """The mean of `loss_fn` over the first pass and every round (SAM sums them; the mean keeps the loss's scale,
        and AdamW's steps hardly depend on it)."""
        rounds = self.logits(model, inputs, batch["labels"], batch["image_sizes"], rng)
        return torch.stack([loss_fn(logits, batch["labels"]) for logits in rounds]).mean()
