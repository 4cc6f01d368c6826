"""Med-SA inference on 2D pictures and 3D volumes, with prompts per slice or one 3D box.

    predictor = MedSAPredictor.from_pretrained("user/medsa-btcv", device="cuda", dtype="bfloat16")
    prediction = predictor.predict_file("ct.nii.gz", Box3D(120, 80, 40, 200, 160, 72), modality="ct")
    prediction.save("seg.nii.gz"); prediction.save_overlay("seg.png")

Prompt coordinates are voxel indices of the input file as `medsa_peft.io` reads it: a slice is
`array[:, :, z]`, x runs along its columns (axis 1), y along its rows (axis 0). Boxes use pixel edges: the
box (x0, y0, x1, y1) covers columns x0 <= x < x1 and rows y0 <= y < y1; a point (x, y) is the pixel at
column x, row y. Volumes are processed in the closest canonical (RAS+) voxel order, the order the data layer
trains on, and masks come back in the file's order, shape, affine and spacing.

A model with the SD-Trans depth adapter sees each volume in chunks of `chunk_depth` consecutive slices that
overlap by `overlap`; mask logits are averaged where chunks overlap. A model without it runs the prompted
slices one by one, in batches. Slices without a prompt are predicted empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from peft import PeftConfig, PeftModel
from tqdm.auto import tqdm
from transformers import SamModel

from .tuner.config import MEDSA_PEFT_TYPE
from .data.preprocess import (
    MODALITIES,
    SamFrame,
    covering_windows,
    frame_coordinates,
    frame_images,
    normalize_intensity,
    sam_logits_to_original,
)
from .io import MedicalImage, read_image, write_mask, write_png
from .tuner.fast_paths import compile_sam_layers, use_fused_attention
from .visualize import PREDICTION_COLOUR, overlay

PHOTO = "photo"  # the modality of a picture that does not say otherwise
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_IDENTITY_ORIENTATION = np.array([[0, 1], [1, 1], [2, 1]])


class PromptError(ValueError):
    """A prompt that does not fit the image: outside it, the wrong count, or an unusable form."""


class AdapterNotFoundError(FileNotFoundError):
    """The adapter folder or Hub repo is missing or incomplete."""


@dataclass(frozen=True)
class SlicePrompt:
    """The prompt of one slice: a box (x0, y0, x1, y1) and / or points (x, y) with labels (1 object, 0 background).

    Coordinates are pixels of the slice, (x, y) = (column, row); box edges are pixel edges (see module docstring).
    Labels default to 1 for every point.
    """

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()

    def __post_init__(self):
        points = tuple(tuple(float(value) for value in point) for point in self.points)
        labels = tuple(int(label) for label in self.labels) if self.labels else (1,) * len(points)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            box = tuple(float(value) for value in self.box)
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
                raise PromptError(f"a box is (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {self.box}")
            object.__setattr__(self, "box", box)
        if self.box is None and not points:
            raise PromptError("a slice prompt needs a box or at least one point")
        if any(len(point) != 2 for point in points):
            raise PromptError(f"points are (x, y) pairs, got {self.points}")
        if len(labels) != len(points) or any(label not in (0, 1) for label in labels):
            raise PromptError(
                f"give one label, 1 (object) or 0 (background), per point; got {self.labels} for {len(points)} points"
            )

    @property
    def form(self) -> tuple[bool, int]:
        """(has a box, number of points): prompts batched together must share it."""
        return self.box is not None, len(self.points)

    def check_inside(self, height: int, width: int, where: str) -> None:
        """Raise PromptError unless the box and points lie in a `height` x `width` slice."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise PromptError(f"{where}: box {self.box} lies outside the {width} x {height} (x, y) slice")
        for x, y in self.points:
            if not (0 <= x < width and 0 <= y < height):
                raise PromptError(f"{where}: point ({x:g}, {y:g}) lies outside the {width} x {height} (x, y) slice")


@dataclass(frozen=True)
class Box3D:
    """A box around an object in a volume, in voxel indices of the file: x along columns (axis 1), y along rows
    (axis 0), z along slices (axis 2); x1, y1, z1 are far edges. It becomes the box (x0, y0, x1, y1) on every
    slice z0 <= z < z1; the other slices get no prompt and an empty mask."""

    x0: float
    y0: float
    z0: int
    x1: float
    y1: float
    z1: int

    def __post_init__(self):
        if self.z0 != int(self.z0) or self.z1 != int(self.z1):
            raise PromptError(f"z0 and z1 of a 3D box are slice indices, got {self.z0:g}, {self.z1:g}")
        object.__setattr__(self, "z0", int(self.z0))
        object.__setattr__(self, "z1", int(self.z1))
        if not (self.x0 < self.x1 and self.y0 < self.y1 and self.z0 < self.z1):
            raise PromptError(f"a 3D box needs x0 < x1, y0 < y1 and z0 < z1, got {self}")

    def check_inside(self, shape: tuple[int, int, int], where: str) -> None:
        rows, columns, slices = shape
        if self.x0 < 0 or self.y0 < 0 or self.z0 < 0 or self.x1 > columns or self.y1 > rows or self.z1 > slices:
            raise PromptError(
                f"{where}: 3D box (x0, y0, z0, x1, y1, z1) = ({self.x0:g}, {self.y0:g}, {self.z0}, {self.x1:g}, "
                f"{self.y1:g}, {self.z1}) lies outside the {columns} x {rows} x {slices} (x, y, z) volume"
            )


