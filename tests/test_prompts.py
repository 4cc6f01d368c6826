"""Prompt simulation: clicks on the right pixels, boxes at the asked IoU, correction clicks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medsa_peft.data.prompts import (
    EmptyMaskError,
    bounding_box,
    box_iou,
    click_prompt,
    jittered_box,
    negative_clicks,
    positive_clicks,
)


def disc(height, width, centre, radius):
    rows, cols = np.ogrid[:height, :width]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def masks():
    """Named masks: a blob, thin lines, objects touching the border, a single pixel, an L shape."""
    blob = disc(48, 64, (20, 30), 9)
    vertical_line = np.zeros((40, 50), bool)
    vertical_line[3:37, 21] = True
    horizontal_line = np.zeros((40, 50), bool)
    horizontal_line[39, 5:45] = True  # on the bottom edge
    corner = np.zeros((30, 30), bool)
    corner[:6, :9] = True
    pixel = np.zeros((16, 16), bool)
    pixel[7, 11] = True
    l_shape = np.zeros((32, 32), bool)
    l_shape[:, :4] = True
    l_shape[-4:, :] = True  # touches three borders
    nearly_full = np.ones((20, 20), bool)
    nearly_full[0, 0] = False
    return {
        "blob": blob,
        "vertical_line": vertical_line,
        "horizontal_line": horizontal_line,
        "corner": corner,
        "pixel": pixel,
        "l_shape": l_shape,
        "nearly_full": nearly_full,
    }


def pixels_at(mask, points):
    """Mask values at (x, y) points, which must be integer pixel indices inside the image."""
    assert np.array_equal(points, np.round(points))
    cols, rows = points[:, 0].astype(int), points[:, 1].astype(int)
    assert (cols >= 0).all() and (cols < mask.shape[1]).all() and (rows >= 0).all() and (rows < mask.shape[0]).all()
    return mask[rows, cols]


@pytest.mark.parametrize("name", list(masks()))
def test_positive_clicks_fall_on_the_object_and_negatives_off_it(name):
    mask = masks()[name]
    for seed in range(10):
        rng = np.random.default_rng(seed)
        positives = positive_clicks(mask, 3, rng)
        negatives = negative_clicks(mask, 3, rng)
        assert positives.shape == negatives.shape == (3, 2)
        assert positives.dtype == negatives.dtype == np.float32
        assert pixels_at(mask, positives).all()
        assert not pixels_at(mask, negatives).any()


def test_positive_clicks_are_distinct_while_the_object_is_large_enough():
    mask = masks()["blob"]
    points = positive_clicks(mask, 20, np.random.default_rng(0))
    assert len({tuple(point) for point in points}) == 20
    repeated = positive_clicks(masks()["pixel"], 3, np.random.default_rng(0))
    np.testing.assert_array_equal(repeated, [[11, 7]] * 3)


def test_clicks_are_x_column_y_row():
    mask = np.zeros((10, 30), bool)
    mask[2, 25] = True  # row 2, column 25
    np.testing.assert_array_equal(positive_clicks(mask, 1, np.random.default_rng(0)), [[25, 2]])


def test_negative_clicks_stay_near_the_object():
    mask = np.zeros((100, 100), bool)
    mask[40:50, 60:70] = True  # box (60, 40, 70, 50), grown by half its size: (55, 35, 75, 55)
    points = negative_clicks(mask, 200, np.random.default_rng(0))
    assert (points[:, 0] >= 55).all() and (points[:, 0] < 75).all()
    assert (points[:, 1] >= 35).all() and (points[:, 1] < 55).all()
    assert not pixels_at(mask, points).any()


def test_click_prompt_puts_positives_first():
    mask = masks()["blob"]
    points, labels = click_prompt(mask, 2, 3, np.random.default_rng(0))
    assert points.shape == (5, 2) and points.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(pixels_at(mask, points), labels.astype(bool))


def test_bounding_box_uses_pixel_edges():
    pixel = masks()["pixel"]  # the pixel at row 7, column 11
    np.testing.assert_array_equal(bounding_box(pixel), [11, 7, 12, 8])
    corner = masks()["corner"]
    np.testing.assert_array_equal(bounding_box(corner), [0, 0, 9, 6])
    box = bounding_box(masks()["horizontal_line"])
    np.testing.assert_array_equal(box, [5, 39, 45, 40])
    assert box.dtype == np.float32


def test_box_iou_by_hand():
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == 1.0
    assert box_iou([0, 0, 2, 2], [1, 0, 3, 2]) == pytest.approx(2 / 6)
    assert box_iou([0, 0, 1, 1], [0, 0, 2, 2]) == pytest.approx(1 / 4)
    assert box_iou([0, 0, 1, 1], [5, 5, 6, 6]) == 0.0
    assert box_iou([3, 3, 3, 3], [3, 3, 3, 3]) == 0.0  # no area at all
    with pytest.raises(ValueError, match="x0 <= x1"):
        box_iou([2, 0, 1, 1], [0, 0, 1, 1])


@pytest.mark.parametrize("target", [0.5, 0.75, 0.9])
@pytest.mark.parametrize("name", list(masks()))
def test_jittered_box_meets_the_target_iou_inside_the_image(name, target):
    mask = masks()[name]
    height, width = mask.shape
    truth = bounding_box(mask)
    boxes = [jittered_box(mask, target, np.random.default_rng(seed)) for seed in range(25)]
    for box in boxes:
        assert box.shape == (4,) and box.dtype == np.float32
        assert abs(box_iou(box, truth) - target) <= 0.05
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    # Random, not one fixed box; clipping at the image border makes some coincide.
    assert len({tuple(box) for box in boxes}) > len(boxes) // 2


def test_jittered_box_honours_a_tight_tolerance_and_target_one():
    mask = masks()["vertical_line"]
    truth = bounding_box(mask)
    for seed in range(10):
        box = jittered_box(mask, 0.6, np.random.default_rng(seed), tolerance=1e-3)
        assert box_iou(box, truth) == pytest.approx(0.6, abs=1e-3)
    np.testing.assert_array_equal(jittered_box(mask, 1.0, np.random.default_rng(0)), truth)
    with pytest.raises(ValueError, match="target_iou"):
        jittered_box(mask, 0.0, np.random.default_rng(0))


def resized(mask, size, how):
    """Nearest-neighbour resize (centre-aligned) of a bool mask to size (height, width)."""
    if how == "pil":
        image = Image.fromarray(mask.astype(np.uint8) * 255).resize(size[::-1], Image.NEAREST)
        return np.asarray(image) > 0
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="nearest-exact")[0, 0].numpy() > 0


@pytest.mark.parametrize("target_size", [64, 256])
@pytest.mark.parametrize("how", ["pil", "torch"])
@pytest.mark.parametrize("name", ["blob", "vertical_line", "horizontal_line", "pixel", "l_shape", "speckle"])
def test_prompts_survive_a_resize_to_the_sam_frame(name, how, target_size):
    mask = {**masks(), "speckle": np.random.default_rng(1).random((41, 50)) < 0.1}[name]
    scale = target_size / max(mask.shape)
    size = tuple(int(side * scale + 0.5) for side in mask.shape)  # SAM's ResizeLongestSide
    big_mask = resized(mask, size, how)
    points = positive_clicks(mask, 10, np.random.default_rng(0)) * scale
    # SAM adds 0.5 to a point: the pixel it reads is floor(x * scale + 0.5).
    assert pixels_at(big_mask, np.floor(points + 0.5)).all()
    if name != "speckle":
        np.testing.assert_allclose(bounding_box(big_mask), bounding_box(mask) * scale, atol=1.0)


def test_empty_mask():
    empty = np.zeros((12, 14), bool)
    rng = np.random.default_rng(0)
    for make_prompt in (
        lambda: positive_clicks(empty, 1, rng),
        lambda: bounding_box(empty),
        lambda: jittered_box(empty, 0.75, rng),
        lambda: click_prompt(empty, 1, 1, rng),
    ):
        with pytest.raises(EmptyMaskError, match="no object pixel"):
            make_prompt()
    assert issubclass(EmptyMaskError, ValueError)
    assert positive_clicks(empty, 0, rng).shape == (0, 2)
    points, labels = click_prompt(empty, 0, 4, rng)  # negatives only: anywhere in the image
    assert points.shape == (4, 2) and (labels == 0).all()
    assert not pixels_at(empty, points).any()
    with pytest.raises(EmptyMaskError, match="no background"):
        negative_clicks(np.ones((5, 5), bool), 1, rng)


def test_masks_must_be_boolean_2d():
    with pytest.raises(ValueError, match="boolean array"):
        positive_clicks(np.ones((4, 4), np.uint8), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="boolean array"):
        bounding_box(np.ones((2, 4, 4), bool))


def test_slice_prompts_refuse_non_finite_coordinates():
    from medsa_peft.data.prompts import PromptError, SlicePrompt

    with pytest.raises(PromptError, match="finite"):
        SlicePrompt(box=(float("nan"), 1, 5, 5))
    with pytest.raises(PromptError, match="finite"):
        SlicePrompt(points=[(3, float("inf"))])
