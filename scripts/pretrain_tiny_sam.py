"""Pre-train the tiny SAM that ships in medsa_peft/assets/sam-tiny-shapes/ on synthetic shapes.

    python scripts/pretrain_tiny_sam.py                      # the shipped model (10-20 minutes on 2 CPU cores)
    python scripts/pretrain_tiny_sam.py --steps 50 --output /tmp/sam-try
    python scripts/pretrain_tiny_sam.py --patch_size 4 --output outputs/sam-tiny-p4   # 32 x 32 tokens, ~4x slower

Every weight of a 128 x 128 SAM (16 x 16 tokens, 4 encoder layers, 2 of them global) starts from the random
initialisation of SAM's own code (`starting_model`) and trains with AdamW, warm-up and cosine decay, on
Dice + BCE of its single-mask answers (`multimask_output=False`) to boxes (exact or jittered) or 1-3 positive
clicks with an optional negative one, several objects per image, in the prompt conventions of
`medsa_peft.data`. Images are fresh synthetic shapes (`synthetic_scenes` below) at every
step, never medical data. At the end the model is scored on held-out shapes from another seed and saved,
with a model card holding the command and the scores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import SamModel

from scipy import ndimage

from medsa_peft.data import PromptSpec, SamFrame, bounding_box, decoder_targets, frame_images
from medsa_peft.data.preprocess import sam_logits_to_original
from medsa_peft.training.losses import DiceBCELoss
from medsa_peft.evaluation.metrics import dice
from medsa_peft.tiny_sam import default_model_path, tiny_sam_config

EVALUATION_PROMPTS = ("box", "box:0.75", "points:1", "points:3", "points:1+1")


# Synthetic scenes: the data of the pre-training, never medical.

SHAPE_KINDS = ("ellipse", "rectangle", "blob", "wobbly")
_MIN_CONTRAST = 0.12  # least intensity step between a shape and what it is painted over
_MIN_AREA_FRACTION = 0.01  # least visible area of a target object, as a fraction of the image
_MAX_TRIES = 100


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


def starting_model(seed: int, patch_size: int = 8) -> SamModel:
    """The architecture at the random start SAM's own code trains from: PyTorch's default initialisation of
    every layer, the prompt encoder's random Fourier frequencies from N(0, 1) (segment_anything's
    PositionEmbeddingRandom), zero relative-position tables and N(0, 0.02) absolute position embeddings.

    Not `medsa_peft.tiny_sam.randomize_weights`: from its normal(0, 0.05) everywhere (Fourier frequencies,
    learned prompt and output tokens included) the decoder learns to ignore the prompt, and even a box-filling
    toy task stays at Dice 0 for the first hundreds of steps.
    """
    torch.manual_seed(seed)
    model = SamModel(model_config(patch_size))
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm, nn.Embedding)):
            module.reset_parameters()
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
        model.vision_encoder.pos_embed.normal_(0.0, 0.02)
        for name, parameter in model.vision_encoder.named_parameters():
            if "rel_pos" in name:
                parameter.zero_()
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_model_path(), help="folder to save the model in")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument(
        "--patch_size", type=int, default=8, choices=(4, 8), help="pixels per token side of the 128 px input"
    )
    parser.add_argument("--batch_size", type=int, default=4, help="images per step")
    parser.add_argument("--targets_per_image", type=int, default=4, help="objects prompted per image")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_images", type=int, default=256, help="held-out shapes per evaluation prompt")
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1, help="processes making training batches (0: inline)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def model_config(patch_size: int = 8):
    """The shipped architecture: 128 x 128 input, 16 x 16 tokens of width 64, 4 layers (1 and 3 global);
    `patch_size` 4 gives 32 x 32 tokens (windows of 8 x 8 tokens then cover a quarter of the side, not half)."""
    return tiny_sam_config(
        image_size=128,
        patch_size=patch_size,
        hidden_size=64,
        num_layers=4,
        window_size=8,
        global_attn_indexes=(1, 3),
        prompt_hidden_size=64,
    )


def random_image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(H, W) of a training batch: long side 96-224 pixels, aspect 0.65-1, either orientation."""
    long_side = int(rng.integers(96, 225))
    short_side = int(long_side * rng.uniform(0.65, 1.0))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def random_prompt(rng: np.random.Generator) -> PromptSpec:
    """Exact box 35%, box jittered to IoU 0.6-0.9 25%, 1-3 positive clicks (+ a negative one 40% of the time) 40%."""
    draw = rng.random()
    if draw < 0.35:
        return PromptSpec("box")
    if draw < 0.6:
        return PromptSpec("box", box_iou=round(float(rng.uniform(0.6, 0.9)), 2))
    return PromptSpec("points", num_positive=int(rng.integers(1, 4)), num_negative=int(rng.random() < 0.4))


