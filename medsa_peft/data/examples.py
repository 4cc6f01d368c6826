"""Decode one example of the data contract (2D image or 3D NIfTI volume) into normalised arrays.

2D and 3D examples come out alike, as volumes: a 2D image is a volume of depth 1. Volumes are brought to
the closest canonical (RAS+) voxel order with nibabel, so the last axis is the axial (inferior to superior)
one and depth chunks are runs of axial slices whatever the orientation stored in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import nibabel as nib
import numpy as np
from PIL import Image

from .preprocess import normalize_intensity

_GREY_IMAGE_MODES = ("1", "L", "I", "I;16", "F")


@dataclass
class DecodedExample:
    """One example as arrays: `image` (H, W, D, C) float32 normalised to [0, 1] with C in {1, 3},
    `label` (H, W, D) integer label map, `spacing` (3,) mm along H, W, D (1.0 for the depth of a 2D image)."""

    id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]

    def class_mask(self, values: Sequence[int]) -> np.ndarray:
        """(H, W, D) bool: the voxels whose label is one of `values`."""
        return np.isin(self.label, values)


def is_volume_dataset(features: Mapping) -> bool:
    """Whether examples with these `datasets` features are 3D volumes (NIfTI image) rather than 2D images."""
    return isinstance(features["image"], datasets.Nifti)


def _integer_labels(data: np.ndarray, example_id: str) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer):
        return data
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ValueError(f"example {example_id!r}: the label map holds non-integer values")
    return rounded.astype(np.int32)


def _select_channels(image: np.ndarray, channels: Sequence[int] | None, example_id: str) -> np.ndarray:
    """(H, W, D, C) -> (H, W, D, 1 or 3), keeping `channels` when given."""
    if channels is not None:
        if len(channels) not in (1, 3) or max(channels) >= image.shape[-1]:
            raise ValueError(
                f"example {example_id!r}: image_channels {tuple(channels)} must pick 1 or 3 of its "
                f"{image.shape[-1]} channels"
            )
        image = image[..., list(channels)]
    if image.shape[-1] not in (1, 3):
        raise ValueError(
            f"example {example_id!r}: SAM takes 1 (grey) or 3 (colour) channels, the image has {image.shape[-1]}; "
            "choose them with image_channels"
        )
    return image


def _decode_volume(example: Mapping, example_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    image_nifti = nib.as_closest_canonical(example["image"])
    label_nifti = nib.as_closest_canonical(example["label"])
    image = image_nifti.get_fdata(dtype=np.float32)
    label = _integer_labels(np.asanyarray(label_nifti.dataobj), example_id)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4 or label.ndim != 3:
        raise ValueError(
            f"example {example_id!r}: expected an (H, W, D[, C]) image and an (H, W, D) label, "
            f"got shapes {image.shape} and {label.shape}"
        )
    spacing = tuple(float(zoom) for zoom in image_nifti.header.get_zooms()[:3])
    return image, label, spacing


def _decode_image(example: Mapping, example_id: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    picture: Image.Image = example["image"]
    image = np.asarray(picture if picture.mode in _GREY_IMAGE_MODES else picture.convert("RGB"))
    label = np.asarray(example["label"])
    if label.ndim != 2:
        raise ValueError(f"example {example_id!r}: the label must be a single-channel map, got shape {label.shape}")
    image = image[:, :, None, None] if image.ndim == 2 else image[:, :, None, :]
    spacing = (*(float(value) for value in example.get("spacing") or (1.0, 1.0)), 1.0)
    return image, _integer_labels(label, example_id)[:, :, None], spacing


def decode_example(
    example: Mapping, modality: str, image_channels: Sequence[int] | None = None
) -> DecodedExample:
    """Arrays of one `datasets` example (decoded features: nibabel images or PIL images), intensities
    normalised for `modality` (per volume for MRI; see `normalize_intensity`)."""
    example_id = str(example["id"])
    decode = _decode_volume if isinstance(example["image"], nib.spatialimages.SpatialImage) else _decode_image
    image, label, spacing = decode(example, example_id)
    if image.shape[:3] != label.shape:
        raise ValueError(
            f"example {example_id!r}: image {image.shape[:3]} and label {label.shape} differ in size"
        )
    image = _select_channels(image, image_channels, example_id)
    try:
        image = normalize_intensity(image, modality, channels_last=True)
    except ValueError as error:
        raise ValueError(f"example {example_id!r}: {error}") from error
    return DecodedExample(example_id, image, label, spacing)
