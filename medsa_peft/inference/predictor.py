"""Med-SA inference on 2D pictures and 3D volumes, with prompts per slice or one 3D box.

    predictor = MedSAPredictor.from_pretrained("user/medsa-btcv", device="cuda", dtype="bfloat16")
    prediction = predictor.predict_file("ct.nii.gz", Box3D(120, 80, 40, 200, 160, 72), modality="ct")
    prediction.save("seg.nii.gz"); prediction.save_overlay("seg.png")

Prompt coordinates are voxel indices of the input file as `medsa_peft.io` reads it (`inference.prompts`).
Volumes are processed in the closest canonical (RAS+) voxel order, the order the data layer trains on; a single
non-axial slice (a sagittal DICOM file, a (1, H, W) NIfTI) as the 2D picture it is stored as (`io.Reorientation`).
Masks come back in the file's order, shape, affine and spacing.

A model with the SD-Trans depth adapter sees each volume in chunks of `chunk_depth` consecutive slices that
overlap by `overlap`; mask logits are averaged where chunks overlap. A model without it runs the prompted
slices one by one, in batches. Slices without a prompt are predicted empty.

Interactive use (SAM's click, look, correct): `multimask=True` answers with SAM's three candidate masks and their
predicted IoU and keeps the best; `input_masks` feeds a prediction's low-resolution logits back with the next
prompt; `MedSAPredictor.session(image)` runs the loop click by click. The image embedding of every slice (every
chunk of a depth model) is cached by content, so a new prompt on a slice seen before runs only SAM's prompt
encoder and mask decoder: Med-SA's image encoder does not see the prompt (HyP-Adpt sits in the decoder).

A SAM 2 video model (`from_pretrained(..., video=True)`) segments a volume from a prompt on one slice instead:
`propagate_file` tracks the mask from that slice to both ends of the volume with SAM 2's memory, as it tracks an
object through the frames of a video (Medical SAM 2's "medical images as video").
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftConfig, PeftModel, PeftType, get_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import Sam2VideoInferenceSession, Sam2VideoModel, SamModel

from ..compat import BaseTunerLayer, tensor_version
from ..constants import DTYPE_NAMES, PHOTO
from ..data.preprocess import (
    MODALITIES,
    SamFrame,
    covering_windows,
    frame_images,
    normalize_intensity,
    resized_shape,
    sam_logits_to_original,
)
from ..data.prompts import prompt_tensors
from ..files import write_json, write_png
from ..io import MedicalImage, Reorientation, read_image, write_mask
from ..sam_models import load_sam
from ..overlay import busiest_slice, class_colour, overlay, radiological
from ..tuner.config import MEDSA_PEFT_TYPE
from ..tuner.fast_paths import compile_sam_layers, use_fused_attention
from .prompts import Prompt, PromptError, SlicePrompt, canonical_prompts, prompted_file_slices

__all__ = [
    "AdapterNotFoundError",
    "InteractiveSession",
    "MedSAPredictor",
    "Prediction",
    "SliceMasks",
    "load_medsa_model",
]

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
ADAPTER_CONFIG_FILE = "adapter_config.json"
# what `examples/train.py --method medsa|lora` writes
SERVED_PEFT_TYPES = (MEDSA_PEFT_TYPE.value, PeftType.LORA.value)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
SHOWN_KEYS = 3  # weight names quoted in an error about missing or unexpected adapter weights
MULTIMASK_OUTPUTS = 3  # SAM's candidate masks with multimask_output=True
TRACKED_OBJECT = 1  # the object id of the one mask a propagation tracks
BOX_CORNER_LABELS = (2, 3)  # SAM 2's tracker takes a box as its two corners, points of these labels
# torch's load_state_dict error for a tensor of another shape
SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<name>\S+): copying a param with shape torch\.Size\((?P<saved>\[[^\]]*\])\) from "
    r"checkpoint, the shape in current model is torch\.Size\((?P<needed>\[[^\]]*\])\)"
)


logger = logging.getLogger(__name__)


class AdapterNotFoundError(FileNotFoundError):
    """The adapter folder or Hub repo is missing or incomplete."""


def _finite_intensities(image: MedicalImage) -> np.ndarray:
    """`image.array` with its NaN and infinite voxels set to the lowest finite value, so that the normalisation
    ignores them; a warning names the file and the count."""
    array = image.array
    if not np.issubdtype(array.dtype, np.floating):
        return array
    finite = np.isfinite(array)
    count = array.size - int(np.count_nonzero(finite))
    if count == 0:
        return array
    if count == array.size:
        raise ValueError(f"{image.path}: every voxel is NaN or infinite")
    lowest = array.min(where=finite, initial=np.inf)
    logger.warning(
        "%s: %d of %d voxels are NaN or infinite; they are set to the lowest finite value (%g) before normalising",
        image.path,
        count,
        array.size,
        lowest,
    )
    return np.where(finite, array, lowest)


def _normalise(image: MedicalImage, modality: str | None) -> np.ndarray:
    """Intensities of `image` in [0, 1] by the data layer's rule for its modality (NaN / inf voxels: see
    `_finite_intensities`)."""
    if modality is None:
        modality = image.modality or (None if image.is_volume else PHOTO)
    if modality is None:
        if image.kind == "dicom":
            tag = image.modality_tag
            reason = f"its DICOM Modality tag is {tag!r}, which names neither" if tag else "it has no Modality tag"
        else:
            reason = "a NIfTI file does not record it"
        raise ValueError(
            f"{image.path}: say which intensity normalisation applies: modality 'ct' (Hounsfield window) or 'mri' "
            f"(percentiles), --modality on the command line; {reason}"
        )
    if modality not in MODALITIES:
        raise ValueError(f"{image.path}: unknown modality {modality!r}; expected one of {MODALITIES}")
    try:
        return normalize_intensity(_finite_intensities(image), modality)
    except ValueError as error:
        raise ValueError(f"{image.path}: {error}") from error


def _checked_slices(slices: np.ndarray, frame: SamFrame, description: str) -> np.ndarray:
    """`slices` as a contiguous float32 (D, H, W) or (D, H, W, 3) array whose slices fit SAM's `frame`."""
    slices = np.ascontiguousarray(slices, dtype=np.float32)
    if slices.ndim not in (3, 4) or (slices.ndim == 4 and slices.shape[-1] != 3):
        raise ValueError(f"slices must be (D, H, W) or (D, H, W, 3), got shape {slices.shape}")
    _check_fits_frame(slices.shape[1:3], frame, description)
    return slices