def training_batch(batch_size: int, targets: int, frame: SamFrame, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """SamModel inputs for fresh synthetic shapes, `targets` prompts of one random kind per image, as SAM is
    trained (one image embedding, several prompts), plus "labels" (B, targets, s, s)."""
    images, masks = synthetic_scenes(batch_size, *random_image_size(rng), rng, targets_per_image=targets)
    flat_masks = masks.reshape(-1, *masks.shape[2:])
    prompts = random_prompt(rng).sam_prompts(flat_masks, frame.image_size, rng)  # one prompt per row: (B*T, 1, ...)
    return {
        "pixel_values": frame_images(images, frame.image_size),
        **{name: value.reshape(batch_size, targets, *value.shape[2:]) for name, value in prompts.items()},
        "labels": decoder_targets(flat_masks, frame).reshape(batch_size, targets, frame.mask_size, frame.mask_size),
    }


class ShapeBatches(torch.utils.data.IterableDataset):
    """An endless stream of `training_batch`es; each DataLoader worker draws from its own seeded generator."""

    def __init__(self, batch_size: int, targets: int, frame: SamFrame, seed: int):
        self.batch_size, self.targets, self.frame, self.seed = batch_size, targets, frame, seed

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if worker is None else worker.id])
        while True:
            yield training_batch(self.batch_size, self.targets, self.frame, rng)


def _single_thread_worker(worker_id: int) -> None:
    torch.set_num_threads(1)


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def train(model: SamModel, args: argparse.Namespace) -> None:
    frame = SamFrame.from_config(model.config)
    batches = torch.utils.data.DataLoader(
        ShapeBatches(args.batch_size, args.targets_per_image, frame, args.seed),
        batch_size=None,
        num_workers=args.workers,
        worker_init_fn=_single_thread_worker,
    )
    loss_fn = DiceBCELoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, args.warmup_steps, args.steps)
    )
    model.train()
    start, losses, dices = time.time(), [], []
    for step, batch in zip(range(args.steps), batches):
        batch = {name: value.to(args.device) for name, value in batch.items()}
        labels = batch.pop("labels").flatten(0, 1)  # one row per prompt: (B*T, s, s)
        logits = model(**batch, multimask_output=False).pred_masks[:, :, 0].flatten(0, 1)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        dices += [dice(logit > 0, label > 0.5) for logit, label in zip(logits.detach().cpu(), labels.cpu())]
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.time() - start
            print(
                f"step {step + 1}/{args.steps}  loss {np.mean(losses):.4f}  train dice {np.mean(dices):.3f}  "
                f"lr {schedule.get_last_lr()[0]:.2e}  {elapsed / 60:.1f} min",
                flush=True,
            )
            losses, dices = [], []
    model.eval()


def box_fill_dice(masks: np.ndarray) -> float:
    """Mean Dice of the trivial answer "the whole box is the object" (exact boxes)."""
    filled = np.zeros_like(masks)
    for fill, mask in zip(filled, masks):
        x0, y0, x1, y1 = bounding_box(mask).astype(int)
        fill[y0:y1, x0:x1] = True
    return float(np.mean([dice(fill, mask) for fill, mask in zip(filled, masks)]))


def evaluate(model: SamModel, args: argparse.Namespace, batch_size: int = 32) -> dict[str, float]:
    """Mean Dice per prompt on held-out shapes (another seed than training), images 117 x 99 and 192 x 160."""
    rng = np.random.default_rng(args.seed + 10_000)
    scores: dict[str, list[float]] = {prompt: [] for prompt in EVALUATION_PROMPTS}
    fills = []
    for index in range(0, args.eval_images, batch_size):
        size = (117, 99) if index % (2 * batch_size) == 0 else (192, 160)
        images, masks = synthetic_shapes(min(batch_size, args.eval_images - index), *size, rng)
        fills.append(box_fill_dice(masks))
        for prompt in EVALUATION_PROMPTS:
            scores[prompt] += prompted_dice(model, images, masks, PromptSpec.parse(prompt), rng).tolist()
    return {f"dice/{prompt}": float(np.mean(values)) for prompt, values in scores.items()} | {
        "dice/box_fill_baseline": float(np.mean(fills))
    }


