"""Decode one example of the data contract (2D image or 3D NIfTI volume) into normalised arrays.

2D and 3D examples come out alike, as volumes: a 2D image is a volume of depth 1 whose spacing is
(row mm, column mm, 1.0). Volumes are brought to the closest canonical (RAS+) voxel order with nibabel, so
the last axis is the axial (inferior to superior) one and depth chunks are runs of axial slices whatever
the orientation stored in the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import nibabel as nib
import numpy as np
import torch
from PIL import Image

from .preprocess import frame_images, normalize_intensity

_GREY_IMAGE_MODES = ("1", "L", "I", "I;16", "F")


@dataclass
class DecodedExample:
    """One example as arrays: `image` (H, W, D, C) float32 normalised to [0, 1] with C in {1, 3},
    `label` (H, W, D) integer label map, `spacing` (3,) mm along H, W, D."""

    id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]

    def class_mask(self, values: Sequence[int]) -> np.ndarray:
        """(H, W, D) bool: the voxels whose label is one of `values`."""
        return np.isin(self.label, values)

    def sam_pixel_values(self, image_size: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Slices `start:stop` of the depth axis in SAM's frame: (D, 3, S, S) float32."""
        slices = np.moveaxis(self.image[:, :, start:stop], 2, 0)
        return frame_images(slices[..., 0] if slices.shape[-1] == 1 else slices, image_size)


def is_volume_dataset(features: Mapping) -> bool:
    """Whether examples with these `datasets` features are 3D volumes (NIfTI image) rather than 2D images."""
    return isinstance(features["image"], datasets.Nifti)


def _example_id(example: Mapping) -> str:
    return str(example["id"])


def _integer_labels(data: np.ndarray, example_id: str) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer):
        return data
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise ValueError(f"example {example_id!r}: the label map holds non-integer values")
    return rounded.astype(np.int32)


def decode_label(example: Mapping) -> np.ndarray:
    """(H, W, D) integer label map of an example (D = 1 for a 2D image), in the voxel order `decode_example` uses."""
    example_id, label = _example_id(example), example["label"]
    if isinstance(label, nib.spatialimages.SpatialImage):
        label = np.asanyarray(nib.as_closest_canonical(label).dataobj)
        if label.ndim != 3:
            raise ValueError(f"example {example_id!r}: the label volume must be (H, W, D), got shape {label.shape}")
    else:
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"example {example_id!r}: the label must be a single-channel map, got shape {label.shape}")
        label = label[:, :, None]
    return _integer_labels(label, example_id)


def _decode_image(example: Mapping) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(H, W, D, C) raw intensities and the spacing of a volume or a 2D image."""
    source = example["image"]
    if isinstance(source, nib.spatialimages.SpatialImage):
        canonical = nib.as_closest_canonical(source)
        image = canonical.get_fdata(dtype=np.float32)
        spacing = tuple(float(zoom) for zoom in canonical.header.get_zooms()[:3])
        return (image[..., None] if image.ndim == 3 else image), spacing
    picture: Image.Image = source
    image = np.asarray(picture if picture.mode in _GREY_IMAGE_MODES else picture.convert("RGB"))
    spacing = (*(float(value) for value in example.get("spacing") or (1.0, 1.0)), 1.0)
    return (image[:, :, None, None] if image.ndim == 2 else image[:, :, None, :]), spacing


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


def decode_example(
    example: Mapping, modality: str, image_channels: Sequence[int] | None = None
) -> DecodedExample:
    """Arrays of one `datasets` example (features decoded: nibabel or PIL images), intensities normalised for
    `modality` (per volume for MRI; see `normalize_intensity`). `image_channels` picks 1 or 3 channels of a
    multi-channel image (e.g. 3 of BraTS' 4 sequences)."""
    example_id = _example_id(example)
    image, spacing = _decode_image(example)
    label = decode_label(example)
    if image.ndim != 4 or image.shape[:3] != label.shape:
        raise ValueError(f"example {example_id!r}: image {image.shape} and label {label.shape} differ in size")
    image = _select_channels(image, image_channels, example_id)
    try:
        image = normalize_intensity(image, modality, channels_last=True)
    except ValueError as error:
        raise ValueError(f"example {example_id!r}: {error}") from error
    return DecodedExample(example_id, image, label, spacing)