def _check_fits_frame(size: tuple[int, int], frame: SamFrame, where: str) -> None:
    """Raise ValueError when a (H, W) slice's short side becomes 0 pixels once resized into SAM's `frame` (only a
    frame that keeps the aspect ratio shrinks a side below S)."""
    framed = resized_shape(size, frame)
    if min(framed) < 1:
        height, width = size
        raise ValueError(
            f"{where}: its {width} x {height} (x, y) slices are too thin for SAM: resized to {frame.image_size} pixels "
            f"along the long side, the short side is {min(framed)} pixels (it needs at least "
            f"{math.ceil(max(size) / (2 * frame.image_size))} pixel(s) here)"
        )


@dataclass
class Prediction:
    """A predicted mask in the geometry of its input.

    mask: bool, `image.spatial_shape` ((I, J, K) volumes, (H, W) pictures). image: the input as read.
    normalized: the input's intensities in [0, 1], shape of `image.array`, for overlays.
    iou_scores: (Z, M) float32, SAM's predicted IoU of each of the M candidate masks (3 with `multimask`, else 1) of
        every slice z of the file (axis 2; a picture or single slice: Z = 1), NaN on slices without a prompt; `mask`
        holds the highest. For a volume whose slices are not axial, the rows are the model's axial slices instead.
    low_res: (K, s, s) float32, the low-resolution logits of `mask` in SAM's mask frame for each of the K slices the
        model segments (its canonical order): pass it as `input_masks` with the next prompt on the same image.
    """

    mask: np.ndarray
    image: MedicalImage
    normalized: np.ndarray
    iou_scores: np.ndarray | None = None
    low_res: torch.Tensor | None = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask: NIfTI with the input's affine and spacing for volumes, PNG (0 / 255) for pictures."""
        return write_mask(self.mask, self.image, path)

    def overlay(self) -> np.ndarray:
        """(h, w, 3) uint8: the slice with the largest mask area (the middle one if the mask is empty), the mask
        tinted and outlined. Volumes are shown as axial slices in radiological view (anterior up, the patient's
        right on the left); a single non-axial slice as stored."""
        picture, mask = self.normalized, self.mask
        if self.image.is_volume:
            reorientation = Reorientation(self.image.affine, self.image.spatial_shape)
            picture, mask = reorientation.to_canonical(picture), reorientation.to_canonical(mask)
            index = busiest_slice(mask)
            picture, mask = picture[:, :, index], mask[:, :, index]
            if not reorientation.single_slice:
                picture, mask = radiological(picture), radiological(mask)
        return np.asarray(overlay(picture, [(mask, class_colour(0))]))

    def save_overlay(self, path: str | os.PathLike) -> Path:
        return write_png(self.overlay(), path)

    def scores(self) -> list[dict]:
        """The predicted IoU of every prompted slice, JSON-ready: [{"slice": z, "iou_scores": [...], "best": i}],
        `best` the candidate in `mask`."""
        if self.iou_scores is None:
            return []
        return [
            {"slice": z, "iou_scores": [round(float(score), 6) for score in row], "best": int(np.argmax(row))}
            for z, row in enumerate(self.iou_scores)
            if not np.isnan(row).all()
        ]

    def save_scores(self, path: str | os.PathLike) -> Path:
        """Write `scores()` as JSON, atomically."""
        return write_json({"slices": self.scores()}, path)


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    return DTYPES[dtype]


def _adapter_config(adapter: str | os.PathLike) -> PeftConfig:
    """The adapter's PEFT config, after checking that a local folder holds an adapter's files."""
    local = Path(adapter)
    if local.is_dir():
        missing = [] if (local / ADAPTER_CONFIG_FILE).is_file() else [ADAPTER_CONFIG_FILE]
        if not any((local / name).is_file() for name in ADAPTER_WEIGHT_FILES):
            missing.append(" or ".join(ADAPTER_WEIGHT_FILES))
        if missing:
            raise AdapterNotFoundError(
                f"{local}: not a complete adapter folder, missing {', '.join(missing)} "
                "(model.save_pretrained writes them)"
            )
    elif local.exists():
        raise AdapterNotFoundError(f"{local}: is a file; an adapter is a folder (or a Hub repo id)")
    try:
        config = PeftConfig.from_pretrained(str(adapter))
    except (OSError, ValueError) as error:
        raise AdapterNotFoundError(f"{adapter}: no adapter found in this folder or Hub repo ({error})") from error
    except KeyError as error:  # PEFT looks the type up in its table of known types
        raise ValueError(
            f"{adapter}: {ADAPTER_CONFIG_FILE} names peft_type {error.args[0]!r}, a type PEFT does not know; "
            f"a Med-SA adapter has peft_type '{MEDSA_PEFT_TYPE.value}'"
        ) from error
    peft_type = getattr(config.peft_type, "value", config.peft_type)  # PEFT's own types are enum members
    if peft_type not in SERVED_PEFT_TYPES:
        served = " or ".join(SERVED_PEFT_TYPES)
        raise ValueError(f"{adapter}: a {peft_type} adapter; the predictor serves {served} adapters")
    return config


