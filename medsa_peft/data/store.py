"""A prepared copy of a split for training samples: what a sample reads, uncompressed, one folder per example.

2D: `image.npy`, the picture in SAM's frame size (an 8-bit picture larger than the frame is resized as 8 bits to
the frame's long side, a smaller one kept as stored; in a frame that does not keep the aspect ratio, SAM 2's, every
picture is stretched to the frame's square, as SAM 2's processor resizes it; other modalities are normalised first,
then resized, float32)
and `label.npz`, the label map as stored, compressed (a 12-megapixel mask takes 12 MB raw, some 25 kB
compressed, and decompresses in about 20 ms; prompts need it at full size). 3D: `image.npy`, the volume in canonical voxel order with the slices
first, (D, H, W), so that a chunk of slices is one contiguous read of a memory map, in its raw values (int16 when
they are whole numbers of that range, else float32), with the intensity range of the whole volume; `label.npy`
alike. `meta.json` holds, per label value, its voxel count in every slice and, for volumes, in every row of the
first axis: a sample finds its chunk without reading the volume.

Folders are named by a digest of the example's sources (path, size and modification time of a file, or the bytes
the data set embeds), of the modality and, for 2D, of the frame (its size, and whether it stretches as SAM 2's
does): a changed file is prepared anew. Every file is written atomically, and `meta.json`, written last, marks a
complete folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from ..files import atomic_path, write_json
from .examples import class_mask, decode_image, decode_label, is_volume_dataset
from .preprocess import PHOTO_MODALITIES, SamFrame, intensity_range, normalize_intensity, resize_long_side

__all__ = [
    "ClassVoxels",
    "StoredExample",
    "default_store_dir",
    "prepare_examples",
]

logger = logging.getLogger(__name__)

STORE_VERSION = 1
_INT16 = np.iinfo(np.int16)


@dataclass(frozen=True)
class StoredExample:
    """One prepared example, a volume or a picture. `shape`: the label's, (D, H, W) for a volume, (1, H, W) for
    a picture. `slice_counts` / `row_counts`: label value -> voxels of that value per slice (D,) / per row of the
    first axis (H,) (volumes only). `value_range`: the raw intensities that map to 0 and 1 (volumes only)."""

    folder: Path
    id: str
    volume: bool
    shape: tuple[int, int, int]
    slice_counts: dict[int, np.ndarray]
    row_counts: dict[int, np.ndarray]
    value_range: tuple[float, float] | None

    def counts(self, values: Sequence[int], per: str = "slice") -> np.ndarray:
        """Voxels of a class (label `values`) per slice, or per row with per="row"."""
        table = self.slice_counts if per == "slice" else self.row_counts
        size = self.shape[0] if per == "slice" else self.shape[1]
        return sum((table[value] for value in values if value in table), np.zeros(size, np.int64))

    def label(self) -> np.ndarray:
        """The label map (1, H, W), read whole, or the label volume (D, H, W), memory-mapped."""
        if self.volume:
            return np.load(self.folder / "label.npy", mmap_mode="r")
        with np.load(self.folder / "label.npz") as stored:
            return stored["label"][None]

    def image(self) -> np.ndarray:
        """A picture's stored image (h, w, C), read whole."""
        return np.load(self.folder / "image.npy")

    def slices(self, start: int, stop: int, modality: str) -> np.ndarray:
        """Slices `start:stop` of a volume, (stop - start, H, W) float32 normalised for `modality` as the whole
        volume is (`normalize_intensity` with the volume's range); only those slices are read."""
        volume = np.load(self.folder / "image.npy", mmap_mode="r")
        return normalize_intensity(np.array(volume[start:stop]), modality, self.value_range)


def default_store_dir(split: datasets.Dataset) -> Path:
    """Beside the split's `datasets` cache files (it goes with them), else in the `datasets` cache folder."""
    if split.cache_files:
        return Path(split.cache_files[0]["filename"]).parent / "medsa_samples"
    return Path(datasets.config.HF_DATASETS_CACHE) / "medsa_samples"


