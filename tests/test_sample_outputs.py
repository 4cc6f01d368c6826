"""Training samples stay the samples of the data layer before the loading rework of issue 13 (commit e61d025).

The values in PINNED were computed by that code from the synthetic inputs below, with the seeds below. Prompts
and decoder targets must come out the same (targets exactly, prompts to float32 rounding). Pixel values are compared
through `reference_frame`, that code's framing written out here (MONAI's Gaussian anti-aliasing, then bilinear),
whose statistics are pinned too:
- where the frame upsamples or keeps the size (volumes, small pictures), to float rounding (1e-5);
- where a picture is downsampled, the new framing resizes the 8-bit picture with torch's anti-aliased bilinear
  filter (PIL's and SamImageProcessor's filter) before scaling; MONAI blurred with a Gaussian of sigma (f - 1) / 2,
  zero-padded at the picture's border, then sampled bilinearly. The two filters differ near edges and at the border:
  see PHOTO_TOLERANCE.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Resize, SpatialPad
from monai.utils import convert_to_tensor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

from datasets_scripts._common import image_features, volume_features
from medsa_peft.data import (
    PromptSpec,
    SamFrame,
    SamTrainingSamples,
    collate_sam,
    decode_example,
    resized_shape,
    sam_pixel_values,
)
from medsa_peft.data.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD

FRAME = SamFrame(image_size=64, mask_size=32)
PROMPT_KEYS = ("input_boxes", "input_points", "input_labels")


def lesion_photo(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 picture (shaded skin, a textured lesion with a wavy border, noise) and its 0 / 255 mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width].astype(np.float64)
    angle = np.arctan2(rows - height / 2, cols - width / 2)
    radius = np.hypot((rows - height / 2) / height, (cols - width / 2) / width)
    lesion = radius < 0.3 * (1 + 0.15 * np.sin(5 * angle + seed))
    picture = np.empty((height, width, 3))
    for channel, (skin, brown) in enumerate(zip((220, 170, 150), (110, 70, 50))):
        texture = 25 * np.sin(rows * 0.9 + channel) * np.cos(cols * 0.7)
        picture[..., channel] = np.where(lesion, brown + texture, skin - 40 * radius)
    picture += rng.normal(0, 8, picture.shape)
    return np.clip(picture, 0, 255).astype(np.uint8), np.where(lesion, 255, 0).astype(np.uint8)


def photo_split() -> datasets.Dataset:
    """Pictures downsampled (100 x 75, 90 x 130), kept (48 x 64) and upsampled (30 x 40) by the 64 px frame."""
    columns = {"id": [], "image": [], "label": [], "spacing": []}
    for seed, (height, width) in enumerate(((75, 100), (130, 90), (48, 64), (30, 40))):
        picture, mask = lesion_photo(height, width, seed)
        columns["id"].append(f"photo{seed}")
        columns["image"].append(picture)
        columns["label"].append(mask)
        columns["spacing"].append([1.0, 1.0])
    return datasets.Dataset.from_dict(columns, features=image_features())


def grey_split() -> datasets.Dataset:
    """8-bit grey MRI slices, downsampled (99 x 117) and upsampled (40 x 50), labels 1 and 2."""
    columns = {"id": [], "image": [], "label": [], "spacing": []}
    for seed, (height, width) in enumerate(((99, 117), (40, 50))):
        rng = np.random.default_rng(10 + seed)
        rows, cols = np.mgrid[:height, :width]
        radius = np.hypot((rows - height / 2) / height, (cols - width / 2) / width)
        label = np.where(radius < 0.2, 2, np.where(radius < 0.35, 1, 0)).astype(np.uint8)
        image = np.where(label > 0, 60 + 50 * label, 0) + rng.integers(0, 30, (height, width)) * (label > 0)
        columns["id"].append(f"grey{seed}")
        columns["image"].append(image.astype(np.uint8))
        columns["label"].append(label)
        columns["spacing"].append([1.0, 1.0])
    return datasets.Dataset.from_dict(columns, features=image_features())


def volume_split(folder, modality: str) -> datasets.Dataset:
    """Two volumes stored with the axial axis first and x flipped (so they are reoriented), organs 1, 2 and 3."""
    affine = np.array([[0, 0, -0.8, 0], [0, 0.7, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]], float)
    columns = {"id": [], "image": [], "label": [], "spacing": []}
    for seed in range(2):
        rng = np.random.default_rng(20 + seed)
        shape = (20, 30, 12)
        label = np.zeros(shape, np.uint8)
        label[4 + seed : 14, 5:20, 8 + seed : 11] = 1
        label[2:8, 10 + seed : 16, 2:5] = 2
        label[2:8, 18:24, 4 : 7 + seed] = 3
        if modality == "ct":
            image = rng.integers(-400, 400, shape).astype(np.int16)
        else:  # skull-stripped-like: zero outside a box, two percent outliers
            image = np.zeros(shape, np.float32)
            image[1:19, 2:28] = rng.uniform(100, 900, (18, 26, 12))
            image[5, 5, 5] = 5000.0
        case_id = f"{modality}{seed}"
        for kind, array in (("image", image), ("label", label)):
            stored = np.transpose(array, (2, 1, 0))[..., ::-1].copy()
            path = folder / f"{case_id}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(stored, affine), path)
            columns[kind].append(str(path))
        columns["id"].append(case_id)
        columns["spacing"].append([2.5, 0.7, 0.8])
    return datasets.Dataset.from_dict(columns, features=volume_features())


def reference_frame(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """The framing of commit e61d025: (N, 3, H, W) in [0, 1] -> SAM's mean/std, MONAI's anti-aliased bilinear
    resize of the long side to `image_size`, zeros at the bottom and right."""
    height, width = images.shape[-2:]
    scale = image_size / max(height, width)
    size = (int(height * scale + 0.5), int(width * scale + 0.5))
    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    flat = ((images - mean) / std).reshape(-1, height, width)
    resized = Resize(size, mode="bilinear", anti_aliasing=True)(flat)
    resized = SpatialPad((image_size, image_size), method="end")(resized)
    return convert_to_tensor(resized, track_meta=False).reshape(-1, 3, image_size, image_size)


PINNED = json.loads((Path(__file__).parent / "sample_outputs_e61d025.json").read_text())
CASES = {  # name: (split maker, classes, modality, prompt, volume_depth, torch seed)
    "photo-box": (lambda folder: photo_split(), {"lesion": (255,)}, "dermoscopy", "box:0.75", 1, 0),
    "photo-points": (lambda folder: photo_split(), {"lesion": (255,)}, "dermoscopy", "points:2+1", 1, 1),
    "grey-points": (lambda folder: grey_split(), {"outer": (1, 2), "inner": (2,)}, "mri", "points:1", 1, 2),
    "ct-box": (
        lambda folder: volume_split(folder, "ct"),
        {"organ": (1,), "vessels": (2, 3), "absent": (9,)},
        "ct",
        "box:0.75",
        4,
        3,
    ),
    "mri-points": (
        lambda folder: volume_split(folder, "mri"), {"organ": (1,), "vessels": (2, 3)}, "mri", "points:1+1", 3, 4
    ),
}
# Downsampled pictures, new framing against e61d025's, in SAM's normalised units (1 / 255 of the [0, 1] range is
# 0.0174 of them): measured on these inputs, max 0.47 (photos) / 0.53 (grey), mean over the picture 0.034 / 0.040.
# The new framing equals SamImageProcessor's to one 8-bit level (SAMPROC_TOLERANCE), e61d025's did not (max 0.47).
PHOTO_TOLERANCE = {"max": 0.6, "mean": 0.05}
SAMPROC_TOLERANCE = 1.01 / 255 / min(SAM_PIXEL_STD)


def label_digest(labels: torch.Tensor) -> list:
    return [hashlib.sha256(np.packbits(labels.numpy().astype(bool)).tobytes()).hexdigest()[:16], int(labels.sum())]


def framed(sample: dict, image_size: int) -> torch.Tensor:
    """A sample's pixel values as SamModel gets them: (D, 3, S, S), D = 1 for a picture."""
    batch = collate_sam([sample])
    return sam_pixel_values(batch["images"], batch["image_sizes"], image_size)


