"""SamProcessor at the boundary: transformers' processor prepares inputs that a Med-SA model takes as they are, and
medsa_peft's own preprocessing computes what the processor computes (to one 8-bit level where a picture is
resized)."""

import numpy as np
import pytest
import torch
from peft import get_peft_model
from PIL import Image
from transformers import SamImageProcessorPil, SamProcessor

from helpers import randomize_adapters, tiny_sam_model
from medsa_peft import MedSAConfig
from medsa_peft.data.preprocess import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    frame_coordinates,
    frame_images,
    resized_shape,
    sam_logits_to_original,
)
from medsa_peft.inference import MedSAPredictor, SlicePrompt

IMAGE_SIZE = 64  # the tiny SAM's frame (tests/helpers.py)
ONE_LEVEL = 1.01 / 255 / min(SAM_PIXEL_STD)  # one 8-bit level of a picture, in SAM's normalised units


def sam_processor(image_size: int = IMAGE_SIZE) -> SamProcessor:
    """The processor of a SAM whose frame is `image_size` (the Hub's SAM checkpoints ship theirs, at 1024)."""
    size = {"height": image_size, "width": image_size}
    return SamProcessor(SamImageProcessorPil(size={"longest_edge": image_size}, pad_size=size))


def medsa_model(depth_adapter: bool = False):
    """A tiny SamModel with a Med-SA adapter whose weights change the output."""
    return randomize_adapters(get_peft_model(tiny_sam_model(), MedSAConfig(depth_adapter=depth_adapter)))


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_processor_normalises_with_sams_mean_and_std():
    image_processor = sam_processor().image_processor
    np.testing.assert_allclose(image_processor.image_mean, SAM_PIXEL_MEAN)
    np.testing.assert_allclose(image_processor.image_std, SAM_PIXEL_STD)


@pytest.mark.parametrize(
    "height, width, image_size",
    [(48, 64, 64), (64, 40, 64), (96, 128, 64), (300, 200, 64), (30, 40, 64), (17, 5, 64), (450, 600, 1024)],
)
def test_frames_of_8_bit_pictures_are_the_processors_to_one_level(height, width, image_size):
    image = picture(height, width)
    expected = sam_processor(image_size)(images=image, return_tensors="pt")
    assert tuple(expected["reshaped_input_sizes"][0].tolist()) == resized_shape((height, width), image_size)
    framed = frame_images(image[None], image_size)
    assert (framed - expected["pixel_values"]).abs().max() <= ONE_LEVEL
    if max(height, width) == image_size:  # nothing to resize: the same numbers
        torch.testing.assert_close(framed, expected["pixel_values"])
        torch.testing.assert_close(frame_images(image[None] / 255.0, image_size), expected["pixel_values"])


@pytest.mark.parametrize("height, width, image_size", [(48, 64, 64), (300, 200, 64), (17, 5, 64), (1500, 2000, 1024)])
def test_frame_coordinates_are_the_processors(height, width, image_size):
    box = [0.2 * width, 0.1 * height, 0.9 * width, 0.7 * height]
    points = [[0.5 * width, 0.5 * height], [0.25 * width, 0.6 * height]]
    inputs = sam_processor(image_size)(
        images=picture(height, width), input_boxes=[[box]], input_points=[[points]], return_tensors="pt"
    )
    np.testing.assert_allclose(
        frame_coordinates(box, (height, width), image_size), inputs["input_boxes"][0, 0], rtol=1e-6
    )
    np.testing.assert_allclose(
        frame_coordinates(points, (height, width), image_size), inputs["input_points"][0, 0], rtol=1e-6
    )


@pytest.mark.parametrize(
    "height, width, image_size, mask_size",
    [(48, 64, 64, 16), (300, 200, 64, 32), (17, 5, 64, 16), (450, 600, 1024, 256)],
)
def test_sam_logits_to_original_is_post_process_masks(height, width, image_size, mask_size):
    processor = sam_processor(image_size)
    inputs = processor(images=picture(height, width), return_tensors="pt")
    logits = torch.randn(3, mask_size, mask_size, generator=torch.Generator().manual_seed(height))
    (expected,) = processor.post_process_masks(
        [logits[None]], inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )
    assert torch.equal(sam_logits_to_original(logits, (height, width), image_size), expected[0])


@pytest.mark.parametrize("height, width", [(48, 64), (64, 40)])
def test_a_medsa_model_takes_processor_inputs(height, width):
    """`model(**processor(images, input_boxes=...), multimask_output=False)`, post-processed by the processor: the
    predictor's mask of the same picture and box (a picture that needs no resize, so the pixel values agree)."""
    model = medsa_model()
    processor = sam_processor()
    image, box = picture(height, width), (0.2 * width, 0.1 * height, 0.7 * width, 0.8 * height)

    inputs = processor(images=image, input_boxes=[[list(box)]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    (logits,) = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
    )
    (masks,) = processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )

    ours = MedSAPredictor(model, progress=False).predict_logits(image[None] / 255.0, [SlicePrompt(box=box)])
    torch.testing.assert_close(logits[0, 0], ours[0], rtol=0, atol=1e-5)
    assert torch.equal(masks[0, 0], ours[0] > 0)


def test_a_medsa_model_with_the_depth_adapter_takes_processor_inputs_and_depth():
    """A volume as D slices, one box each, and `depth=D`: the predictor's masks with chunks of D slices."""
    depth, height, width = 4, 48, 64
    model = medsa_model(depth_adapter=True)
    slices = np.random.default_rng(1).integers(0, 256, (depth, height, width), dtype=np.uint8)
    box = (10.0, 5.0, 40.0, 30.0)

    inputs = sam_processor()(
        images=[Image.fromarray(grey) for grey in slices], input_boxes=[[list(box)]] * depth, return_tensors="pt"
    )
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False, depth=depth)
        slice_by_slice = model(**inputs, multimask_output=False)  # the depth branch idle: other masks
    assert not torch.allclose(outputs.pred_masks, slice_by_slice.pred_masks)
    logits = sam_logits_to_original(outputs.pred_masks[:, 0, 0], (height, width), IMAGE_SIZE)

    predictor = MedSAPredictor(model, chunk_depth=depth, overlap=0, progress=False)
    ours = predictor.predict_logits(slices / 255.0, [SlicePrompt(box=box)] * depth)
    torch.testing.assert_close(logits, ours, rtol=0, atol=1e-5)
    assert torch.equal(logits > 0, ours > 0)
