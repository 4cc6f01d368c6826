"""From raw intensities to SAM's input frame and back.

SAM sees a square `image_size` x `image_size` (S x S) frame: the slice is resized so that its long side
is S (bilinear, anti-aliased when it shrinks: the triangle filter of PIL and of SAM's own image processor),
normalised with SAM's pixel mean and std, and zero padded at the bottom and right. SAM 2's frame
(`SamFrame.keep_aspect_ratio` False, as its Sam2Processor frames) stretches the slice to S x S instead: each axis is
resized on its own, prompt coordinates scale by (S / W, S / H), and mask logits go straight back to (H, W); every
function here follows the frame it is given (an int S stands for SAM's long-side frame of S). 8-bit pictures are
shrunk as 8-bit values, before scaling them (training samples in `medsa_peft.data.store`, `frame_images` given
uint8), as transformers' SamImageProcessor does; everything else is resized in float32. Its masks come out at the
mask-decoder resolution s = 4 * (S / patch_size) and are mapped back to the original pixel grid by
`sam_logits_to_original`, SamImageProcessor's own post-processing.

SamProcessor prepares the same inputs (`docs/inference.md`); tests/test_processor.py pins where the two agree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import ScaleIntensityRange
from monai.utils import convert_to_numpy
from transformers import SamConfig, SamImageProcessorPil

from ..constants import MODALITIES, PHOTO_MODALITIES

__all__ = [
    "SamFrame",
    "covering_windows",
    "decoder_targets",
    "frame_coordinates",
    "frame_images",
    "frame_masks",
    "intensity_range",
    "normalize_intensity",
    "resize_long_side",
    "resized_shape",
    "sam_logits_to_original",
    "sam_pixel_values",
]

SAM_PIXEL_MEAN = (0.485, 0.456, 0.406)
SAM_PIXEL_STD = (0.229, 0.224, 0.225)
CT_WINDOW_HU = (-175.0, 250.0)
MRI_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class SamFrame:
    """Sizes of SAM's input frame (`image_size`, S) and of its mask-decoder output (`mask_size`, s), and how a slice
    goes into the frame: `keep_aspect_ratio` True (SAM, SAM-HQ) resizes its long side to S and zero pads the rest;
    False (the SAM 2 family) stretches it to S x S, each axis on its own, as their processors do."""

    image_size: int
    mask_size: int
    keep_aspect_ratio: bool = True

    @classmethod
    def from_config(cls, config: SamConfig) -> SamFrame:
        """The frame of a SAM built from `config`: s = 4 * image_embedding_size (256 for real SAM and SAM 2).

        SAM and SAM-HQ: the ViT's image size over its patch size. SAM 2 (a `Sam2Config`, whose Hiera has no single
        patch size): its prompt encoder's, which match the lowest-resolution feature map the mask decoder reads; its
        frame stretches slices to the square (`keep_aspect_ratio` False).
        """
        vit = hasattr(config.vision_config, "patch_size")
        sizes = config.vision_config if vit else config.prompt_encoder_config
        return cls(
            image_size=sizes.image_size, mask_size=4 * (sizes.image_size // sizes.patch_size), keep_aspect_ratio=vit
        )


def _framing(frame: SamFrame | int) -> tuple[int, bool]:
    """(S, whether the aspect ratio is kept) of `frame`; an int S is SAM's long-side frame of S."""
    if isinstance(frame, SamFrame):
        return frame.image_size, frame.keep_aspect_ratio
    return frame, True