def load_medsa_model(
    adapter: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    video: bool = False,
) -> PeftModel:
    """SAM with a Med-SA adapter (or a PEFT LoRA one, `--method lora`), in eval mode on `device` in `dtype`.

    adapter: a folder written by `save_pretrained` or a Hub repo id. model: the SAM folder or Hub id (SamModel,
    SamHQModel or Sam2Model: `sam_models.load_sam`); by default the base model the adapter names
    (`base_model_name_or_path`). video: load a SAM 2 video checkpoint as `Sam2VideoModel` (for `propagate_file`);
    an adapter trained on its `Sam2Model` fits it, the two share the image encoder and decoder.
    """
    config = _adapter_config(adapter)
    base = model or config.base_model_name_or_path
    if not base:
        raise ValueError(f"{adapter}: the adapter names no base model; pass the SAM model (--model)")
    if model is None and Path(adapter).is_dir() and (Path(adapter) / base).is_dir():
        base = Path(adapter) / base  # a base named relative to the adapter folder (converted checkpoints: "../sam")
    dtype = _as_dtype(dtype)
    device = _usable_device(device)
    try:
        sam = load_sam(base, dtype, video)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}: the SAM base model; pass it with --model") from error
    try:
        peft_model = PeftModel.from_pretrained(sam, str(adapter))
    except SafetensorError as error:
        raise ValueError(
            f"{_weights_file(adapter)}: cannot load the adapter's weights, the file is damaged ({error}): empty, "
            "truncated or not safetensors"
        ) from error
    except RuntimeError as error:
        raise ValueError(_load_failure(adapter, base, sam, error)) from error
    _check_complete_weights(adapter, peft_model)
    peft_model = peft_model.to(device=device, dtype=dtype).eval()
    _check_finite_weights(adapter, peft_model, dtype)
    return peft_model


def _usable_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, after checking that torch can place a tensor there."""
    try:
        usable = torch.device(device)
        torch.empty(0, device=usable)
    except (RuntimeError, AssertionError) as error:  # a torch built without CUDA raises AssertionError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        message = f"device {str(device)!r} is not usable here ({reason}); use 'cpu' or a GPU that torch sees"
        raise ValueError(message) from error
    return usable


def _weights_file(adapter: str | os.PathLike) -> str:
    """The adapter's safetensors file: its path for a local folder, else the file name and the Hub repo."""
    local = Path(adapter) / ADAPTER_WEIGHT_FILES[0]
    return str(local) if local.is_file() else f"{ADAPTER_WEIGHT_FILES[0]} of {adapter}"


def _load_failure(
    adapter: str | os.PathLike, base: str | os.PathLike, sam: torch.nn.Module, error: RuntimeError
) -> str:
    """One line for PEFT's failure to load the adapter's weights into `sam`: the first tensor of another shape (an
    adapter trained on another SAM size), else the first line of the error."""
    mismatch = SIZE_MISMATCH.search(str(error))
    if mismatch is None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{adapter}: cannot load the adapter into the SAM base {base} ({reason})"
    count = len(SIZE_MISMATCH.findall(str(error)))
    hidden = getattr(sam.config.vision_config, "hidden_size", None)  # a ViT's; SAM 2's Hiera widens by stage
    size = "" if hidden is None else f" (vision hidden size {hidden})"
    return (
        f"{adapter}: the adapter was trained on another SAM than the base {base}{size}: {count} of its weight "
        "tensors have other shapes, first "
        f"{mismatch['name']} has {mismatch['saved']} where the base needs {mismatch['needed']}"
    )


def _check_complete_weights(adapter: str | os.PathLike, model: PeftModel) -> None:
    """Raise ValueError when the adapter's weight file lacks a weight of the adapter its config describes, or holds
    one it does not describe (PEFT only warns, and leaves a missing weight at its initial value)."""
    expected = set(get_peft_model_state_dict(model))
    saved = set(load_peft_weights(str(adapter), device="cpu"))
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing:
        raise ValueError(
            f"{_weights_file(adapter)}: {len(missing)} of the {len(expected)} weight tensors of the adapter that "
            f"{ADAPTER_CONFIG_FILE} describes are missing ({_first(missing)}); the file is incomplete or the config "
            "does not belong to these weights (e.g. a changed depth_adapter)"
        )
    if unexpected:
        raise ValueError(
            f"{_weights_file(adapter)}: holds {len(unexpected)} weight tensors that the adapter {ADAPTER_CONFIG_FILE} "
            f"describes does not have ({_first(unexpected)}); the config does not belong to these weights"
        )


def _first(names: list[str]) -> str:
    """The first `SHOWN_KEYS` of `names`, then "..." when there are more."""
    return ", ".join(names[:SHOWN_KEYS]) + (", ..." if len(names) > SHOWN_KEYS else "")


