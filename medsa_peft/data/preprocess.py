"""From raw intensities to SAM's input frame and back.

SAM sees a square `image_size` x `image_size` (S x S) frame: the slice is resized so that its long side
is S, zero padded at the bottom and right, and normalised with SAM's pixel mean and std. Its masks come out
at the mask-decoder resolution s = 4 * (S / patch_size) and are mapped back to the original pixel grid by
`sam_logits_to_original`, as SAM's own post-processing does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Resize, ScaleIntensityRange, SpatialPad
from monai.utils import convert_to_numpy, convert_to_tensor
from transformers import SamConfig

SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)
CT_WINDOW_HU = (-175.0, 250.0)
MRI_PERCENTILES = (0.5, 99.5)
PHOTO_MODALITIES = ("fundus", "dermoscopy", "ultrasound", "photo")  # 8-bit pictures: value / 255
MODALITIES = ("ct", "mri", *PHOTO_MODALITIES)


@dataclass(frozen=True)
class SamFrame:
    """Sizes of SAM's input frame (`image_size`, S) and of its mask-decoder output (`mask_size`, s)."""

    image_size: int
    mask_size: int

    @classmethod
    def from_config(cls, config: SamConfig) -> SamFrame:
        """The frame of a `SamModel` built from `config`: s = 4 * image_embedding_size (256 for real SAM)."""
        vision = config.vision_config
        return cls(image_size=vision.image_size, mask_size=4 * (vision.image_size // vision.patch_size))


def _mri_range(image: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of the non-zero voxels (all voxels when none is non-zero)."""
    foreground = image[image != 0]
    return tuple(float(value) for value in np.percentile(foreground if foreground.size else image, MRI_PERCENTILES))


def normalize_intensity(image: np.ndarray, modality: str) -> np.ndarray:
    """Scale raw intensities to float32 in [0, 1], the rule chosen by `modality`; the shape is kept.

    ct: Hounsfield units windowed to [-175, 250], then scaled. mri: the 0.5th and 99.5th percentiles of the
    non-zero voxels of the whole array (pass one volume) map to 0 and 1, clipped; skull-stripped volumes and
    their edge slices are mostly zero background, which would otherwise pull both percentiles to 0. A
    constant foreground maps to 1 (an all-zero array to 0). fundus, dermoscopy, ultrasound: uint8 photos
    divided by 255.
    """
    image = np.asarray(image)
    if modality == "ct":
        scale = ScaleIntensityRange(*CT_WINDOW_HU, b_min=0.0, b_max=1.0, clip=True)
    elif modality == "mri":
        low, high = _mri_range(image)
        if high <= low:
            return ((image >= low) & (image != 0)).astype(np.float32)
        scale = ScaleIntensityRange(low, high, b_min=0.0, b_max=1.0, clip=True)
    elif modality in PHOTO_MODALITIES:
        if image.dtype != np.uint8:
            raise ValueError(f"a {modality} image must be 8-bit (uint8), got {image.dtype}")
        scale = ScaleIntensityRange(0.0, 255.0, b_min=0.0, b_max=1.0)
    else:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return convert_to_numpy(scale(image.astype(np.float32)), dtype=np.float32)


def resized_shape(original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """(h, w) of an (H, W) slice after the long-side resize to `image_size`, rounded as SAM rounds."""
    height, width = original_size
    scale = image_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def covering_windows(first: int, stop: int, size: int, total: int, overlap: int = 0) -> list[range]:
    """Windows of `size` consecutive slices, neighbours sharing `overlap`, that cover slices [first, stop) of a
    volume of `total` >= `size` slices; a window that would run past the volume's end is moved back inside it.

    >>> covering_windows(0, 11, size=4, total=11, overlap=1)
    [range(0, 4), range(3, 7), range(6, 10), range(7, 11)]
    """
    starts = range(first, stop, size - overlap)
    return [range(start, start + size) for start in sorted({min(max(start, 0), total - size) for start in starts})]


def _resize_and_pad(stack: torch.Tensor, image_size: int, mode: str) -> torch.Tensor:
    """(C, H, W) -> (C, S, S): long-side resize with `mode`, then zeros at the bottom and right."""
    size = resized_shape(tuple(stack.shape[-2:]), image_size)
    resize = Resize(size, mode=mode, anti_aliasing=mode == "bilinear")
    padded = SpatialPad((image_size, image_size), method="end")(resize(stack))
    return convert_to_tensor(padded, track_meta=False)


def frame_images(images: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """Slices in [0, 1] -> SAM pixel values (N, 3, S, S) float32.

    `images` is (N, H, W) grey (replicated to 3 channels) or (N, H, W, 3) colour. As SAM does, the pixel
    mean/std normalisation comes before the padding, so the padded border is 0 (the mean colour).
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim == 3:
        images = images.unsqueeze(1).expand(-1, 3, -1, -1)
    elif images.ndim == 4 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected slices (N, H, W) or (N, H, W, 3), got shape {tuple(images.shape)}")
    count, channels, height, width = images.shape
    mean = torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    normalised = ((images - mean) / std).reshape(count * channels, height, width)
    return _resize_and_pad(normalised, image_size, "bilinear").reshape(count, channels, image_size, image_size)


def frame_masks(masks: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, S, S) bool in SAM's frame, nearest neighbour."""
    masks = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {tuple(masks.shape)}")
    return _resize_and_pad(masks, image_size, "nearest-exact") > 0.5


def decoder_targets(masks: np.ndarray | torch.Tensor, frame: SamFrame) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, s, s) float32 0/1 on the grid of SAM's `pred_masks`, for the loss."""
    framed = frame_masks(masks, frame.image_size).float()
    low_res = Resize((frame.mask_size, frame.mask_size), mode="nearest-exact")(framed)
    return convert_to_tensor(low_res, track_meta=False)


def frame_coordinates(coordinates: np.ndarray, original_size: tuple[int, int], image_size: int) -> np.ndarray:
    """(x, y) pairs in the original (H, W) pixel frame -> SAM frame, float32, same shape.

    The last axis holds points (x, y) or boxes (x0, y0, x1, y1). The scale is S / max(H, W) up to the
    rounding of the resized shape (each axis uses resized / original, as SAM's ResizeLongestSide does).
    """
    coordinates = np.asarray(coordinates, dtype=np.float32)
    if coordinates.shape[-1] % 2:
        raise ValueError(f"coordinates must end in (x, y) pairs, got shape {coordinates.shape}")
    height, width = original_size
    new_height, new_width = resized_shape(original_size, image_size)
    scale = np.tile(np.array([new_width / width, new_height / height], dtype=np.float32), coordinates.shape[-1] // 2)
    return coordinates * scale


def sam_logits_to_original(
    logits: torch.Tensor, original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Mask logits (N, s, s) from SAM -> (N, H, W) logits on the original pixel grid.

    Bilinear upsampling to S x S, crop of the unpadded region, bilinear resize to H x W.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected logits (N, s, s), got shape {tuple(logits.shape)}")
    new_height, new_width = resized_shape(original_size, image_size)
    upsampled = F.interpolate(logits[:, None].float(), (image_size, image_size), mode="bilinear", align_corners=False)
    cropped = upsampled[..., :new_height, :new_width]
    return F.interpolate(cropped, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]
