"""Med-SA inference on 2D pictures and 3D volumes, with prompts per slice or one 3D box.

    predictor = MedSAPredictor.from_pretrained("user/medsa-btcv", device="cuda", dtype="bfloat16")
    prediction = predictor.predict_file("ct.nii.gz", Box3D(120, 80, 40, 200, 160, 72), modality="ct")
    prediction.save("seg.nii.gz"); prediction.save_overlay("seg.png")

Prompt coordinates are voxel indices of the input file as `medsa_peft.io` reads it (`inference.prompts`).
Volumes are processed in the closest canonical (RAS+) voxel order, the order the data layer trains on, and masks
come back in the file's order, shape, affine and spacing.

A model with the SD-Trans depth adapter sees each volume in chunks of `chunk_depth` consecutive slices that
overlap by `overlap`; mask logits are averaged where chunks overlap. A model without it runs the prompted
slices one by one, in batches. Slices without a prompt are predicted empty.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import SamModel

from ..data.preprocess import (
    MODALITIES,
    SamFrame,
    covering_windows,
    frame_images,
    normalize_intensity,
    sam_logits_to_original,
)
from ..data.prompts import prompt_tensors
from ..files import write_png
from ..io import MedicalImage, Reorientation, read_image, write_mask
from ..overlay import PREDICTION_COLOUR, busiest_slice, overlay
from ..tuner.config import MEDSA_PEFT_TYPE
from ..tuner.fast_paths import compile_sam_layers, use_fused_attention
from .prompts import Prompt, PromptError, SlicePrompt, canonical_prompts, prompted_file_slices

__all__ = [
    "AdapterNotFoundError",
    "MedSAPredictor",
    "Prediction",
    "load_medsa_model",
]

PHOTO = "photo"  # the modality of a picture that does not say otherwise
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
SHOWN_KEYS = 3  # weight names quoted in an error about missing or unexpected adapter weights
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


@dataclass
class Prediction:
    """A predicted mask in the geometry of its input.

    mask: bool, `image.spatial_shape` ((I, J, K) volumes, (H, W) pictures). image: the input as read.
    normalized: the input's intensities in [0, 1], shape of `image.array`, for overlays.
    """

    mask: np.ndarray
    image: MedicalImage
    normalized: np.ndarray

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask: NIfTI with the input's affine and spacing for volumes, PNG (0 / 255) for pictures."""
        return write_mask(self.mask, self.image, path)

    def overlay(self) -> np.ndarray:
        """(h, w, 3) uint8: the slice with the largest mask area (the middle one if the mask is empty), the mask
        tinted and outlined. Volumes are shown as axial slices in radiological view (anterior up, the patient's
        right on the left)."""
        picture, mask = self.normalized, self.mask
        if self.image.is_volume:
            reorientation = Reorientation(self.image.affine, self.image.spatial_shape)
            picture, mask = reorientation.to_canonical(picture), reorientation.to_canonical(mask)
            index = busiest_slice(mask)
            # canonical slice rows run to the right, columns to anterior: flip both and transpose for display
            picture, mask = picture[::-1, ::-1, index].T, mask[::-1, ::-1, index].T
        return np.asarray(overlay(picture, [(mask, PREDICTION_COLOUR)]))

    def save_overlay(self, path: str | os.PathLike) -> Path:
        return write_png(self.overlay(), path)


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
    if peft_type != MEDSA_PEFT_TYPE:
        raise ValueError(f"{adapter}: a {peft_type} adapter, not a Med-SA ({MEDSA_PEFT_TYPE}) one")
    return config