Prompt = SlicePrompt | Box3D | Sequence[SlicePrompt | None]


def _xy_box(edges: dict[int, tuple[float, float]]) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) from the pixel-edge intervals along rows (axis 0) and columns (axis 1)."""
    return edges[1][0], edges[0][0], edges[1][1], edges[0][1]


class _Reorientation:
    """Between a volume's voxel order in its file and the closest canonical (RAS+) order, for arrays and prompts."""

    def __init__(self, affine: np.ndarray | None, shape: tuple[int, int, int]):
        self.shape = shape
        self.ornt = _IDENTITY_ORIENTATION if affine is None else io_orientation(affine)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return apply_orientation(array, self.ornt)

    def to_file(self, array: np.ndarray) -> np.ndarray:
        return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), self.ornt))

    def index(self, axis: int, value: float) -> tuple[int, float]:
        """(canonical axis, coordinate) of a pixel index along file `axis`."""
        target, direction = self.ornt[axis]
        return int(target), value if direction > 0 else self.shape[axis] - 1 - value

    def interval(self, axis: int, low: float, high: float) -> tuple[int, float, float]:
        """(canonical axis, low, high) of the pixel-edge interval [low, high) along file `axis`."""
        target, direction = self.ornt[axis]
        size = self.shape[axis]
        return (int(target), low, high) if direction > 0 else (int(target), size - high, size - low)

    @property
    def keeps_slice_axis(self) -> bool:
        return int(self.ornt[2, 0]) == 2

    def edges(self, file_edges: Sequence[tuple[float, float]]) -> dict[int, tuple[float, float]]:
        """Canonical axis -> (low, high) of pixel-edge intervals given along file axes 0, 1, ..."""
        mapped = (self.interval(axis, low, high) for axis, (low, high) in enumerate(file_edges))
        return {target: (low, high) for target, low, high in mapped}

    def slice_prompt(self, prompt: SlicePrompt) -> SlicePrompt:
        """An in-plane prompt of a file slice on the matching canonical slice (needs `keeps_slice_axis`)."""
        box = None
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            box = _xy_box(self.edges([(y0, y1), (x0, x1)]))
        points = []
        for x, y in prompt.points:
            coordinates = dict((self.index(0, y), self.index(1, x)))
            points.append((coordinates[1], coordinates[0]))
        return SlicePrompt(box, tuple(points), prompt.labels)

    def box_prompts(self, box: Box3D) -> list[SlicePrompt | None]:
        """One prompt per canonical slice: the 3D box's 2D box inside its slice range, None elsewhere."""
        edges = self.edges([(box.y0, box.y1), (box.x0, box.x1), (box.z0, box.z1)])
        in_plane = SlicePrompt(box=_xy_box(edges))
        slice_range = range(int(edges[2][0]), int(edges[2][1]))
        return [in_plane if index in slice_range else None for index in range(self.canonical_shape[2])]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[int(target)] = self.shape[axis]
        return tuple(shape)


def _canonical_prompts(prompt: Prompt, reorientation: _Reorientation, where: str) -> list[SlicePrompt | None]:
    """The prompt of every canonical slice, from a prompt given in the file's voxel order (validated there)."""
    rows, columns, slices = reorientation.shape
    if isinstance(prompt, SlicePrompt):
        prompt.check_inside(rows, columns, where)
        if not prompt.points:  # the same box on every slice is a 3D box through the whole volume
            x0, y0, x1, y1 = prompt.box
            prompt = Box3D(x0, y0, 0, x1, y1, slices)
        else:
            prompt = [prompt] * slices
    if isinstance(prompt, Box3D):
        prompt.check_inside(reorientation.shape, where)
        return reorientation.box_prompts(prompt)
    prompts = list(prompt)
    if len(prompts) != slices:
        raise PromptError(f"{where}: {len(prompts)} slice prompts for {slices} slices; give one (or None) per slice")
    for index, slice_prompt in enumerate(prompts):
        if slice_prompt is not None:
            slice_prompt.check_inside(rows, columns, f"{where}, slice {index}")
    if not reorientation.keeps_slice_axis:
        raise PromptError(
            f"{where}: its slices (axis 2) are not axial, and the model segments axial slices of the canonical "
            "(RAS+) orientation; per-slice prompts and points cannot follow them there. Give a box or a 3D box."
        )
    canonical: list[SlicePrompt | None] = [None] * slices
    for index, slice_prompt in enumerate(prompts):
        if slice_prompt is not None:
            canonical[int(reorientation.index(2, index)[1])] = reorientation.slice_prompt(slice_prompt)
    return canonical