def _mri_range(image: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of the non-zero voxels (all voxels when none is non-zero)."""
    foreground = image[image != 0]
    return tuple(float(value) for value in np.percentile(foreground if foreground.size else image, MRI_PERCENTILES))


def intensity_range(image: np.ndarray, modality: str) -> tuple[float, float]:
    """The raw intensities (low, high) that `normalize_intensity` maps to 0 and 1 for this image or volume."""
    if modality == "ct":
        return CT_WINDOW_HU
    if modality == "mri":
        return _mri_range(np.asarray(image))
    if modality in PHOTO_MODALITIES:
        return (0.0, 255.0)
    raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def normalize_intensity(
    image: np.ndarray, modality: str, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Scale raw intensities to float32 in [0, 1], the rule chosen by `modality`; the shape is kept.

    ct: Hounsfield units windowed to [-175, 250], then scaled. mri: the 0.5th and 99.5th percentiles of the
    non-zero voxels of the whole array (pass one volume) map to 0 and 1, clipped; skull-stripped volumes and
    their edge slices are mostly zero background, which would otherwise pull both percentiles to 0. A
    constant foreground maps to 1 (an all-zero array to 0). fundus, dermoscopy, ultrasound: uint8 photos
    divided by 255. `value_range`, from `intensity_range` of the whole volume, lets a part of a volume be
    scaled as the whole would be (MRI percentiles are per volume).
    """
    image = np.asarray(image)
    if modality == "ct":
        scale = ScaleIntensityRange(*CT_WINDOW_HU, b_min=0.0, b_max=1.0, clip=True)
    elif modality == "mri":
        low, high = _mri_range(image) if value_range is None else value_range
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


def resized_shape(original_size: tuple[int, int], frame: SamFrame | int) -> tuple[int, int]:
    """(h, w) of an (H, W) slice resized into `frame`: the long side resized to S, rounded as SAM rounds, or (S, S)
    for a frame that does not keep the aspect ratio."""
    image_size, keep_aspect_ratio = _framing(frame)
    if not keep_aspect_ratio:
        return image_size, image_size
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


def resize_long_side(images: torch.Tensor, frame: SamFrame | int) -> torch.Tensor:
    """(N, C, H, W) uint8 or float -> (N, C, h, w) of the same dtype, (h, w) = `resized_shape` in `frame`: the long
    side resized to S, or both sides to S in a frame that does not keep the aspect ratio.

    Bilinear with torch's anti-aliasing (a triangle filter as wide as the shrink factor, PIL's filter; plain
    bilinear when enlarging). uint8 images are resized as 8-bit values (rounded), in channels-last order,
    torch's fast path for them.
    """
    size = resized_shape(tuple(images.shape[-2:]), frame)
    if size == tuple(images.shape[-2:]):
        return images
    if images.dtype == torch.uint8:
        images = images.contiguous(memory_format=torch.channels_last)
    return F.interpolate(images, size, mode="bilinear", antialias=True, align_corners=False).contiguous()


def _normalise_into(out: torch.Tensor, images: torch.Tensor) -> None:
    """Write SAM's normalisation of `images` (n, 1 or 3, h, w), in [0, 1], into the top-left of `out` (n, 3, S, S).

    Python scalars, not tensors, carry the mean and std: no host-to-device copy, so no synchronisation.
    """
    height, width = images.shape[-2:]
    for channel, (mean, std) in enumerate(zip(SAM_PIXEL_MEAN, SAM_PIXEL_STD)):
        source = images[:, 0 if images.shape[1] == 1 else channel]
        out[:, channel, :height, :width] = (source - mean) / std


def sam_pixel_values(
    images: torch.Tensor, image_sizes: Sequence[Sequence[int]], frame: SamFrame | int
) -> torch.Tensor:
    """Batched images -> SAM pixel values (N, 3, S, S) float32, on the images' device.

    `images` (N, C, H, W) holds image i in its top-left `image_sizes[i]` (h, w) corner: uint8 8-bit values
    (scaled by 1 / 255 first) or float32 in [0, 1], C = 1 (grey) or 3. Each is resized into `frame`
    (`resize_long_side`, in float32), normalised with SAM's mean and std, and zero padded, as `frame_images`
    does. Meant for the accelerator: workers send compact images (`collate_sam`), the device frames them. Runs
    of images of one size (the slices of a volume) are framed together.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(image_sizes) != images.shape[0]:
        raise ValueError(
            f"expected images (N, 1 or 3, H, W) and N sizes, got shape {tuple(images.shape)}, {len(image_sizes)} sizes"
        )
    image_size, _ = _framing(frame)
    out = torch.zeros(images.shape[0], 3, image_size, image_size, dtype=torch.float32, device=images.device)
    first = 0
    while first < len(image_sizes):
        size = tuple(image_sizes[first])
        stop = first + 1
        while stop < len(image_sizes) and tuple(image_sizes[stop]) == size:
            stop += 1
        stack = images[first:stop, :, : size[0], : size[1]]
        scaled = stack.float() / 255.0 if stack.dtype == torch.uint8 else stack.float()
        _normalise_into(out[first:stop], resize_long_side(scaled, frame))
        first = stop
    return out


def frame_images(images: np.ndarray | torch.Tensor, frame: SamFrame | int) -> torch.Tensor:
    """Slices -> SAM pixel values (N, 3, S, S) float32, resized into `frame` (`resize_long_side`).

    `images` is (N, H, W) grey (replicated to 3 channels) or (N, H, W, 3) colour: float in [0, 1], or uint8 8-bit
    values, which are resized as 8 bits and then scaled by 1 / 255 (as the training store and SamImageProcessor
    resize pictures; several times faster than float32 on large pictures). The padded border is 0 (the mean
    colour), as SAM's own processor leaves it.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        images = images.float()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    elif images.ndim == 4 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected slices (N, H, W) or (N, H, W, 3), got shape {tuple(images.shape)}")
    resized = resize_long_side(images, frame)
    image_size, _ = _framing(frame)
    out = torch.zeros(images.shape[0], 3, image_size, image_size)
    _normalise_into(out, resized.float() / 255.0 if resized.dtype == torch.uint8 else resized)
    return out


@functools.lru_cache(maxsize=256)
def _nearest_sources(size: int, output_size: int) -> np.ndarray:
    """Source index of every output position of a "nearest-exact" resize of one axis from `size` to `output_size`.

    Taken from `F.interpolate` itself on an index ramp in float32, the dtype the masks are resized in.
    """
    ramp = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    sources = F.interpolate(ramp, output_size, mode="nearest-exact")[0, 0].long().numpy()
    sources.setflags(write=False)  # shared by the cache
    return sources


def _framed_sources(size: int, framed_size: int, image_size: int, output_size: int) -> np.ndarray:
    """For each of `output_size` positions of one axis of a mask in SAM's frame (resized from `size` to
    `framed_size`, padded to `image_size`, resized to `output_size`), its source index; `size` in the padding."""
    sources = np.full(image_size, size)
    sources[:framed_size] = _nearest_sources(size, framed_size)
    return sources if output_size == image_size else sources[_nearest_sources(image_size, output_size)]


def _framed_masks(masks: np.ndarray | torch.Tensor, frame: SamFrame | int, output_size: int) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, output_size, output_size) bool: nearest-neighbour ("nearest-exact") resize into
    `frame` (`resized_shape`), zero padding, nearest-neighbour resize to `output_size`, as picked pixels."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
    height, width = masks.shape[1:]
    image_size, _ = _framing(frame)
    framed_height, framed_width = resized_shape((height, width), frame)
    rows = _framed_sources(height, framed_height, image_size, output_size)
    cols = _framed_sources(width, framed_width, image_size, output_size)
    picked = masks[:, np.minimum(rows, height - 1)[:, None], np.minimum(cols, width - 1)[None, :]].astype(bool)
    picked &= (rows < height)[:, None] & (cols < width)[None, :]
    return torch.from_numpy(picked)