def load_medsa_model(
    adapter: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> PeftModel:
    """SAM with a Med-SA adapter, in eval mode on `device` in `dtype`.

    adapter: a folder written by `save_pretrained` or a Hub repo id. model: the SamModel folder or Hub id; by
    default the base model the adapter names (`base_model_name_or_path`).
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
        sam = SamModel.from_pretrained(str(base), dtype=dtype)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the SAM base model {str(base)!r} ({error}); pass it with --model"
        ) from error
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


def _load_failure(adapter: str | os.PathLike, base: str | os.PathLike, sam: SamModel, error: RuntimeError) -> str:
    """One line for PEFT's failure to load the adapter's weights into `sam`: the first tensor of another shape (an
    adapter trained on another SAM size), else the first line of the error."""
    mismatch = SIZE_MISMATCH.search(str(error))
    if mismatch is None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"{adapter}: cannot load the adapter into the SAM base {base} ({reason})"
    count = len(SIZE_MISMATCH.findall(str(error)))
    return (
        f"{adapter}: the adapter was trained on another SAM than the base {base} (vision hidden size "
        f"{sam.config.vision_config.hidden_size}): {count} of its weight tensors have other shapes, first "
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


class MedSAPredictor:
    """Segment pictures and volumes with SAM + a Med-SA adapter.

    Args:
        model: a PeftModel of SamModel with a Med-SA adapter active (see `load_medsa_model`); or any module called
            like SamModel (training evaluates its prepared, possibly wrapped model) with `frame` and
            `depth_adapter` given.
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
    ):
        if isinstance(model, PeftModel) and model.active_peft_config.peft_type == MEDSA_PEFT_TYPE:
            frame = frame or SamFrame.from_config(model.get_base_model().config)
            depth_adapter = bool(model.active_peft_config.depth_adapter) if depth_adapter is None else depth_adapter
        elif frame is None or depth_adapter is None:
            raise ValueError(
                "MedSAPredictor needs a PeftModel with an active Med-SA adapter (see load_medsa_model), or the "
                "`frame` and `depth_adapter` of another module called like SamModel"
            )
        if chunk_depth < 1 or not 0 <= overlap < chunk_depth:
            raise ValueError(f"need chunk_depth >= 1 and 0 <= overlap < chunk_depth, got {chunk_depth}, {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.frame, self.has_depth = frame, depth_adapter
        self.chunk_depth, self.overlap, self.batch_size, self.progress = chunk_depth, overlap, batch_size, progress
        if fused_attention:
            use_fused_attention(model)
        if compile:
            compile_sam_layers(model)
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_pretrained(
        cls,
        adapter: str | os.PathLike,
        model: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        **kwargs,
    ) -> MedSAPredictor:
        """Load SAM + adapter (`load_medsa_model`) and wrap it; `kwargs` go to the constructor."""
        return cls(load_medsa_model(adapter, model, device=device, dtype=dtype), **kwargs)

    def predict_file(self, path: str | os.PathLike, prompt: Prompt, modality: str | None = None) -> Prediction:
        """Read a NIfTI file, DICOM series or picture (`medsa_peft.io.read_image`) and segment it."""
        return self.predict_image(read_image(path), prompt, modality)

    def predict_image(self, image: MedicalImage, prompt: Prompt, modality: str | None = None) -> Prediction:
        """Segment an image read by `medsa_peft.io`.

        prompt: a SlicePrompt for every slice, a Box3D, or one SlicePrompt (or None) per slice (axis 2); a
        picture has one slice. modality: "ct", "mri", a photo modality or "photo"; by default the DICOM
        Modality tag, or "photo" for pictures (NIfTI volumes must say).
        """
        normalized = _normalise(image, modality)
        volume = normalized if image.is_volume else normalized[:, :, None]
        reorientation = Reorientation(image.affine, volume.shape[:3])
        prompts = canonical_prompts(prompt, reorientation, str(image.path))
        slices = np.moveaxis(reorientation.to_canonical(volume), 2, 0)
        logits = self.predict_logits(slices, prompts, description=image.path.name)
        mask = reorientation.to_file(np.moveaxis(logits.numpy() > 0, 0, 2))
        # a box through non-axial file slices prompts canonical slices that reach beyond its own file slices
        mask[:, :, ~prompted_file_slices(prompt, volume.shape[2])] = False
        return Prediction(mask if image.is_volume else mask[:, :, 0], image, normalized)

    @torch.inference_mode()
    def predict_logits(
        self, slices: np.ndarray, prompts: Sequence[SlicePrompt | None], description: str = "slices"
    ) -> torch.Tensor:
        """Mask logits of normalised slices on their own pixel grid.

        slices: (D, H, W) grey or (D, H, W, 3) colour in [0, 1], consecutive slices of one volume.
        prompts: one SlicePrompt or None per slice, in the slices' pixel frame; all prompted slices share one
            form (a box, k points, or both).
        Returns: (D, H, W) float32 logits (> 0: object); -inf on slices without a prompt.
        """
        slices = np.ascontiguousarray(slices, dtype=np.float32)
        if slices.ndim not in (3, 4) or (slices.ndim == 4 and slices.shape[-1] != 3):
            raise ValueError(f"slices must be (D, H, W) or (D, H, W, 3), got shape {slices.shape}")
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

        low_res = torch.zeros(depth, self.frame.mask_size, self.frame.mask_size)
        counts = torch.zeros(depth)
        batches = list(self._batches(depth, prompted))
        for batch in tqdm(batches, desc=description, unit="pass", disable=not self.progress, leave=False):
            indices = [index for chunk in batch for index in chunk]
            filler = next(prompts[index] for index in indices if prompts[index] is not None)
            batch_prompts = [prompts[index] or filler for index in indices]
            masks = self._forward_batch(slices, batch, batch_prompts, (height, width))
            for position, index in enumerate(indices):
                if prompts[index] is not None:
                    low_res[index] += masks[position]
                    counts[index] += 1

        logits = torch.full((depth, height, width), float("-inf"))
        for start in range(0, len(prompted), self.batch_size):
            chosen = prompted[start : start + self.batch_size]
            averaged = low_res[chosen] / counts[chosen, None, None]
            logits[chosen] = sam_logits_to_original(averaged, (height, width), self.frame.image_size)
        return logits

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
        self, slices: np.ndarray, batch: list[range], prompts: list[SlicePrompt], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Low-resolution mask logits (N, s, s) float32 on the CPU for the slices of `batch`, in order."""
        pixel_values = torch.cat(
            [frame_images(slices[chunk.start : chunk.stop], self.frame.image_size) for chunk in batch]
        )
        inputs = {"pixel_values": pixel_values.to(self.device, self.dtype), "multimask_output": False}
        tensors = prompt_tensors(prompts, original_size, self.frame.image_size)
        inputs.update({name: tensor.to(self.device) for name, tensor in tensors.items()})
        if self.has_depth:
            inputs["depth"] = len(batch[0])
        return self.model(**inputs).pred_masks[:, 0, 0].float().cpu()