def _source(stored: pa.StructScalar, column: str, example_id: str) -> dict:
    """What identifies one stored file of an example: the digest of the bytes a data set embeds (hashed in
    place, not copied), or the path, size and modification time of the file it names."""
    if not stored.is_valid:
        raise ValueError(f"example {example_id!r} has no {column}")
    embedded = stored["bytes"]
    if embedded.is_valid:
        return {"sha256": hashlib.sha256(memoryview(embedded.as_buffer())).hexdigest()}
    path = stored["path"].as_py()
    try:
        status = os.stat(path)
    except (OSError, TypeError) as error:
        raise FileNotFoundError(f"example {example_id!r}: its {column} file {path} cannot be read ({error})") from error
    return {"path": str(path), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _sources(split: datasets.Dataset) -> list[dict]:
    """Per example, its id and the identity of its image and label files, read without decoding anything."""
    sources = []
    raw = split.select_columns(["id", "image", "label"]).with_format("arrow")
    for batch in raw.iter(batch_size=64):
        images, labels = (batch.column(name).combine_chunks() for name in ("image", "label"))
        for row, example_id in enumerate(batch.column("id").to_pylist()):
            example_id = str(example_id)
            sources.append({
                "id": example_id,
                "image": _source(images[row], "image", example_id),
                "label": _source(labels[row], "label", example_id),
            })
    return sources


def _present_values(label: np.ndarray) -> list[int]:
    """The values present in an integer label map."""
    if label.dtype.kind in "ub" and label.size:
        return np.flatnonzero(np.bincount(label.ravel())).tolist()
    return np.unique(label).tolist()


def _compact(volume: np.ndarray) -> np.ndarray:
    """The float32 volume as int16 when that holds it exactly, else as it is."""
    if volume.size and volume.min() >= _INT16.min and volume.max() <= _INT16.max:
        if np.array_equal(volume, np.rint(volume)):
            return volume.astype(np.int16)
    return volume


def _save(array: np.ndarray, path: Path) -> None:
    """`array` as .npy, or compressed as .npz (under the key "label"), by the suffix of `path`; atomically."""
    with atomic_path(path, suffix=path.suffix) as temporary:
        if path.suffix == ".npz":
            np.savez_compressed(temporary, label=array)
        else:
            np.save(temporary, np.ascontiguousarray(array))


def _describe(source: dict) -> str:
    return source["image"].get("path", "embedded image")


def _decoded(split: datasets.Dataset, index: int, source: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, D, C), label (H, W, D)) of example `index`; errors name its file."""
    try:
        example = split[index]
        image, _ = decode_image(example)
        label = decode_label(example)
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"{_describe(source)}: {error}") from error
    if image.shape[:3] != label.shape:
        raise ValueError(
            f"{_describe(source)}: example {source['id']!r}: image {image.shape[:3]} and label {label.shape} "
            "differ in size"
        )
    return image, label


def _stretches(frame: SamFrame | int) -> bool:
    """Whether `frame` stretches pictures to its square (SAM 2) rather than resizing their long side (SAM)."""
    return isinstance(frame, SamFrame) and not frame.keep_aspect_ratio


def _prepare(
    split: datasets.Dataset, index: int, source: dict, folder: Path, modality: str, frame: SamFrame | int | None
) -> None:
    """Decode example `index` and write its folder (meta.json last). `frame`: SAM's frame (an int: its size), None
    for volumes."""
    image, label = _decoded(split, index, source)
    meta: dict = {"id": source["id"], "version": STORE_VERSION, "volume": frame is None}
    try:
        if frame is None:
            volume = np.moveaxis(image[..., 0], 2, 0)
            meta["value_range"] = list(intensity_range(volume, modality))
            stored_image, labels = _compact(volume), np.ascontiguousarray(np.moveaxis(label, 2, 0))
        else:
            picture = image[:, :, 0]
            if modality not in PHOTO_MODALITIES:
                picture = normalize_intensity(picture, modality)
            elif picture.dtype != np.uint8:
                raise ValueError(f"a {modality} image must be 8-bit (uint8), got {picture.dtype}")
            stored_image = picture
            size = frame.image_size if isinstance(frame, SamFrame) else frame
            # a long-side frame only shrinks here, enlarging is left to the device; a stretching one is always applied
            if max(picture.shape[:2]) > size or _stretches(frame):
                stack = torch.from_numpy(np.require(picture, requirements=["C", "W"])).permute(2, 0, 1)[None]
                stored_image = resize_long_side(stack, frame)[0].permute(1, 2, 0).numpy()
            labels = label[:, :, 0][None]
    except ValueError as error:
        raise ValueError(f"{_describe(source)}: example {source['id']!r}: {error}") from error
    _save(stored_image, folder / "image.npy")
    if frame is None:
        _save(labels, folder / "label.npy")
    else:
        _save(labels[0], folder / "label.npz")
    meta["shape"] = list(labels.shape)
    meta["slices"], meta["rows"] = {}, {}
    for value in _present_values(labels):
        voxels = labels == value
        meta["slices"][str(value)] = np.count_nonzero(voxels, axis=(1, 2)).tolist()
        if frame is None:
            meta["rows"][str(value)] = np.count_nonzero(voxels, axis=(0, 2)).tolist()
    write_json(meta, folder / "meta.json")


def _load(folder: Path) -> StoredExample:
    meta = json.loads((folder / "meta.json").read_text())
    value_range = meta.get("value_range")
    return StoredExample(
        folder=folder,
        id=meta["id"],
        volume=meta["volume"],
        shape=tuple(meta["shape"]),
        slice_counts={int(value): np.asarray(counts) for value, counts in meta["slices"].items()},
        row_counts={int(value): np.asarray(counts) for value, counts in meta["rows"].items()},
        value_range=None if value_range is None else tuple(value_range),
    )


def prepare_examples(
    split: datasets.Dataset,
    modality: str,
    frame: SamFrame | int,
    store_dir: str | os.PathLike | None = None,
    num_proc: int = 1,
) -> list[StoredExample]:
    """Every example of `split` in the store (under `store_dir`, default `default_store_dir(split)`), preparing
    those not there yet, in `num_proc` processes of one thread each; in split order. `frame` is SAM's frame (an
    int: the size of SAM's long-side frame); 2D pictures are stored in it."""
    volumes = is_volume_dataset(split.features)
    root = Path(store_dir) if store_dir is not None else default_store_dir(split)
    frame = None if volumes else frame
    size = frame.image_size if isinstance(frame, SamFrame) else frame
    framing = [size, "stretched"] if _stretches(frame) else size  # SAM's frames keep the keys they had
    sources = _sources(split)
    folders = []
    for source in sources:
        key = json.dumps([STORE_VERSION, "3d" if volumes else "2d", modality, framing, source], sort_keys=True)
        folders.append(root / hashlib.sha256(key.encode()).hexdigest()[:32])
    missing = [index for index, folder in enumerate(folders) if not (folder / "meta.json").is_file()]
    if missing:
        logger.info("preparing %d of %d examples for training samples in %s", len(missing), len(folders), root)
    work = (missing, [sources[index] for index in missing], [folders[index] for index in missing])
    if num_proc > 1 and len(missing) > 1:
        with ProcessPoolExecutor(min(num_proc, len(missing)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(pool.map(_prepare, repeat(split), *work, repeat(modality), repeat(frame)))
    else:
        for index, source, folder in zip(*work):
            _prepare(split, index, source, folder, modality, frame)
    return [_load(folder) for folder in folders]


class ClassVoxels(Sequence):
    """The flat indices, in C order over the canonical (H, W, D) volume, of the voxels of one class: what MONAI's
    crop-centre draw indexes (`np.flatnonzero` of the class mask), found rank by rank from the per-row counts,
    reading one row plane of the label, instead of listed for the whole volume."""

    def __init__(self, example: StoredExample, values: Sequence[int]):
        self._label = example.label()
        self._values = values
        self._row_counts = example.counts(values, per="row")
        self._ends = np.cumsum(self._row_counts)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, rank: int) -> int:
        if not 0 <= rank < len(self):
            raise IndexError(f"voxel rank {rank} out of range for {len(self)} voxels")
        depth, _, width = self._label.shape
        row = int(np.searchsorted(self._ends, rank, side="right"))
        plane = class_mask(self._label[:, row, :], self._values).T  # (W, D): the order of the flat index
        position = int(np.flatnonzero(plane)[rank - (self._ends[row] - self._row_counts[row])])
        return row * width * depth + position
