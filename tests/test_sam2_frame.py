"""SAM 2's frame: slices stretched to the square, as Sam2Processor frames them (`SamFrame.keep_aspect_ratio` False).

Coordinates are pinned to Sam2Processor's own normalisation. Its image processor needs torchvision, which cannot be
installed beside this torch, so pixel values and post-processing are checked against the steps written out by hand
(stretch, normalise, model, resize the logits straight to the original size).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Sam2Processor

from helpers import quick_training, tiny_sam2_model, tiny_sam_hq_model, tiny_sam_model
from medsa_peft.data import SlicePrompt, prompt_tensors
from medsa_peft.data.builders import prepare_dataset
from medsa_peft.data.preprocess import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SamFrame,
    decoder_targets,
    frame_coordinates,
    frame_images,
    frame_masks,
    resized_shape,
    sam_logits_to_original,
    sam_pixel_values,
)
from medsa_peft.data.store import prepare_examples
from medsa_peft.inference import MedSAPredictor
from medsa_peft.training import train

SIZE = 64
STRETCHED = SamFrame(image_size=SIZE, mask_size=16, keep_aspect_ratio=False)  # the tiny SAM 2's frame
LONG_SIDE = SamFrame(image_size=SIZE, mask_size=16)
NON_SQUARE = [(20, 40), (100, 30), (64, 70)]


def stretched_pixels(slices: np.ndarray) -> torch.Tensor:
    """(N, H, W) grey in [0, 1] -> (N, 3, S, S): stretched to S x S (bilinear, anti-aliased), SAM's normalisation."""
    resized = F.interpolate(torch.from_numpy(slices)[:, None], (SIZE, SIZE), mode="bilinear", antialias=True)
    mean, std = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    return (resized.expand(-1, 3, -1, -1) - mean) / std


@pytest.mark.parametrize(
    "model, keeps", [(tiny_sam_model, True), (tiny_sam_hq_model, True), (tiny_sam2_model, False)]
)
def test_sam2s_frame_stretches_and_sams_keep_the_aspect_ratio(model, keeps):
    frame = SamFrame.from_config(model().config)
    assert frame.keep_aspect_ratio is keeps
    size = frame.image_size
    assert resized_shape((20, 40), frame) == ((size // 2, size) if keeps else (size, size))


@pytest.mark.parametrize("height, width", NON_SQUARE)
def test_non_square_coordinates_are_sam2_processors(height, width):
    box = np.array([[0.2 * width, 0.1 * height, 0.9 * width, 0.7 * height]], np.float32)
    points = np.array([[0.5 * width, 0.5 * height], [0.25 * width, 0.6 * height]], np.float32)
    for coordinates, is_box in ((box, True), (points, False)):
        expected = Sam2Processor._normalize_coordinates(  # a static computation: it reads nothing of the processor
            None, SIZE, torch.from_numpy(coordinates.copy()), (height, width), is_bounding_box=is_box
        )
        np.testing.assert_allclose(frame_coordinates(coordinates, (height, width), STRETCHED), expected, rtol=1e-6)
        assert not np.allclose(frame_coordinates(coordinates, (height, width), LONG_SIDE), expected)

    prompts = prompt_tensors([SlicePrompt(box=tuple(box[0]), points=tuple(map(tuple, points)))], (height, width),
                             STRETCHED)
    np.testing.assert_allclose(prompts["input_points"][0, 0], frame_coordinates(points, (height, width), STRETCHED))


@pytest.mark.parametrize("height, width", NON_SQUARE)
def test_stretched_pixels_masks_and_logits(height, width):
    rng = np.random.default_rng(height)
    slices = rng.random((2, height, width), dtype=np.float32)
    expected = stretched_pixels(slices)
    torch.testing.assert_close(frame_images(slices, STRETCHED), expected, rtol=0, atol=1e-5)
    images = torch.from_numpy(slices)[:, None]
    torch.testing.assert_close(sam_pixel_values(images, [(height, width)] * 2, STRETCHED), expected, rtol=0, atol=1e-5)

    mask = rng.random((1, height, width)) > 0.5
    rows = F.interpolate(torch.arange(height, dtype=torch.float32).view(1, 1, -1), SIZE, mode="nearest-exact")
    cols = F.interpolate(torch.arange(width, dtype=torch.float32).view(1, 1, -1), SIZE, mode="nearest-exact")
    framed = mask[:, rows.long().view(-1, 1).numpy(), cols.long().view(1, -1).numpy()]
    np.testing.assert_array_equal(frame_masks(mask, STRETCHED).numpy(), framed)  # every pixel of the frame read
    cells = (2 * np.arange(16) + 1) * SIZE // 32  # then "nearest-exact" down to the 16 x 16 mask grid
    np.testing.assert_array_equal(decoder_targets(mask, STRETCHED).numpy(), framed[:, cells][:, :, cells])

    logits = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(width))
    straight = F.interpolate(logits[None], (height, width), mode="bilinear", align_corners=False)[0]
    assert torch.equal(sam_logits_to_original(logits, (height, width), STRETCHED), straight)


def test_sam_frames_given_as_a_frame_or_a_size_agree():
    """SAM and SAM-HQ: a `SamFrame` that keeps the aspect ratio frames exactly as its size alone (what the pinned
    tests of tests/test_processor.py and tests/test_sample_outputs.py use)."""
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (1, 20, 40, 3), dtype=np.uint8)
    mask = rng.random((1, 20, 40)) > 0.5
    logits = torch.randn(2, 16, 16)
    assert torch.equal(frame_images(picture, LONG_SIDE), frame_images(picture, SIZE))
    assert torch.equal(frame_masks(mask, LONG_SIDE), frame_masks(mask, SIZE))
    coordinates = frame_coordinates([[3.0, 5.0]], (20, 40), LONG_SIDE)
    np.testing.assert_array_equal(coordinates, frame_coordinates([[3.0, 5.0]], (20, 40), SIZE))
    np.testing.assert_allclose(coordinates, [[4.8, 8.0]])  # both axes by 64 / 40
    back = sam_logits_to_original(logits, (20, 40), LONG_SIDE)
    assert torch.equal(back, sam_logits_to_original(logits, (20, 40), SIZE))
    padding = [frame_images(picture, frame)[:, :, 32:].abs().sum() for frame in (LONG_SIDE, STRETCHED)]
    assert padding[0] == 0 < padding[1]  # the bottom half: SAM's padding, SAM 2's stretched picture