def _normalise(image: MedicalImage, modality: str | None) -> np.ndarray:
    """Intensities of `image` in [0, 1] by the data layer's rule for its modality."""
    if modality is None:
        modality = image.modality or (None if image.is_volume else PHOTO)
    if modality is None:
        raise ValueError(
            f"{image.path}: say which intensity normalisation applies: modality 'ct' (Hounsfield window) or 'mri' "
            "(percentiles); a NIfTI file does not record it"
        )
    if modality not in MODALITIES:
        raise ValueError(f"{image.path}: unknown modality {modality!r}; expected one of {MODALITIES}")
    try:
        return normalize_intensity(image.array, modality)
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
            reorientation = _Reorientation(self.image.affine, self.image.spatial_shape)
            picture, mask = reorientation.to_canonical(picture), reorientation.to_canonical(mask)
            areas = mask.sum(axis=(0, 1))
            index = int(np.argmax(areas)) if areas.any() else mask.shape[2] // 2
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
    dtype = _as_dtype(dtype)
    try:
        sam = SamModel.from_pretrained(str(base), dtype=dtype)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the SAM base model {str(base)!r} ({error}); pass it with --model"
        ) from error
    peft_model = PeftModel.from_pretrained(sam, str(adapter))
    return peft_model.to(device=device, dtype=dtype).eval()


class MedSAPredictor:
    """Segment pictures and volumes with SAM + a Med-SA adapter.

    Args:
        model: a PeftModel of SamModel with a Med-SA adapter active (see `load_medsa_model`).
        chunk_depth: slices per forward pass of a model with the depth adapter (the SD-Trans depth D).
        overlap: slices shared by consecutive chunks; their mask logits are averaged.
        batch_size: slices per forward pass (whole chunks of a depth model: at least one chunk).
        compile: `torch.compile` each image-encoder layer, the prompt encoder and the mask decoder
            (`tuner.fast_paths.compile_sam_layers`).
        fused_attention: SAM's spatial attention without its (HW x HW) bias (`tuner.fast_paths.use_fused_attention`),
            the same function up to rounding; faster and leaner on GPUs.
        progress: show a tqdm bar over the forward passes.
    """

    def __init__(
        self,
        model: PeftModel,
        chunk_depth: int = 8,
        overlap: int = 2,
        batch_size: int = 8,
        compile: bool = False,
        fused_attention: bool = False,
        progress: bool = True,
    ):
        if not isinstance(model, PeftModel) or model.active_peft_config.peft_type != MEDSA_PEFT_TYPE:
            raise ValueError("MedSAPredictor needs a PeftModel with an active Med-SA adapter (see load_medsa_model)")
        if chunk_depth < 1 or not 0 <= overlap < chunk_depth:
            raise ValueError(f"need chunk_depth >= 1 and 0 <= overlap < chunk_depth, got {chunk_depth}, {overlap}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.frame = SamFrame.from_config(model.get_base_model().config)
        self.has_depth = bool(model.active_peft_config.depth_adapter)
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
        reorientation = _Reorientation(image.affine, volume.shape[:3])
        prompts = _canonical_prompts(prompt, reorientation, str(image.path))
        slices = np.moveaxis(reorientation.to_canonical(volume), 2, 0)
        logits = self.predict_logits(slices, prompts, description=image.path.name)
        mask = reorientation.to_file(np.moveaxis(logits.numpy() > 0, 0, 2))
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
        inputs.update(self._prompt_tensors(prompts, original_size))
        if self.has_depth:
            inputs["depth"] = len(batch[0])
        return self.model(**inputs).pred_masks[:, 0, 0].float().cpu()

    def _prompt_tensors(self, prompts: list[SlicePrompt], original_size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """SamModel prompt inputs in SAM's frame: input_boxes (N, 1, 4), input_points (N, 1, k, 2) and
        input_labels (N, 1, k)."""
        size = self.frame.image_size
        tensors = {}
        if prompts[0].box is not None:
            boxes = frame_coordinates(np.array([prompt.box for prompt in prompts]), original_size, size)
            tensors["input_boxes"] = torch.from_numpy(boxes)[:, None]
        if prompts[0].points:
            points = frame_coordinates(np.array([prompt.points for prompt in prompts]), original_size, size)
            tensors["input_points"] = torch.from_numpy(points)[:, None]
            tensors["input_labels"] = torch.tensor([prompt.labels for prompt in prompts], dtype=torch.int64)[:, None]
        return {name: tensor.to(self.device) for name, tensor in tensors.items()}
