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

from ..io import GREY_PICTURE_MODES, Reorientation
from .preprocess import SamFrame, frame_images, normalize_intensity

__all__ = [
    "DecodedExample",
    "class_mask",
    "decode_example",
    "decode_image",
    "decode_label",
    "is_volume_dataset",
]



@dataclass
class DecodedExample:
    """One example as arrays: `image` (H, W, D, C) float32 normalised to [0, 1] with C in {1, 3},
    `label` (H, W, D) integer label map, `spacing` (3,) mm along H, W, D."""

    id: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]

    def class_mask(self, values: Sequence[int], start: int = 0, stop: int | None = None) -> np.ndarray:
        """(H, W, D) bool over slices `start:stop`: the voxels whose label is one of `values`."""
        return class_mask(self.label[:, :, start:stop], values)

    def sam_pixel_values(self, frame: SamFrame | int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Slices `start:stop` of the depth axis in SAM's `frame` (`frame_images`): (D, 3, S, S) float32."""
        slices = np.moveaxis(self.image[:, :, start:stop], 2, 0)
        return frame_images(slices[..., 0] if slices.shape[-1] == 1 else slices, frame)


def class_mask(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Where the integer `label` map is one of `values`: `np.isin(label, values)`, as one comparison per value
    (for the few values of a class several times faster than `np.isin`'s general search)."""
    if not values:
        return np.zeros(np.shape(label), bool)
    mask = np.equal(label, values[0])
    for value in values[1:]:
        mask |= np.equal(label, value)
    return mask


def is_volume_dataset(features: Mapping) -> bool:
    """Whether examples with these `datasets` features are 3D volumes (NIfTI image) rather than 2D images."""
    return isinstance(features["image"], datasets.Nifti)


def _example_id(example: Mapping) -> str:
    return str(example["id"])


def _reorientation(image: nib.spatialimages.SpatialImage) -> Reorientation:
    """From the volume's voxel order to the closest canonical (RAS+) one: the predictor's reorientation."""
    return Reorientation(image.affine, image.shape[:3])


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
        label = _reorientation(label).to_canonical(np.asanyarray(label.dataobj))
        if label.ndim != 3:
            raise ValueError(f"example {example_id!r}: the label volume must be (H, W, D), got shape {label.shape}")
    else:
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"example {example_id!r}: the label must be a single-channel map, got shape {label.shape}")
        label = label[:, :, None]
    return _integer_labels(label, example_id)


def decode_image(example: Mapping) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(H, W, D, C) raw intensities (C = 1 grey, 3 colour; D = 1 for a 2D image) and the spacing (mm) of an
    example's volume or picture, in the voxel order of `decode_label`. Volumes come as float32, pictures in
    their stored integer type."""
    source = example["image"]
    if isinstance(source, nib.spatialimages.SpatialImage):
        image = source.get_fdata(dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"example {_example_id(example)!r}: the image volume must be (H, W, D), got {image.shape}")
        reorientation = _reorientation(source)
        image = reorientation.to_canonical(image)
        spacing = tuple(float(zoom) for zoom in reorientation.canonical_order(source.header.get_zooms()[:3]))
        return image[..., None], spacing
    picture: Image.Image = source
    image = np.asarray(picture if picture.mode in GREY_PICTURE_MODES else picture.convert("RGB"))
    spacing = (*(float(value) for value in example.get("spacing") or (1.0, 1.0)), 1.0)
    return (image[:, :, None, None] if image.ndim == 2 else image[:, :, None, :]), spacing


def decode_example(example: Mapping, modality: str) -> DecodedExample:
    """Arrays of one `datasets` example (features decoded: nibabel or PIL images), intensities normalised for
    `modality` (per volume for MRI; see `normalize_intensity`)."""
    example_id = _example_id(example)
    image, spacing = decode_image(example)
    label = decode_label(example)
    if image.shape[:3] != label.shape:
        raise ValueError(f"example {example_id!r}: image {image.shape[:3]} and label {label.shape} differ in size")
    try:
        image = normalize_intensity(image, modality)
    except ValueError as error:
        raise ValueError(f"example {example_id!r}: {error}") from error
    return DecodedExample(example_id, image, label, spacing)
