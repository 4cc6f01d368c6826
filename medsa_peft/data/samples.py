"""Training samples for SAM: one per (image or depth chunk, class present), and their collation.

A 3D sample is a chunk of `volume_depth` consecutive axial slices. Its position comes from MONAI's
`RandCropByLabelClasses` with the class's voxels as the only crop-centre class: a voxel of the class is
drawn uniformly and the chunk is centred on its slice, shifted to stay inside the volume. This is
`RandCropByPosNegLabel` with pos=1, neg=0 (every chunk holds the class), without its background index list,
which for a CT volume is tens of millions of indices. Slices of the chunk where the class is absent get the
prompt of the nearest slice that holds it (the lower one on a tie) and an empty label, so the model learns
to answer "nothing here" to a prompt carried over from a neighbour slice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import torch
from monai.transforms import RandCropByLabelClasses

from .examples import DecodedExample, decode_example, decode_label, is_volume_dataset
from .preprocess import SamFrame, decoder_targets
from .prompt_spec import PromptSpec

_PROMPT_KINDS = ({"input_boxes"}, {"input_points", "input_labels"})


def nearest_present_slices(present: np.ndarray) -> np.ndarray:
    """For each slice of a chunk, the index of the nearest slice where the object is present (D,) int64.

    `present` is (D,) bool with at least one True; ties go to the lower index.
    """
    present_indices = np.flatnonzero(present)
    distances = np.abs(np.arange(len(present))[:, None] - present_indices[None, :])
    return present_indices[np.argmin(distances, axis=1)]


class SamTrainingSamples(torch.utils.data.Dataset):
    """SAM-ready training samples over a split of a medical `datasets` builder (2D or 3D, see the data contract).

    One sample per (example, class present in it); `classes` and `modality` come from the builder's config.
    A 2D sample is {"pixel_values": (3, S, S), prompt, "labels": (s, s)}; a 3D sample is
    {"pixel_values": (D, 3, S, S), per-slice prompts, "labels": (D, s, s)} with D = `volume_depth`.
    The prompt is "input_boxes" (1, 4) or "input_points" (1, k, 2) + "input_labels" (1, k), with a leading D
    for 3D. Labels are float 0/1 on the grid of SAM's `pred_masks`.

    Decoded, normalised volumes of the last `cache_size` examples stay in memory, per DataLoader worker.
    Randomness (chunk position, prompt jitter) is seeded from `torch.initial_seed()` and the process rank, so
    it differs between DataLoader workers and data-parallel processes and follows `torch.manual_seed`.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        classes: Mapping[str, Sequence[int]],
        modality: str,
        frame: SamFrame,
        prompt: PromptSpec,
        volume_depth: int = 1,
        cache_size: int = 4,
    ):
        self.split = split
        self.classes = dict(classes)
        self.modality = modality
        self.frame = frame
        self.prompt = prompt
        self.volume_depth = volume_depth
        self.cache_size = cache_size
        self.is_volume = is_volume_dataset(split.features)
        if volume_depth < 1 or (not self.is_volume and volume_depth != 1):
            raise ValueError(f"volume_depth must be >= 1, and 1 for a 2D data set; got {volume_depth}")
        self.items = self._present_classes()
        self._cache: OrderedDict[int, tuple[DecodedExample, dict[str, np.ndarray]]] = OrderedDict()
        self._rng_seed: tuple[int, int] | None = None
        self._rng: np.random.Generator | None = None

    def _present_classes(self) -> list[tuple[int, str]]:
        """(example index, class name) for every class present in every example, checking volume depths."""
        items = []
        for index, example in enumerate(self.split.select_columns(["id", "label"])):
            label = decode_label(example)
            if label.shape[2] < self.volume_depth:
                raise ValueError(
                    f"example {example['id']!r} has {label.shape[2]} slices, "
                    f"fewer than volume_depth={self.volume_depth}"
                )
            present = set(np.unique(label).tolist())
            items += [(index, name) for name, values in self.classes.items() if present.intersection(values)]
        if not items:
            raise ValueError(f"no example of the split holds any of the classes {sorted(self.classes)}")
        return items

    def __len__(self) -> int:
        return len(self.items)

    def _generator(self) -> np.random.Generator:
        # the process rank enters the seed so that data-parallel processes draw different prompts and chunks
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        seed = (torch.initial_seed(), rank)
        if seed != self._rng_seed:
            self._rng_seed, self._rng = seed, np.random.default_rng(seed)
        return self._rng

    def _cached(self, index: int) -> tuple[DecodedExample, dict[str, np.ndarray]]:
        """The decoded example and its per-class voxel indices (filled on demand), least recently used evicted."""
        if index in self._cache:
            self._cache.move_to_end(index)
        else:
            self._cache[index] = (decode_example(self.split[index], self.modality), {})
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return self._cache[index]

    def _chunk_start(self, decoded: DecodedExample, voxel_indices: np.ndarray, rng: np.random.Generator) -> int:
        """First slice of a chunk centred on a random voxel of the class (flat `voxel_indices`), kept inside."""
        cropper = RandCropByLabelClasses(
            spatial_size=(-1, -1, self.volume_depth), num_samples=1, indices=[voxel_indices], warn=False
        )
        cropper.set_random_state(seed=int(rng.integers(2**31)))
        cropper.randomize(image=decoded.image[None, ..., 0])  # with the indices given, the image only sets the shape
        return cropper.centers[0][2] - self.volume_depth // 2

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        index, class_name = self.items[item]
        decoded, voxel_indices = self._cached(index)
        values = self.classes[class_name]
        rng = self._generator()
        start = 0
        if self.is_volume:
            if class_name not in voxel_indices:
                voxel_indices[class_name] = np.flatnonzero(decoded.class_mask(values))
            start = self._chunk_start(decoded, voxel_indices[class_name], rng)
        stop = start + self.volume_depth
        chunk_masks = np.moveaxis(decoded.class_mask(values, start, stop), 2, 0)
        prompt_sources = chunk_masks[nearest_present_slices(chunk_masks.any(axis=(1, 2)))]
        sample = {
            "pixel_values": decoded.sam_pixel_values(self.frame.image_size, start, stop),
            **self.prompt.sam_prompts(prompt_sources, self.frame.image_size, rng),
            "labels": decoder_targets(chunk_masks, self.frame),
        }
        if not self.is_volume:
            sample = {name: value[0] for name, value in sample.items()}
        return sample