def _check_finite_weights(adapter: str | os.PathLike, model: PeftModel, dtype: torch.dtype) -> None:
    """Raise ValueError when a weight of the adapter, as loaded in `dtype`, is NaN or infinite."""
    weights = get_peft_model_state_dict(model)
    damaged = [name for name, tensor in weights.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if damaged:
        raise ValueError(
            f"{adapter}: {len(damaged)} of the adapter's {len(weights)} weight tensors hold NaN or infinite values "
            f"in {str(dtype).removeprefix('torch.')} (first: {damaged[0]}); the adapter is damaged or its training "
            "diverged"
        )


@dataclass
class SliceMasks:
    """The answer of `MedSAPredictor.predict_masks` for D slices of (H, W) pixels, M candidate masks per slice (3 with
    `multimask`, else 1).

    logits: (D, M, H, W) float32 on the slices' own grid, > 0 meaning object; -inf on slices without a prompt.
    iou_scores: (D, M) float32, SAM's predicted IoU of each candidate; NaN on slices without a prompt.
    low_res: (D, M, s, s) float32, the candidates' logits in SAM's mask frame (s = `SamFrame.mask_size`, 256 for SAM):
        what `input_masks` takes back with the next prompt; 0 on slices without a prompt.
    """

    logits: torch.Tensor
    iou_scores: torch.Tensor
    low_res: torch.Tensor

    @property
    def best_index(self) -> torch.Tensor:
        """(D,) int64: the candidate with the highest predicted IoU on each slice (0 on slices without a prompt)."""
        return self.iou_scores.nan_to_num(float("-inf")).argmax(dim=1)

    def best(self) -> SliceMasks:
        """The highest-IoU candidate of every slice, as SliceMasks with M = 1."""
        index = self.best_index
        rows = torch.arange(len(index))
        return SliceMasks(
            self.logits[rows, index, None], self.iou_scores[rows, index, None], self.low_res[rows, index, None]
        )


@dataclass
class _Prepared:
    """An image read for the model: `normalized` in the file's order, `slices` (D, H, W) or (D, H, W, 3) in the
    model's (canonical) order, and the `reorientation` between the two."""

    image: MedicalImage
    normalized: np.ndarray
    reorientation: Reorientation
    slices: np.ndarray


class _EmbeddingCache:
    """Image embeddings of recently seen slices or chunks, least recently used first, by content: the key is a hash of
    the normalised slices a forward pass framed (and their count), since the embedding is a function of them and of
    the model. Entries belong to one state of the model's image encoder (`_encoder_state`); another state empties
    the cache."""

    def __init__(self):
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.state: tuple | None = None

    def follow(self, state: tuple) -> None:
        if state != self.state:
            self.entries.clear()
            self.state = state

    def get(self, key: tuple) -> torch.Tensor | None:
        embeddings = self.entries.get(key)
        if embeddings is not None:
            self.entries.move_to_end(key)
        return embeddings

    def put(self, key: tuple, embeddings: torch.Tensor, capacity: int) -> None:
        """Keep `embeddings` (n, C, h, w), then drop the oldest entries until at most `capacity` slices are kept."""
        self.entries[key] = embeddings
        while sum(len(kept) for kept in self.entries.values()) > capacity:
            self.entries.popitem(last=False)


def _content_key(slices: np.ndarray) -> tuple:
    """The cache key of a contiguous float32 (n, H, W[, 3]) run of slices."""
    return slices.shape, hashlib.blake2b(memoryview(slices), digest_size=16).digest()


def _encoder_state(encoder: torch.nn.Module) -> tuple:
    """What the image embeddings depend on besides the pixels: the encoder's weights (where they live and their
    in-place version, bumped by optimiser steps and loading) and which adapters run."""
    weights = tuple((parameter.data_ptr(), tensor_version(parameter)) for parameter in encoder.parameters())
    adapters = tuple(
        (module.disable_adapters, tuple(module.active_adapters))
        for module in encoder.modules()
        if isinstance(module, BaseTunerLayer)
    )
    return weights, adapters


def _video_model(model: torch.nn.Module) -> Sam2VideoModel | None:
    """The Sam2VideoModel that `model` is or wraps as a PeftModel; None for any other module."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base if isinstance(base, Sam2VideoModel) else None


def _tracker_points(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_tensors` of one prompt as the point inputs of SAM 2's tracker: coordinates (1, 1, k, 2) float32 and
    labels (1, 1, k) int32, a box first as its two corners (labels 2 and 3), as Sam2VideoProcessor files a box."""
    coordinates, labels = [], []
    if "input_boxes" in tensors:
        coordinates.append(tensors["input_boxes"].reshape(1, 1, 2, 2))
        labels.append(torch.tensor(BOX_CORNER_LABELS, dtype=torch.int32).reshape(1, 1, 2))
    if "input_points" in tensors:
        coordinates.append(tensors["input_points"])
        labels.append(tensors["input_labels"].to(torch.int32))
    return torch.cat(coordinates, dim=2), torch.cat(labels, dim=2)


def _sam_model(model: torch.nn.Module) -> SamModel | None:
    """The SamModel that `model` is or wraps as a PeftModel; None for any other module (a DDP / FSDP wrapper, a
    stand-in, SAM-HQ or SAM 2, whose decoders need more than `image_embeddings`)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base if isinstance(base, SamModel) else None


class MedSAPredictor:
    """Segment pictures and volumes with SAM + a Med-SA adapter.

    Args:
        model: a PeftModel of SamModel with a Med-SA or LoRA adapter active (see `load_medsa_model`); or any module
            called like SamModel (training evaluates its prepared, possibly wrapped model) with `frame` and
            `depth_adapter` given. A Sam2VideoModel (or a PeftModel of one) predicts by `propagate_file` only.
        chunk_depth: slices per forward pass of a model with the depth adapter (the SD-Trans depth D).
        overlap: slices shared by consecutive chunks; their mask logits are averaged.
        batch_size: slices per forward pass (whole chunks of a depth model: at least one chunk).
        compile: `torch.compile` each image-encoder layer, the prompt encoder and the mask decoder
            (`tuner.fast_paths.compile_sam_layers`).
        fused_attention: SAM's spatial attention without its (HW x HW) bias (`tuner.fast_paths.use_fused_attention`),
            the same function up to rounding; faster and leaner on GPUs.
        progress: show a tqdm bar over the forward passes.
        frame: SAM's input frame; by default read from the PeftModel's SamModel config.
        depth_adapter: whether the model takes `depth`; by default the active adapter's `depth_adapter`.
        embedding_cache: image embeddings of up to this many slices are kept on the model's device (a public
            attribute; 0: none), so that another prompt on a slice seen before runs only the prompt encoder and the
            mask decoder. Used when `model` is a SamModel or a PeftModel of one; other modules run whole every time.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        chunk_depth: int = 8,
        overlap: int = 2,
        batch_size: int = 8,
        compile: bool = False,
        fused_attention: bool = False,
        progress: bool = True,
        frame: SamFrame | None = None,
        depth_adapter: bool | None = None,
        embedding_cache: int = 64,
    ):
        if isinstance(model, PeftModel):  # Med-SA, or LoRA (no depth adapter)
            frame = frame or SamFrame.from_config(model.get_base_model().config)
            if depth_adapter is None:
                depth_adapter = bool(getattr(model.active_peft_config, "depth_adapter", False))
        elif frame is None or depth_adapter is None:
            raise ValueError(
                "MedSAPredictor needs a PeftModel (see load_medsa_model), or the `frame` and `depth_adapter` of "
                "another module called like SamModel"
            )
        if chunk_depth < 1 or not 0 <= overlap < chunk_depth:
            raise ValueError(f"need chunk_depth >= 1 and 0 <= overlap < chunk_depth, got {chunk_depth}, {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if embedding_cache < 0:
            raise ValueError(f"embedding_cache must be at least 0 slices, got {embedding_cache}")
        self.model = model.eval()
        self.frame, self.has_depth = frame, depth_adapter
        self.chunk_depth, self.overlap, self.batch_size, self.progress = chunk_depth, overlap, batch_size, progress
        self.embedding_cache = embedding_cache
        self._sam = _sam_model(model)
        self._video = _video_model(model)
        self._cache = _EmbeddingCache()
        if fused_attention:
            use_fused_attention(model)
        if compile:
            compile_sam_layers(model)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_pretrained(
        cls,
        adapter: str | os.PathLike | None,
        model: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        video: bool = False,
        **kwargs,
    ) -> MedSAPredictor:
        """Load SAM + adapter (`load_medsa_model`) and wrap it; `kwargs` go to the constructor. With `adapter` None,
        the SAM of `model` alone (`sam_models.load_sam`): a whole model fine-tuned by `--method decoder|full`.
        video: load a SAM 2 video checkpoint as `Sam2VideoModel`, for `propagate_file`."""
        if adapter is not None:
            return cls(load_medsa_model(adapter, model, device=device, dtype=dtype, video=video), **kwargs)
        if model is None:
            raise ValueError("give an adapter (--adapter), a SAM model (--model), or both")
        sam = load_sam(model, _as_dtype(dtype), video).to(_usable_device(device)).eval()
        return cls(sam, frame=SamFrame.from_config(sam.config), depth_adapter=False, **kwargs)

    def clear_embedding_cache(self) -> None:
        """Forget the cached image embeddings. Changes of the encoder's weights in place and of the active adapter
        are noticed without it; a weight tensor replaced by another of the same address is not."""
        self._cache.entries.clear()

    def predict_file(
        self,
        path: str | os.PathLike,
        prompt: Prompt,
        modality: str | None = None,
        *,
        multimask: bool = False,
        input_masks: torch.Tensor | None = None,
    ) -> Prediction:
        """Read a NIfTI file, DICOM series or picture (`medsa_peft.io.read_image`) and segment it (`predict_image`)."""
        return self.predict_image(read_image(path), prompt, modality, multimask=multimask, input_masks=input_masks)

    def predict_image(
        self,
        image: MedicalImage,
        prompt: Prompt,
        modality: str | None = None,
        *,
        multimask: bool = False,
        input_masks: torch.Tensor | None = None,
    ) -> Prediction:
        """Segment an image read by `medsa_peft.io`.

        prompt: a SlicePrompt for every slice, a Box3D, or one SlicePrompt (or None) per slice (axis 2); a
        picture has one slice. modality: "ct", "mri", a photo modality or "photo"; by default the DICOM
        Modality tag, or "photo" for pictures (NIfTI volumes must say). multimask: SAM's three candidates per slice,
        the highest predicted IoU kept. input_masks: `low_res` of an earlier Prediction of this image, fed back
        with the prompt (see `predict_masks`).
        """
        prepared = self._prepare(image, modality)
        prompts = canonical_prompts(prompt, prepared.reorientation, str(image.path))
        masks = self.predict_masks(
            prepared.slices, prompts, input_masks=input_masks, multimask=multimask, description=image.path.name
        )
        best = masks.best()
        # a box through non-axial file slices prompts canonical slices that reach beyond its own file slices
        unprompted = ~prompted_file_slices(prompt, prepared.reorientation.slice_shape[2])
        mask = best.logits[:, 0].numpy() > 0
        return _prediction(prepared, mask, masks.iou_scores.numpy(), best.low_res[:, 0], unprompted)

    def session(
        self, image: MedicalImage | str | os.PathLike, modality: str | None = None, multimask: bool = False
    ) -> InteractiveSession:
        """An `InteractiveSession` on `image` (a MedicalImage or a file `read_image` reads)."""
        if not isinstance(image, MedicalImage):
            image = read_image(image)
        return InteractiveSession(self, image, modality, multimask)

    def propagate_file(
        self, path: str | os.PathLike, prompt_slice_z: int, prompt: SlicePrompt, modality: str | None = None
    ) -> Prediction:
        """Read a NIfTI file, DICOM series or picture (`medsa_peft.io.read_image`) and segment it from one prompted
        slice (`propagate_image`)."""
        return self.propagate_image(read_image(path), prompt_slice_z, prompt, modality)

    def propagate_image(
        self, image: MedicalImage, prompt_slice_z: int, prompt: SlicePrompt, modality: str | None = None
    ) -> Prediction:
        """Segment every slice of an image from a prompt on slice `prompt_slice_z` (axis 2) with a SAM 2 video model
        (`propagate_masks`). Coordinates and `modality` are those of `predict_image`; a volume whose slices are not
        axial takes no slice prompt (PromptError). `iou_scores` is NaN: SAM 2's tracker reports none per slice."""
        prepared = self._prepare(image, modality)
        reorientation, where = prepared.reorientation, str(image.path)
        slices = reorientation.slice_shape[2]
        z = prompt_slice_z
        if not (isinstance(z, (int, np.integer)) and 0 <= z < slices):
            raise PromptError(f"{where}: slice z = {z} is not one of its {slices} slices (0 to {slices - 1})")
        file_prompts: list[SlicePrompt | None] = [None] * slices
        file_prompts[z] = prompt
        index = int(reorientation.index(2, z)[1])
        canonical = canonical_prompts(file_prompts, reorientation, where)[index]
        masks = self.propagate_masks(prepared.slices, index, canonical, description=image.path.name)
        mask = masks.logits[:, 0].numpy() > 0
        return _prediction(prepared, mask, masks.iou_scores.numpy(), masks.low_res[:, 0])

    @torch.inference_mode()
    def propagate_masks(
        self, slices: np.ndarray, index: int, prompt: SlicePrompt, *, description: str = "slices"
    ) -> SliceMasks:
        """Masks of all D slices from a prompt on slice `index`, tracked by SAM 2's video model.

        slices: (D, H, W) or (D, H, W, 3) in [0, 1], consecutive slices of one volume, as the frames of a video.
        prompt: a box and / or points on slice `index`, in the slices' pixel frame.
        The prompted slice is segmented as SAM 2's image predictor segments it (as long as SAM 2's object-score head
        sees the object there; where it does not, SAM 2 empties the mask); the tracker then runs from it to the last
        slice and from it back to the first, each slice attending to the memory of the prompted slice and of the
        slices tracked just before it. The Med-SA adapters run in the image encoder and the mask decoder of every
        slice; the memory modules are SAM 2's own. SAM 2 chooses among its candidates itself: three for a single
        click, the highest predicted IoU kept, else one.
        Returns: SliceMasks with M = 1, `iou_scores` NaN.
        """
        video = self._video
        if video is None:
            raise ValueError(
                "propagating from one slice needs a SAM 2 video model (a 'sam2_video' checkpoint loaded with "
                f"video=True, --propagate); this predictor runs a {type(self._base_model()).__name__}"
            )
        if self.has_depth:
            raise ValueError(
                "propagation encodes the slices one at a time and SAM 2's memory carries the others; an adapter with "
                "the SD-Trans depth adapter (depth_adapter=True) needs whole chunks of slices: use predict_file"
            )
        slices = _checked_slices(slices, self.frame, description)
        depth, height, width = slices.shape[:3]
        if not 0 <= index < depth:
            raise PromptError(f"{description}: slice {index} is not one of its {depth} slices (0 to {depth - 1})")
        prompt.check_inside(height, width, f"slice {index}")

        session = Sam2VideoInferenceSession(
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            dtype=self.dtype,
        )
        for start in range(0, depth, self.batch_size):
            chunk = range(start, min(start + self.batch_size, depth))
            for frame_index, pixels in zip(chunk, self._pixel_values(slices, [chunk])):
                session.add_new_frame(pixels, frame_index)
        coordinates, labels = _tracker_points(prompt_tensors([prompt], (height, width), self.frame))
        session.add_point_inputs(
            session.obj_id_to_idx(TRACKED_OBJECT), index, {"point_coords": coordinates, "point_labels": labels}
        )
        session.obj_with_new_inputs = [TRACKED_OBJECT]

        size = self.frame.mask_size
        low_res = torch.zeros(depth, 1, size, size)
        low_res[index] = video(inference_session=session, frame_idx=index).pred_masks[0].float().cpu()
        for reverse in (False, True):  # the prompted slice's answer is kept, then each direction tracked from it
            tracked = video.propagate_in_video_iterator(
                session, start_frame_idx=index, reverse=reverse, show_progress_bar=self.progress
            )
            for output in tracked:
                low_res[output.frame_idx] = output.pred_masks[0].float().cpu()

        logits = torch.empty(depth, 1, height, width)
        for start in range(0, depth, self.batch_size):
            stop = min(start + self.batch_size, depth)
            logits[start:stop, 0] = sam_logits_to_original(low_res[start:stop, 0], (height, width), self.frame)
        return SliceMasks(logits, torch.full((depth, 1), float("nan")), low_res)

    def _base_model(self) -> torch.nn.Module:
        """The model the predictor runs, out of its PeftModel."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def _prepare(self, image: MedicalImage, modality: str | None) -> _Prepared:
        normalized = _normalise(image, modality)
        volume = normalized if image.is_volume else normalized[:, :, None]
        reorientation = Reorientation(image.affine, volume.shape[:3])
        slices = np.ascontiguousarray(np.moveaxis(reorientation.to_canonical(volume), 2, 0), dtype=np.float32)
        _check_fits_frame(slices.shape[1:3], self.frame, str(image.path))
        return _Prepared(image, normalized, reorientation, slices)

    def predict_logits(
        self, slices: np.ndarray, prompts: Sequence[SlicePrompt | None], description: str = "slices"
    ) -> torch.Tensor:
        """Mask logits of normalised slices on their own pixel grid: SAM's single mask of `predict_masks`.

        slices: (D, H, W) grey or (D, H, W, 3) colour in [0, 1], consecutive slices of one volume.
        prompts: one SlicePrompt or None per slice, in the slices' pixel frame; all prompted slices share one
            form (a box, k points, or both).
        Returns: (D, H, W) float32 logits (> 0: object); -inf on slices without a prompt.
        """
        return self.predict_masks(slices, prompts, description=description).logits[:, 0]

    @torch.inference_mode()
    def predict_masks(
        self,
        slices: np.ndarray,
        prompts: Sequence[SlicePrompt | None],
        *,
        input_masks: torch.Tensor | None = None,
        multimask: bool = False,
        description: str = "slices",
    ) -> SliceMasks:
        """Masks, their predicted IoU and their low-resolution logits for normalised slices.

        slices, prompts: as in `predict_logits`.
        input_masks: (D, s, s) logits in SAM's mask frame, one per slice (rows of slices without a prompt are not
            read): a previous answer's `low_res` (its `best()`), given to SAM's prompt encoder with the prompts.
        multimask: SAM's three candidate masks per slice (`multimask_output=True`), else its single mask.
        Returns: SliceMasks with M = 3 or 1 candidates.
        """
        if self._video is not None:
            raise ValueError(
                "a SAM 2 video model segments a volume from one prompted slice (propagate_file, --propagate); load "
                "the checkpoint without video=True to prompt slices one by one"
            )
        slices = _checked_slices(slices, self.frame, description)
        depth, height, width = slices.shape[:3]
        prompts = list(prompts)
        if len(prompts) != depth:
            raise PromptError(f"{len(prompts)} slice prompts for {depth} slices; give one (or None) per slice")
        prompted = [index for index, prompt in enumerate(prompts) if prompt is not None]
        for index in prompted:
            prompts[index].check_inside(height, width, f"slice {index}")
        forms = {prompts[index].form for index in prompted}
        if len(forms) > 1:
            raise PromptError(
                f"the prompted slices mix prompt forms (box, number of points) {sorted(forms)}; use one form"
            )
        size = self.frame.mask_size
        if input_masks is not None and tuple(input_masks.shape) != (depth, size, size):
            raise ValueError(
                f"input_masks must be (D, s, s) = ({depth}, {size}, {size}) logits in SAM's mask frame, one per slice; "
                f"got shape {tuple(input_masks.shape)}"
            )

        candidates = MULTIMASK_OUTPUTS if multimask else 1
        low_res = torch.zeros(depth, candidates, size, size)
        iou_scores = torch.zeros(depth, candidates)
        counts = torch.zeros(depth)
        batches = list(self._batches(depth, prompted))
        for batch in tqdm(batches, desc=description, unit="pass", disable=not self.progress, leave=False):
            indices, masks, scores = self._forward_batch(slices, batch, prompts, input_masks, multimask)
            for position, index in enumerate(indices):
                low_res[index] += masks[position]
                iou_scores[index] += scores[position]
                counts[index] += 1

        logits = torch.full((depth, candidates, height, width), float("-inf"))
        iou_scores[counts == 0] = float("nan")
        for start in range(0, len(prompted), self.batch_size):
            chosen = prompted[start : start + self.batch_size]
            low_res[chosen] /= counts[chosen, None, None, None]
            iou_scores[chosen] /= counts[chosen, None]
            upsampled = sam_logits_to_original(low_res[chosen].flatten(0, 1), (height, width), self.frame)
            logits[chosen] = upsampled.unflatten(0, (len(chosen), candidates))
        return SliceMasks(logits, iou_scores, low_res)

    def _batches(self, depth: int, prompted: list[int]) -> Iterator[list[range]]:
        """Forward passes as lists of slice ranges: depth chunks holding a prompted slice, or single slices."""
        if self.has_depth:
            size = min(depth, self.chunk_depth)
            chunks = covering_windows(0, depth, size, depth, overlap=min(self.overlap, size - 1))
            needed = [chunk for chunk in chunks if any(index in chunk for index in prompted)]
            per_pass = max(1, self.batch_size // size)
        else:
            needed = [range(index, index + 1) for index in prompted]
            per_pass = self.batch_size
        for start in range(0, len(needed), per_pass):
            yield needed[start : start + per_pass]

    def _forward_batch(
        self,
        slices: np.ndarray,
        batch: list[range],
        prompts: list[SlicePrompt | None],
        input_masks: torch.Tensor | None,
        multimask: bool,
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """One pass over the slices of `batch`: the prompted slices in order (a slice twice when two chunks hold
        it), their low-resolution logits (n, M, s, s) and predicted IoU (n, M), float32 on the CPU.

        With the cache, the image embeddings come from `_image_embeddings` and only the prompted slices are decoded;
        without it the model runs whole, unprompted slices of a chunk borrowing a prompted slice's prompt."""
        indices = [index for chunk in batch for index in chunk]
        prompted = [position for position, index in enumerate(indices) if prompts[index] is not None]
        if self._sam is not None and self.embedding_cache > 0:
            rows, keep = prompted, list(range(len(prompted)))
            inputs = {"image_embeddings": self._image_embeddings(slices, batch)[prompted]}
        else:
            rows, keep = list(range(len(indices))), prompted
            inputs = {"pixel_values": self._pixel_values(slices, batch)}
            if self.has_depth:
                inputs["depth"] = len(batch[0])
        run = [indices[row] for row in rows]
        filler = prompts[indices[prompted[0]]]
        tensors = prompt_tensors([prompts[index] or filler for index in run], slices.shape[1:3], self.frame)
        inputs.update({name: tensor.to(self.device) for name, tensor in tensors.items()})
        inputs["multimask_output"] = multimask
        if input_masks is not None:
            inputs["input_masks"] = input_masks[run, None].to(self.device, self.dtype)
        outputs = self.model(**inputs)
        masks = outputs.pred_masks[:, 0].float().cpu()
        scores = getattr(outputs, "iou_scores", None)  # a stand-in module called like SamModel may give masks only
        scores = torch.full(masks.shape[:2], float("nan")) if scores is None else scores[:, 0].float().cpu()
        return [indices[position] for position in prompted], masks[keep], scores[keep]

    def _pixel_values(self, slices: np.ndarray, chunks: list[range]) -> torch.Tensor:
        """SamModel's pixel_values (N, 3, S, S) of the slices of `chunks`, in order, on the model's device."""
        framed = [frame_images(slices[chunk.start : chunk.stop], self.frame) for chunk in chunks]
        return torch.cat(framed).to(self.device, self.dtype)

    def _image_embeddings(self, slices: np.ndarray, batch: list[range]) -> torch.Tensor:
        """SAM's image embeddings (N, C, h, w) of the N slices of `batch`, in order: from the cache, or computed in one
        pass for the chunks it lacks and kept there."""
        self._cache.follow(_encoder_state(self._sam.vision_encoder))
        keys = [_content_key(slices[chunk.start : chunk.stop]) for chunk in batch]
        found = {key: self._cache.get(key) for key in keys}
        missing = {key: chunk for key, chunk in zip(keys, batch) if found[key] is None}
        if missing:
            computed = self._encode(slices, list(missing.values())).split([len(chunk) for chunk in missing.values()])
            for key, embeddings in zip(missing, computed):
                found[key] = embeddings
                self._cache.put(key, embeddings, self.embedding_cache)
        return torch.cat([found[key] for key in keys])

    def _encode(self, slices: np.ndarray, chunks: list[range]) -> torch.Tensor:
        """The image embeddings (N, C, h, w) of the slices of `chunks` (all of one length), read off the vision
        encoder during a call of the model without prompts: the call goes through the SamModel's forward, whose
        hooks give a depth adapter its `depth`."""
        inputs = {"pixel_values": self._pixel_values(slices, chunks), "multimask_output": False}
        if self.has_depth:
            inputs["depth"] = len(chunks[0])
        captured = []
        hook = self._sam.vision_encoder.register_forward_hook(
            lambda module, args, output: captured.append(output.last_hidden_state)
        )
        try:
            self.model(**inputs)
        finally:
            hook.remove()
        return captured[0]