MODEL_CARD = """\
---
library_name: transformers
pipeline_tag: mask-generation
tags: [sam, synthetic-data, medsa_peft]
---
# sam-tiny-shapes

A tiny Segment Anything Model (transformers `SamModel`, {parameters:,} parameters) pre-trained from
scratch on synthetic grey-level shapes by `scripts/pretrain_tiny_sam.py`. It is the offline starting point
of the medsa_peft demo (`accelerate launch examples/train.py`), which adapts it with Med-SA to the MNI152
MRI template; it has never seen medical data. It is no substitute for `facebook/sam-vit-base`.

## Architecture
{architecture}

## How it was made
```
{command}
```
- Weights: random start as in SAM's own code (seed {seed}): PyTorch's default initialisation of every layer,
  random Fourier frequencies of the prompt encoder from N(0, 1), zero relative-position tables, absolute
  position embeddings from N(0, 0.02); then all weights trained.
- Data: fresh images at every step from `synthetic_scenes` of scripts/pretrain_tiny_sam.py (seed {seed}): 2-5
  ellipses, rectangles, blobs and star-shaped outlines, some nested, painted over each other with
  contrasting intensities and textures, smooth intensity bias, blur and noise; images 96-224 pixels
  on the long side, one size per batch. A target is the visible part of one shape covering at
  least 1% of the image.
- Prompts: {targets} objects of each image prompted at once (one image embedding, several prompts, as SAM
  trains), one prompt kind per batch: exact box 35%, box jittered to IoU 0.6-0.9 25%, 1-3 positive
  clicks with a negative click 40% of the time 40% (`medsa_peft.data.PromptSpec`).
- Training: {steps} steps of batch {batch_size} ({images:,} images, {masks:,} masks), AdamW (lr {learning_rate},
  weight decay {weight_decay}), {warmup_steps} warm-up steps then cosine decay, gradient clipping at 1, loss
  Dice + BCE (`medsa_peft.training.losses.DiceBCELoss`) on the logits of `pred_masks` with `multimask_output=False`;
  {minutes:.1f} minutes on {device} ({torch_threads} torch thread(s), {workers} data worker(s)).

## Held-out scores
Mean Dice over {eval_images} synthetic images per prompt (seed {eval_seed}, never trained on; half
117 x 99, half 192 x 160 pixels), masks thresholded at logit 0 on the original pixel grid.

| prompt | Dice |
|---|---|
{score_rows}

`box_fill_baseline` is the trivial answer "everything in the exact box". The same architecture with
its random starting weights scores {random_box:.3f} with exact boxes.
"""


def describe_architecture(config) -> str:
    """The model card's architecture paragraph, read off the config."""
    vision, decoder = config.vision_config, config.mask_decoder_config
    tokens = vision.image_size // vision.patch_size
    global_layers = ", ".join(map(str, vision.global_attn_indexes))
    return (
        f"{vision.image_size} x {vision.image_size} input, patch {vision.patch_size} ({tokens} x {tokens} tokens), "
        f"ViT of width {vision.hidden_size} with {vision.num_hidden_layers} layers (windows of "
        f"{vision.window_size} x {vision.window_size} tokens, global attention in layers {global_layers}),\n"
        f"prompt encoder and {decoder.num_hidden_layers}-layer two-way mask decoder of width {decoder.hidden_size}; "
        f"masks come out at {4 * tokens} x {4 * tokens}.\nImages are framed as in `medsa_peft.data.frame_images` "
        f"(long side resized to {vision.image_size}, SAM's pixel mean/std, zero padding)."
    )


def write_model_card(
    folder: Path, args: argparse.Namespace, command: str, scores: dict, random_box: float, minutes: float, model
) -> None:
    rows = "\n".join(f"| {name.removeprefix('dice/')} | {value:.3f} |" for name, value in scores.items())
    card = MODEL_CARD.format(
        parameters=model.num_parameters(),
        architecture=describe_architecture(model.config),
        command=command,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        images=args.steps * args.batch_size,
        targets=args.targets_per_image,
        masks=args.steps * args.batch_size * args.targets_per_image,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        minutes=minutes,
        device=args.device,
        torch_threads=torch.get_num_threads(),
        workers=args.workers,
        eval_images=args.eval_images,
        eval_seed=args.seed + 10_000,
        score_rows=rows,
        random_box=random_box,
    )
    (folder / "README.md").write_text(card)


def save(model: SamModel, args: argparse.Namespace, card_fields: dict) -> None:
    """Save model and card into a temporary sibling folder, then swap it in for `args.output`."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.output.name}-new-", dir=args.output.parent))
    model.save_pretrained(staging)
    write_model_card(staging, args, model=model, **card_fields)
    staging.chmod(0o755)  # mkdtemp makes it private; the folder ships with the package
    for path in staging.iterdir():
        path.chmod(0o644)
    retired = Path(tempfile.mkdtemp(prefix=f".{args.output.name}-old-", dir=args.output.parent))
    if args.output.exists():
        os.replace(args.output, retired / args.output.name)
    os.replace(staging, args.output)
    shutil.rmtree(retired)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = starting_model(args.seed, args.patch_size).to(args.device)
    random_box = evaluate(model.eval(), args)["dice/box"]
    print(f"{model.num_parameters():,} parameters; exact-box Dice with random weights {random_box:.3f}", flush=True)
    start = time.time()
    train(model, args)
    minutes = (time.time() - start) / 60
    scores = evaluate(model, args)
    print(json.dumps(scores, indent=2), flush=True)
    command = shlex.join(["python", "scripts/pretrain_tiny_sam.py", *argv])
    save(model.cpu(), args, {"command": command, "scores": scores, "random_box": random_box, "minutes": minutes})
    print(f"saved to {args.output}", flush=True)


if __name__ == "__main__":
    main()