def collate_sam(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor | int]:
    """Batch samples of `SamTrainingSamples` into exactly SamModel's inputs plus the loss targets.

    2D: {"pixel_values": (B, 3, S, S), prompt, "labels": (B, s, s)}. 3D (samples of depth D): "pixel_values"
    (B*D, 3, S, S) volume by volume (the D slices of volume 0, then volume 1, ...), prompts and labels in the
    same order, and "depth": D. The prompt is "input_boxes" (N, 1, 4) or "input_points" (N, 1, k, 2) with
    "input_labels" (N, 1, k), N = B or B*D.
    """
    if not samples:
        raise ValueError("collate_sam needs at least one sample")
    kinds = {frozenset(kind for kind in sample if kind.startswith("input_")) for sample in samples}
    if len(kinds) != 1 or set(next(iter(kinds))) not in _PROMPT_KINDS:
        raise ValueError(
            f"a batch must hold one prompt kind (boxes, or points with labels), got {sorted(map(sorted, kinds))}"
        )
    depths = {sample["pixel_values"].shape[0] if sample["pixel_values"].ndim == 4 else None for sample in samples}
    if len(depths) != 1:
        raise ValueError(
            f"a batch must hold samples of one kind and depth (None = 2D), got depths {sorted(depths, key=str)}"
        )
    depth = depths.pop()
    join = torch.stack if depth is None else torch.cat
    batch: dict[str, torch.Tensor | int] = {name: join([sample[name] for sample in samples]) for name in samples[0]}
    if depth is not None:
        batch["depth"] = depth
    return batch
