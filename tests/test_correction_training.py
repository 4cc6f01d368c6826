"""Training with simulated correction clicks, `--correction_clicks N`: SAM's iterative protocol (each round a click on
the error of the previous prediction), the image encoder run once per batch, the default training unchanged."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_inference import SIZE, medsa_model, random_slices
from test_interactive import CallCounter
from helpers import quick_training

from medsa_peft.data.preprocess import SamFrame, decoder_targets, frame_images
from medsa_peft.data.prompts import PromptSpec
from medsa_peft.training import MedSATrainingArguments, train
from medsa_peft.training.interactive import NOT_A_POINT, CorrectionRounds, image_regions, next_clicks
from medsa_peft.training.losses import DiceBCELoss

HEIGHT, WIDTH = 20, 24  # slices smaller than the frame and not square: the frame has padding


def object_masks(count: int, seed: int = 0) -> np.ndarray:
    """(count, HEIGHT, WIDTH) bool: a rectangle of random place and size on each slice."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, HEIGHT, WIDTH), bool)
    for mask in masks:
        top, left = rng.integers(0, HEIGHT - 8), rng.integers(0, WIDTH - 8)
        mask[top : top + rng.integers(4, 8), left : left + rng.integers(4, 8)] = True
    return masks


def training_batch(prompt: str, count: int, frame: SamFrame) -> dict:
    """A `collate_sam`-like batch of `count` slices in SAM's frame (pixel values, prompt, targets, image sizes)."""
    masks = object_masks(count)
    inputs = PromptSpec.parse(prompt).sam_prompts(masks, SIZE, np.random.default_rng(0))
    inputs["pixel_values"] = frame_images(random_slices(count, HEIGHT, WIDTH), SIZE)
    return {"inputs": inputs, "labels": decoder_targets(masks, frame), "image_sizes": [(HEIGHT, WIDTH)] * count}


def recorded_calls(sam) -> list[dict]:
    """The keyword inputs of every forward call of the SamModel `sam`."""
    calls = []
    sam.register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def grid_cell(point: torch.Tensor, frame: SamFrame) -> tuple[int, int]:
    """(row, column) of the mask-grid cell that a point (x, y) of SAM's frame reads."""
    x, y = (int(value) * frame.mask_size // frame.image_size for value in point)
    return y, x


@pytest.mark.parametrize("prompt", ["points:1", "points:2+1", "box"])
@pytest.mark.parametrize("depth", [None, 2], ids=["2d", "3d"])
def test_each_round_adds_one_click_on_the_previous_error_and_the_encoder_runs_once(sam, prompt, depth):
    model = medsa_model(sam, depth_adapter=depth is not None).train()
    frame = SamFrame.from_config(sam.config)
    batch = training_batch(prompt, count=4, frame=frame)
    inputs = {**batch["inputs"], **({} if depth is None else {"depth": depth})}
    encoder = CallCounter(model.get_base_model().vision_encoder)
    calls = recorded_calls(model.get_base_model())
    rounds = CorrectionRounds(clicks=3, frame=frame)

    logits = rounds.logits(model, inputs, batch["labels"], batch["image_sizes"], np.random.default_rng(0))

    assert encoder.calls == 1 and len(calls) == len(logits) == 4
    assert "pixel_values" in calls[0] and all("pixel_values" not in call for call in calls[1:])
    assert all(call["image_embeddings"].shape[0] == 4 for call in calls[1:])
    first_points = batch["inputs"].get("input_points", torch.zeros(4, 1, 0, 2))
    truth, regions = batch["labels"].bool().numpy(), image_regions(batch["image_sizes"], frame)
    for number, call in enumerate(calls[1:], start=1):
        if "input_boxes" in batch["inputs"]:
            assert torch.equal(call["input_boxes"], batch["inputs"]["input_boxes"])  # the box stays
        points, labels = call["input_points"], call["input_labels"]
        assert points.shape == (4, 1, first_points.shape[2] + number, 2) and labels.shape == (4, 1, points.shape[2])
        assert torch.equal(points[:, :, : first_points.shape[2]], first_points)
        assert torch.equal(points[:, :, :-1], calls[number - 1].get("input_points", first_points))
        assert torch.equal(call["input_masks"][:, 0], logits[number - 1].detach())
        previous = (logits[number - 1] > 0).numpy() & regions
        for index in range(4):
            row, column = grid_cell(points[index, 0, -1], frame)
            label = int(labels[index, 0, -1])
            if label == NOT_A_POINT:
                assert np.array_equal(previous[index], truth[index])
            else:
                assert regions[index, row, column]
                assert truth[index, row, column] == (label == 1) != previous[index, row, column]


def test_every_round_trains_the_image_encoder_and_input_masks_can_be_left_out(sam):
    model = medsa_model(sam, depth_adapter=False).train()
    frame = SamFrame.from_config(sam.config)
    batch = training_batch("points:1", count=3, frame=frame)
    calls = recorded_calls(model.get_base_model())
    rounds = CorrectionRounds(clicks=2, frame=frame, input_masks=False)
    logits = rounds.logits(model, batch["inputs"], batch["labels"], batch["image_sizes"], np.random.default_rng(0))
    assert not any("input_masks" in call for call in calls)

    DiceBCELoss()(logits[-1], batch["labels"]).backward()  # the last round alone
    encoder_adapters = [p for name, p in model.named_parameters() if "vision_encoder" in name and p.requires_grad]
    assert encoder_adapters and any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder_adapters)