def frame_masks(masks: np.ndarray | torch.Tensor, frame: SamFrame | int) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, S, S) bool in SAM's frame, nearest neighbour ("nearest-exact")."""
    return _framed_masks(masks, frame, _framing(frame)[0])


def decoder_targets(masks: np.ndarray | torch.Tensor, frame: SamFrame) -> torch.Tensor:
    """Binary masks (N, H, W) -> (N, s, s) float32 0/1 on the grid of SAM's `pred_masks`, for the loss: the masks
    framed by `frame_masks`, then resized to s x s by nearest neighbour ("nearest-exact"), reading only the pixels
    that survive both resizes."""
    return _framed_masks(masks, frame, frame.mask_size).float()


def frame_coordinates(coordinates: np.ndarray, original_size: tuple[int, int], frame: SamFrame | int) -> np.ndarray:
    """(x, y) pairs in the original (H, W) pixel frame -> SAM frame, float32, same shape.

    The last axis holds points (x, y) or boxes (x0, y0, x1, y1). Each axis scales by resized / original
    (`resized_shape`): S / max(H, W) up to the rounding of the resized shape, as SAM's ResizeLongestSide does, or
    (S / W, S / H) in a frame that does not keep the aspect ratio, as Sam2Processor does.
    """
    coordinates = np.asarray(coordinates, dtype=np.float32)
    if coordinates.shape[-1] % 2:
        raise ValueError(f"coordinates must end in (x, y) pairs, got shape {coordinates.shape}")
    height, width = original_size
    new_height, new_width = resized_shape(original_size, frame)
    scale = np.tile(np.array([new_width / width, new_height / height], dtype=np.float32), coordinates.shape[-1] // 2)
    return coordinates * scale


def sam_logits_to_original(
    logits: torch.Tensor, original_size: tuple[int, int], frame: SamFrame | int
) -> torch.Tensor:
    """Mask logits (N, s, s) from SAM -> (N, H, W) float32 logits on the original pixel grid.

    SamImageProcessor's `post_process_masks` without binarising: bilinear upsampling to S x S, crop of the unpadded
    region, bilinear resize to H x W. The N masks of one size go through it as the channels of one image. A frame
    that does not keep the aspect ratio has nothing to crop: the logits are resized straight to H x W (bilinear), as
    Sam2ImageProcessor's `post_process_masks` does.
    """
    if logits.ndim != 3:
        raise ValueError(f"expected logits (N, s, s), got shape {tuple(logits.shape)}")
    image_size, keep_aspect_ratio = _framing(frame)
    if not keep_aspect_ratio:
        size = tuple(int(side) for side in original_size)
        return F.interpolate(logits[None].float(), size, mode="bilinear", align_corners=False)[0]
    (upsampled,) = _post_processor().post_process_masks(
        [logits[None].float()],
        [tuple(original_size)],
        [resized_shape(original_size, image_size)],
        binarize=False,
        pad_size={"height": image_size, "width": image_size},
    )
    return upsampled[0]


@functools.cache
def _post_processor() -> SamImageProcessorPil:
    """The SamImageProcessor whose `post_process_masks` maps logits back (every size comes with the call)."""
    return SamImageProcessorPil()
