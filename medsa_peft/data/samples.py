"""Training samples for SAM: one per (image or depth chunk, class present), and their collation.

A 3D sample is a chunk of `volume_depth` consecutive axial slices. Its position comes from MONAI's
`RandCropByLabelClasses` draw with the class's voxels as the only crop-centre class: a voxel of the class is
drawn uniformly and the chunk is centred on its slice, shifted to stay inside the volume. This is
`RandCropByPosNegLabel` with pos=1, neg=0 (every chunk holds the class), without its background index list,
which for a CT volume is tens of millions of indices; the drawn voxel is found from per-row counts of the class
kept in the store, so the volume is never read whole. Slices of the chunk where the class is absent get the
prompt of the nearest slice that holds it (the lower one on a tie) and an empty label, so the model learns
to answer "nothing here" to a prompt carried over from a neighbour slice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import datasets
import numpy as np
import torch
from monai.transforms.utils import generate_label_classes_crop_centers

from .examples import class_mask, is_volume_dataset
from .preprocess import SamFrame, decoder_targets
from .prompts import PromptSpec
from .store import ClassVoxels, StoredExample, prepare_examples

__all__ = [
    "EpochSampler",
    "SamTrainingSamples",
    "collate_sam",
    "nearest_present_slices",
]

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
    A 2D sample is {"images": (C, h, w), prompt, "labels": (s, s)}; a 3D sample is {"images": (D, 1, H, W),
    per-slice prompts, "labels": (D, s, s)} with D = `volume_depth`. "images" are not yet in SAM's frame:
    a picture comes at most at the frame's size (uint8 for 8-bit photos, else float32 in [0, 1]), a chunk of a
    volume at its own size, normalised (float32 in [0, 1]); `collate_sam` batches them and
    `sam_pixel_values` frames a batch on the accelerator. The prompt is "input_boxes" (1, 4) or "input_points"
    (1, k, 2) + "input_labels" (1, k), with a leading D for 3D, in SAM's frame. Labels are float 0/1 on the grid
    of SAM's `pred_masks`.

    On creation every example is prepared once into a store (`medsa_peft.data.store`, under `store_dir`, by
    default beside the split's cache files; `num_proc` processes): pictures framed, volumes uncompressed with
    per-slice and per-row class counts. A sample then reads its picture, or the slices of its chunk, and
    nothing else.

    Randomness (chunk position, prompt jitter and clicks) comes in two ways. `samples[epoch, item]`, as the
    training loader asks for it (`EpochSampler`), draws from (`seed`, epoch, item) alone: the sample is the same
    in any DataLoader worker or process and in any order, so a run resumed at a step sees the samples an
    uninterrupted run sees, with no random state to save. `samples[item]` draws from one stream per process,
    seeded by `torch.initial_seed()` and the process rank and continued from call to call.
    """

    def __init__(
        self,
        split: datasets.Dataset,
        classes: Mapping[str, Sequence[int]],
        modality: str,
        frame: SamFrame,
        prompt: PromptSpec,
        volume_depth: int = 1,
        store_dir: str | os.PathLike | None = None,
        num_proc: int = 1,
        seed: int = 0,
    ):
        self.classes = {name: tuple(int(value) for value in values) for name, values in classes.items()}
        self.modality = modality
        self.frame = frame
        self.prompt = prompt
        self.volume_depth = volume_depth
        self.is_volume = is_volume_dataset(split.features)
        if volume_depth < 1 or (not self.is_volume and volume_depth != 1):
            raise ValueError(f"volume_depth must be >= 1, and 1 for a 2D data set; got {volume_depth}")
        self.examples = prepare_examples(split, modality, frame, store_dir, num_proc)
        self.items = self._present_classes()
        self.seed = seed
        self._rng_seed: tuple[int, int] | None = None
        self._rng: np.random.Generator | None = None

    def _present_classes(self) -> list[tuple[int, str]]:
        """(example index, class name) for every class present in every example, checking volume depths."""
        items = []
        for index, example in enumerate(self.examples):
            if example.shape[0] < self.volume_depth:
                raise ValueError(
                    f"example {example.id!r} has {example.shape[0]} slices, fewer than volume_depth={self.volume_depth}"
                )
            items += [(index, name) for name, values in self.classes.items() if example.counts(values).any()]
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

    def _chunk_start(self, example: StoredExample, values: Sequence[int], rng: np.random.Generator) -> int:
        """First slice of a chunk centred on a random voxel of the class, kept inside the volume.

        MONAI's `RandCropByLabelClasses` draw with the class's voxels as the only crop-centre class: a voxel
        drawn uniformly from the flat indices of the class over the canonical (H, W, D) volume, through
        `ClassVoxels`, which finds the drawn voxel from the stored row counts.
        """
        depth, height, width = example.shape
        (centre,) = generate_label_classes_crop_centers(
            spatial_size=(-1, -1, self.volume_depth),
            num_samples=1,
            label_spatial_shape=(height, width, depth),
            indices=[ClassVoxels(example, values)],
            rand_state=np.random.RandomState(int(rng.integers(2**31))),
            warn=False,
        )
        return centre[2] - self.volume_depth // 2

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """`samples[item]`, from the stream of `torch.initial_seed()`, or `samples[epoch, item]`, from (seed,
        epoch, item)."""
        if isinstance(key, tuple):
            epoch, item = key
            rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch, item)))
        else:
            item, rng = key, self._generator()
        return self._sample(item, rng)

    def _sample(self, item: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        index, class_name = self.items[item]
        example = self.examples[index]
        values = self.classes[class_name]
        if self.is_volume:
            start = self._chunk_start(example, values, rng)
            stop = start + self.volume_depth
            masks = class_mask(np.asarray(example.label()[start:stop]), values)
            images = torch.from_numpy(example.slices(start, stop, self.modality))[:, None]
            present = example.counts(values)[start:stop] > 0
        else:
            masks = class_mask(example.label(), values)
            images = torch.from_numpy(example.image()).permute(2, 0, 1).contiguous()
            present = np.ones(1, bool)
        sample = {
            "images": images,
            **self.prompt.sam_prompts(masks[nearest_present_slices(present)], self.frame, rng),
            "labels": decoder_targets(masks, self.frame),
        }
        if not self.is_volume:
            sample.update({name: value[0] for name, value in sample.items() if name != "images"})
        return sample


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """Keys `(epoch, item)` of `SamTrainingSamples`: every item once per epoch, shuffled by (`seed`, epoch) alone.

    `set_epoch` (called by Accelerate's prepared loaders) picks the epoch. With the samples drawn from their
    keys, the data of any step follows from (seed, epoch, position in the epoch): a resumed run skips the
    batches already used in its epoch and goes on exactly as an uninterrupted run, whatever the workers.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.epoch,)))
        return iter([(self.epoch, int(item)) for item in rng.permutation(self.size)])


def collate_sam(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor | int | list]:
    """Batch samples of `SamTrainingSamples` into SamModel's prompts, the loss targets and the images to frame.

    2D: {"images": (B, C, H, W), "image_sizes": B (h, w) pairs, prompt, "labels": (B, s, s)}. 3D (samples of
    depth D): "images" (B*D, 1, H, W) volume by volume (the D slices of volume 0, then volume 1, ...), sizes,
    prompts and labels in the same order, and "depth": D. Images of different sizes share the batch's largest
    size, each in its top-left corner, zero elsewhere (a grey picture among colour ones becomes grey RGB).
    The prompt is "input_boxes" (N, 1, 4) or "input_points" (N, 1, k, 2) with "input_labels" (N, 1, k),
    N = B or B*D. `sam_pixel_values(batch["images"], batch["image_sizes"], image_size)` gives SamModel's
    "pixel_values", on the device the batch was sent to.
    """
    if not samples:
        raise ValueError("collate_sam needs at least one sample")
    kinds = {frozenset(kind for kind in sample if kind.startswith("input_")) for sample in samples}
    if len(kinds) != 1 or set(next(iter(kinds))) not in _PROMPT_KINDS:
        raise ValueError(
            f"a batch must hold one prompt kind (boxes, or points with labels), got {sorted(map(sorted, kinds))}"
        )
    depths = {sample["images"].shape[0] if sample["images"].ndim == 4 else None for sample in samples}
    if len(depths) != 1:
        raise ValueError(
            f"a batch must hold samples of one kind and depth (None = 2D), got depths {sorted(depths, key=str)}"
        )
    depth = depths.pop()
    join = torch.stack if depth is None else torch.cat
    batch: dict[str, torch.Tensor | int | list] = {
        name: join([sample[name] for sample in samples]) for name in samples[0] if name != "images"
    }
    stacks = [sample["images"] if depth is not None else sample["images"][None] for sample in samples]
    batch["images"], batch["image_sizes"] = _padded_images(stacks)
    if depth is not None:
        batch["depth"] = depth
    return batch


def _padded_images(stacks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Stacks (n_i, C_i, h_i, w_i) -> one (sum n_i, max C, max h, max w) tensor, each image in its top-left corner,
    and the (h, w) of every image."""
    dtypes = {stack.dtype for stack in stacks}
    if len(dtypes) != 1:
        raise ValueError(f"a batch must hold images of one dtype, got {sorted(map(str, dtypes))}")
    channels = max(stack.shape[1] for stack in stacks)
    height = max(stack.shape[2] for stack in stacks)
    width = max(stack.shape[3] for stack in stacks)
    images = torch.zeros(sum(len(stack) for stack in stacks), channels, height, width, dtype=dtypes.pop())
    sizes, first = [], 0
    for stack in stacks:
        count, _, stack_height, stack_width = stack.shape
        images[first : first + count, :, :stack_height, :stack_width] = stack  # 1 channel broadcasts to 3
        sizes += [(stack_height, stack_width)] * count
        first += count
    return images, sizes