@pytest.mark.parametrize("case", CASES)
def test_samples_are_the_pinned_ones(case, tmp_path):
    make_split, classes, modality, prompt, depth, seed = CASES[case]
    split = make_split(tmp_path)
    torch.manual_seed(seed)
    samples = SamTrainingSamples(
        split, classes, modality, FRAME, PromptSpec.parse(prompt), volume_depth=depth, store_dir=tmp_path / "store"
    )
    drawn = [samples[item] for _ in range(2) for item in range(len(samples))]  # two passes: the RNG's progression
    assert len(drawn) == len(PINNED[case])
    originals = [decode_example(example, modality).image for example in split]
    for pinned, sample, item in zip(PINNED[case], drawn, samples.items * 2):
        assert list(item) == pinned["item"]
        assert sorted(name for name in sample if name in PROMPT_KEYS) == sorted(pinned["prompts"])
        for name, values in pinned["prompts"].items():
            np.testing.assert_allclose(sample[name].numpy(), values, atol=1e-3)  # pinned to 4 decimals
        assert label_digest(sample["labels"]) == pinned["labels"]

        image = originals[item[0]]
        if depth > 1:
            slices = torch.from_numpy(np.moveaxis(image[..., 0], 2, 0)[pinned["start"] : pinned["start"] + depth])
            source = slices[:, None].expand(-1, 3, -1, -1)
        else:
            source = torch.from_numpy(image[:, :, 0]).permute(2, 0, 1)[None].expand(-1, 3, -1, -1)
        reference = reference_frame(source.float(), FRAME.image_size)
        statistics = reference.double()
        np.testing.assert_allclose(
            [statistics.mean(), statistics.std(), statistics.min(), statistics.max()], pinned["pixels"], atol=2e-5
        )  # the reference framing is e61d025's
        difference = (framed(sample, FRAME.image_size) - reference).abs()
        if max(image.shape[:2]) > FRAME.image_size:
            height, width = resized_shape(image.shape[:2], FRAME.image_size)
            assert difference.max() <= PHOTO_TOLERANCE["max"]
            assert difference[..., :height, :width].mean() <= PHOTO_TOLERANCE["mean"]
        else:
            assert difference.max() <= 1e-5


def test_pictures_are_sam_image_processor_frames_to_one_level(tmp_path):
    processor = SamImageProcessorPil(
        size={"longest_edge": FRAME.image_size}, pad_size={"height": FRAME.image_size, "width": FRAME.image_size}
    )
    split = photo_split()
    samples = SamTrainingSamples(
        split, {"lesion": (255,)}, "dermoscopy", FRAME, PromptSpec.parse("box"), store_dir=tmp_path
    )
    for item, example in enumerate(split):
        picture = np.asarray(example["image"])
        expected = processor(images=picture, return_tensors="pt")["pixel_values"]
        assert (framed(samples[item], FRAME.image_size) - expected).abs().max() <= SAMPROC_TOLERANCE