def test_clicks_fall_on_the_error_inside_the_image_and_an_exact_slice_gets_no_point():
    frame = SamFrame(image_size=64, mask_size=16)
    regions = image_regions([(32, 64)], frame)  # a wide image: the bottom half of the frame is padding
    assert regions[0, :8].all() and not regions[0, 8:].any()
    truth = np.zeros((3, 16, 16), bool)
    truth[:, 2:5, 3:7] = True
    prediction = truth.copy()
    prediction[1, 2:5, 3:7] = False  # a miss
    prediction[2, 10:14, :] = True  # a false positive in the padding only: not an error a user could click
    points, labels = next_clicks(prediction, truth, regions.repeat(3, axis=0), frame, np.random.default_rng(0))
    assert points.shape == (3, 1, 1, 2) and labels.dtype == torch.int64
    assert labels[:, 0, 0].tolist() == [NOT_A_POINT, 1, NOT_A_POINT]
    row, column = grid_cell(points[1, 0, 0], frame)
    assert truth[1, row, column] and not prediction[1, row, column]
    x, y = points[1, 0, 0].tolist()
    assert x == 4 * column + 2 and y == 4 * row + 2  # the frame pixel the target of that cell is read from

    prediction[0, 6, 10] = True  # a false positive in the image
    points, labels = next_clicks(prediction, truth, regions.repeat(3, axis=0), frame, np.random.default_rng(0))
    assert labels[0, 0, 0] == 0 and grid_cell(points[0, 0, 0], frame) == (6, 10)


def test_the_click_stream_follows_from_the_seed_step_micro_batch_and_process():
    rounds = CorrectionRounds(clicks=1, frame=SamFrame(64, 32), seed=3)
    draw = [rounds.generator(*key).integers(2**32, size=4).tolist() for key in [(5, 1, 0), (5, 1, 0), (5, 0, 0)]]
    assert draw[0] == draw[1] != draw[2]
    assert rounds.generator(5, 1, 1).integers(2**32) != rounds.generator(5, 1, 0).integers(2**32)


def test_a_negative_count_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="--correction_clicks must be at least 0"):
        MedSATrainingArguments(correction_clicks=-1)


def adapter_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "adapter" / "adapter_model.safetensors")


def test_without_correction_clicks_training_is_unchanged_and_with_them_it_differs(
    tiny_sam_dir, dataset_cache, tmp_path  # noqa: F811
):
    runs = {"default": {}, "off": dict(correction_clicks=0), "on": dict(correction_clicks=1)}
    weights = {}
    for name, options in runs.items():
        train(quick_training(tiny_sam_dir, dataset_cache, tmp_path / name, max_steps=2, num_workers=0, **options))
        weights[name] = adapter_weights(tmp_path / name)
    assert all(torch.equal(weights["default"][key], weights["off"][key]) for key in weights["default"])
    assert not all(torch.equal(weights["default"][key], weights["on"][key]) for key in weights["default"])


@pytest.mark.parametrize(
    "options",
    [
        dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, prompt="box"),
        dict(dataset_config="3d", volume_depth=2, per_device_train_batch_size=2, correction_input_masks=False),
        dict(per_device_train_batch_size=2, prompt="points:1+1", mixed_precision="bf16"),
    ],
    ids=["2d-box-accumulation", "3d-depth-no-input-masks", "2d-bf16"],
)
def test_training_with_correction_clicks_runs(tiny_sam_dir, dataset_cache, tmp_path, monkeypatch, options):  # noqa: F811
    if options.pop("mixed_precision", None):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16`
    args = quick_training(tiny_sam_dir, dataset_cache, tmp_path, max_steps=2, num_workers=0, correction_clicks=2, **options)
    metrics = train(args)
    assert metrics["steps"] == 2
    assert all(torch.isfinite(weight).all() for weight in adapter_weights(tmp_path).values())