def _prediction(
    prepared: _Prepared,
    mask: np.ndarray,
    iou_scores: np.ndarray,
    low_res: torch.Tensor,
    unprompted: np.ndarray | None = None,
) -> Prediction:
    """The Prediction of an image from the model's answer on its canonical slices: `mask` (D, H, W) bool, `iou_scores`
    (D, M), `low_res` (D, s, s); `unprompted`: bool per file slice, whose mask is emptied."""
    reorientation, image = prepared.reorientation, prepared.image
    mask = reorientation.to_file(np.moveaxis(mask, 0, 2))
    if unprompted is not None:
        np.moveaxis(mask, reorientation.slice_axes[2], 2)[:, :, unprompted] = False
    if reorientation.keeps_slice_axis:  # rows of the file's slices
        iou_scores = iou_scores[[int(reorientation.index(2, z)[1]) for z in range(len(iou_scores))]]
    return Prediction(mask if image.is_volume else mask[:, :, 0], image, prepared.normalized, iou_scores, low_res)


class InteractiveSession:
    """Click, look, correct on one image, as SAM's interactive protocol: from `MedSAPredictor.session(image)`.

        session = predictor.session("lesion.png")
        prediction = session.click(310, 220)           # an object pixel: label 1
        prediction = session.click(40, 30, label=0)    # a false positive to remove
        prediction.save("lesion_mask.png"); session.undo()

    Every action (a click, a box) changes the prompt of one slice z of the file, then segments that slice again from
    all its clicks so far (and its box), with the slice's previous low-resolution logits as `input_masks`. The first
    prompt of a slice goes without them, and with `multimask` as SAM's three candidates of which the highest
    predicted IoU is kept. Only the image embedding of the first prompt's slice (its chunk in a depth model) is
    computed, and the predictor's cache serves it to every later action there. Each action returns the Prediction
    of the whole image: the mask of every slice prompted so far, empty elsewhere; `iou_scores` (Z, 1) the predicted
    IoU of each slice's mask. Coordinates are those of `predict_image`; a volume whose slices are not axial takes
    no clicks (PromptError, as there).
    """

    def __init__(self, predictor: MedSAPredictor, image: MedicalImage, modality: str | None = None, multimask=False):
        self.predictor, self.multimask = predictor, multimask
        self._prepared = predictor._prepare(image, modality)
        depth, height, width = self._prepared.slices.shape[:3]
        size = predictor.frame.mask_size
        self._mask = np.zeros((depth, height, width), bool)
        self._iou = np.full((depth, 1), np.nan, np.float32)
        self._low_res = torch.zeros(depth, size, size)
        self._prompts: dict[int, SlicePrompt] = {}
        # per action: (file slice, its prompt before, and its canonical slice's mask, IoU and logits before)
        self._history: list[tuple[int, SlicePrompt | None, np.ndarray, np.ndarray, torch.Tensor]] = []

    @property
    def prompts(self) -> dict[int, SlicePrompt]:
        """The prompt of every file slice prompted so far, in the file's coordinates."""
        return dict(self._prompts)

    def click(self, x: float, y: float, label: int = 1, z: int = 0) -> Prediction:
        """Add the click (x, y) to slice z: label 1 on the object (a missed part), 0 on the background (a false
        positive); segment the slice again."""
        previous = self._prompts.get(z)
        box, points, labels = (None, (), ()) if previous is None else (previous.box, previous.points, previous.labels)
        return self._update(z, SlicePrompt(box, (*points, (x, y)), (*labels, label)))

    def box(self, x0: float, y0: float, x1: float, y1: float, z: int = 0) -> Prediction:
        """Set the box of slice z (replacing an earlier one, keeping the clicks); segment the slice again."""
        previous = self._prompts.get(z)
        points, labels = ((), ()) if previous is None else (previous.points, previous.labels)
        return self._update(z, SlicePrompt((x0, y0, x1, y1), points, labels))

    def undo(self) -> Prediction:
        """Take the last action back: its slice's prompt and mask return to what they were before it."""
        if not self._history:
            raise ValueError(f"{self._prepared.image.path}: nothing to undo")
        z, prompt, mask, iou, low_res = self._history.pop()
        index = self._canonical_index(z)
        self._mask[index], self._iou[index], self._low_res[index] = mask, iou, low_res
        if prompt is None:
            del self._prompts[z]
        else:
            self._prompts[z] = prompt
        return self.prediction()

    def prediction(self) -> Prediction:
        """The masks of every slice prompted so far."""
        return _prediction(self._prepared, self._mask.copy(), self._iou.copy(), self._low_res.clone())

    def _canonical_index(self, z: int) -> int:
        return int(self._prepared.reorientation.index(2, z)[1])

    def _update(self, z: int, prompt: SlicePrompt) -> Prediction:
        reorientation = self._prepared.reorientation
        where = str(self._prepared.image.path)
        slices = reorientation.slice_shape[2]
        if not (isinstance(z, (int, np.integer)) and 0 <= z < slices):
            raise PromptError(f"{where}: slice z = {z} is not one of its {slices} slices (0 to {slices - 1})")
        file_prompts: list[SlicePrompt | None] = [None] * slices
        file_prompts[z] = prompt
        canonical = canonical_prompts(file_prompts, reorientation, where)
        index = self._canonical_index(z)
        first = z not in self._prompts
        masks = self.predictor.predict_masks(
            self._prepared.slices,
            canonical,
            input_masks=None if first else self._low_res,
            multimask=self.multimask and first,
            description=self._prepared.image.path.name,
        ).best()
        self._history.append(
            (z, self._prompts.get(z), self._mask[index].copy(), self._iou[index].copy(), self._low_res[index].clone())
        )
        self._mask[index] = masks.logits[index, 0].numpy() > 0
        self._iou[index] = masks.iou_scores[index].numpy()
        self._low_res[index] = masks.low_res[index, 0]
        self._prompts[z] = prompt
        return self.prediction()
