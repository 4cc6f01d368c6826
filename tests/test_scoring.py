"""Scoring on the original grid: an oracle that paints the prompted box must score Dice 1 on box-shaped truth."""

from types import SimpleNamespace

import datasets
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medsa_peft.data import PromptSpec, SamFrame
from medsa_peft.evaluation.metrics import dice, hd95
from medsa_peft.evaluation.scoring import evaluate_model

# mask grid = image frame and slices 32 x 64: the frame maps 1:1 onto the original pixels, no resampling
FRAME = SamFrame(image_size=64, mask_size=64)


class BoxOracle(torch.nn.Module):
    """Answers every box prompt with logits +10 inside the box and -10 outside, in SAM's mask grid."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.depths = []

    def forward(self, pixel_values, input_boxes, multimask_output, depth=None):
        self.depths.append(depth)
        centres = (torch.arange(FRAME.mask_size) + 0.5) * FRAME.image_size / FRAME.mask_size
        x0, y0, x1, y1 = (input_boxes[:, 0, i, None, None] for i in range(4))
        inside = (centres[None, None, :] >= x0) & (centres[None, None, :] < x1)
        inside = inside & (centres[None, :, None] >= y0) & (centres[None, :, None] < y1)
        return SimpleNamespace(pred_masks=torch.where(inside, 10.0, -10.0)[:, None, None])


def rectangle_label(shape, top, left, height, width, value=1):
    label = np.zeros(shape, dtype=np.uint8)
    label[top : top + height, left : left + width] = value
    return label


def test_box_oracle_scores_dice_one_on_2d_rectangles():
    rng = np.random.default_rng(0)
    labels = [rectangle_label((32, 64), 8, 16, 12, 40), rectangle_label((32, 64), 20, 40, 9, 17)]
    split = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "image": [Image.fromarray(rng.integers(0, 255, (32, 64), dtype=np.uint8)) for _ in labels],
            "label": [Image.fromarray(label) for label in labels],
            "spacing": [[0.5, 0.5], [0.5, 0.5]],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "label": datasets.Image(),
                "spacing": datasets.Sequence(datasets.Value("float32")),
            }
        ),
    )
    evaluation = evaluate_model(
        BoxOracle(), split, {"box": (1,)}, "ultrasound", FRAME, PromptSpec("box"), progress=False
    )
    assert evaluation.summary["num_volumes"] == 2
    assert evaluation.summary["dice/box"] == 1.0
    assert evaluation.summary["hd95/box"] == 0.0
    assert evaluation.overlay is not None and min(evaluation.overlay.size) >= 128


def test_2d_scores_are_2d_metrics_of_the_prediction_on_the_original_grid():
    """An imperfect 2D prediction: scoring must equal Dice and 2D HD95 of the masks themselves."""
    truth_label = rectangle_label((32, 64), 4, 4, 20, 30)
    split = datasets.Dataset.from_dict(
        {
            "id": ["a"],
            "image": [Image.fromarray(np.zeros((32, 64), np.uint8))],
            "label": [Image.fromarray(truth_label)],
            "spacing": [[0.5, 0.8]],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "label": datasets.Image(),
                "spacing": datasets.Sequence(datasets.Value("float32")),
            }
        ),
    )

    class ShiftedBoxOracle(BoxOracle):  # paints the box moved 6 px right and 3 px down
        def forward(self, pixel_values, input_boxes, multimask_output, depth=None):
            return super().forward(pixel_values, input_boxes + torch.tensor([6.0, 3.0, 6.0, 3.0]), multimask_output)

    evaluation = evaluate_model(
        ShiftedBoxOracle(), split, {"box": (1,)}, "ultrasound", FRAME, PromptSpec("box"), progress=False
    )
    truth = truth_label.astype(bool)
    prediction = rectangle_label((32, 64), 7, 10, 20, 30).astype(bool)
    assert evaluation.summary["dice/box"] == pytest.approx(dice(prediction, truth))
    assert evaluation.summary["hd95/box"] == pytest.approx(hd95(prediction, truth, (0.5, 0.8)))
    assert evaluation.summary["hd95/box"] > 0


def volume_split(image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> datasets.Dataset:
    """An evaluation split of one NIfTI volume and its label map, spacing 1.5 x 1.5 x 3 mm."""
    return datasets.Dataset.from_dict(
        {
            "id": ["vol"],
            "image": [nib.Nifti1Image(image, affine)],
            "label": [nib.Nifti1Image(label, affine)],
            "spacing": [[1.5, 1.5, 3.0]],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Nifti(),
                "label": datasets.Nifti(),
                "spacing": datasets.Sequence(datasets.Value("float32")),
            }
        ),
    )


def test_box_oracle_on_a_volume_uses_depth_windows_and_predicts_nothing_outside_the_object():
    label = np.zeros((32, 64, 10), dtype=np.uint8)
    label[10:30, 5:25, 3:8] = 2  # slices 3..7 hold the object
    image = np.random.default_rng(1).normal(size=label.shape).astype(np.float32)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    split = volume_split(image, label, affine)
    oracle = BoxOracle()
    evaluation = evaluate_model(
        oracle, split, {"organ": (2,)}, "mri", FRAME, PromptSpec("box"), depth=4, progress=False
    )
    assert evaluation.summary["dice/organ"] == 1.0 and evaluation.summary["hd95/organ"] == 0.0
    assert set(oracle.depths) == {4}