@pytest.mark.parametrize("height, width", [(20, 40), (70, 30)])
def test_the_sam2_predictor_stretches_as_written_out_by_hand(height, width, tmp_path):
    model = tiny_sam2_model()
    model.save_pretrained(tmp_path / "sam2")
    predictor = MedSAPredictor.from_pretrained(None, tmp_path / "sam2", progress=False)
    assert predictor.frame == STRETCHED

    slices = np.random.default_rng(width).random((1, height, width), dtype=np.float32)
    box = (0.1 * width, 0.2 * height, 0.8 * width, 0.9 * height)
    logits = predictor.predict_logits(slices, [SlicePrompt(box=box)])

    scaled = torch.tensor([box]) * torch.tensor([SIZE / width, SIZE / height] * 2)
    with torch.no_grad():
        low_res = model(pixel_values=stretched_pixels(slices), input_boxes=scaled[None], multimask_output=False)
    expected = F.interpolate(low_res.pred_masks[:, 0], (height, width), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)


def write_non_square_folder(root) -> None:
    """Four 8-bit 40 x 72 (rows x columns) pictures with a bright rectangle, its mask 0 / 255."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(4):
        pixels = rng.integers(0, 80, (40, 72, 3), dtype=np.uint8)
        mask = np.zeros((40, 72), np.uint8)
        mask[8 + index : 30, 10 : 50 + index] = 255
        pixels[mask > 0] += 150
        Image.fromarray(pixels).save(root / "images" / f"case_{index}.png")
        Image.fromarray(mask).save(root / "masks" / f"case_{index}.png")


def test_sam2s_store_keeps_stretched_pictures_apart(tmp_path):
    write_non_square_folder(tmp_path / "pictures")
    data = prepare_dataset(str(tmp_path / "pictures"), cache_dir=str(tmp_path / "cache"))
    stretched = prepare_examples(data.train, data.modality, STRETCHED, tmp_path / "store")
    long_side = prepare_examples(data.train, data.modality, SIZE, tmp_path / "store")
    assert {example.folder for example in stretched}.isdisjoint(example.folder for example in long_side)
    assert np.load(stretched[0].folder / "image.npy").shape == (SIZE, SIZE, 3)
    assert np.load(long_side[0].folder / "image.npy").shape == (36, SIZE, 3)  # 40 * 64 / 72 = 35.6
    assert stretched[0].shape == long_side[0].shape == (1, 40, 72)  # labels as stored


def test_train_two_steps_on_a_non_square_folder(tmp_path):
    write_non_square_folder(tmp_path / "pictures")
    tiny_sam2_model().save_pretrained(tmp_path / "sam2")
    args = quick_training(
        str(tmp_path / "sam2"), str(tmp_path / "cache"), tmp_path / "run", dataset=str(tmp_path / "pictures"),
        max_steps=2, num_workers=0,
    )
    train(args)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and np.isfinite(metrics["after"]["dice"])
