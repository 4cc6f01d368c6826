"""Shared code of the clinical builders: configs, features, base builders, layout look-up, file checks and
the parquet export for the Hub.

Every clinical set is read from its manual download in ``data_dir`` (nothing is downloaded). The layout is
checked before a single example is written, so a missing label, a truncated file or an image/label size
mismatch stops ``download_and_prepare()`` with an error that names the file. Volumes are checked from their
NIfTI header and gzip trailer (decompressed only when the trailer disagrees) and served by path, so preparing
never decodes a volume.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import zlib
from collections import deque
from pathlib import Path
from typing import Callable, Iterator

import datasets
import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from medsa_peft.compat import embed_table_storage
from medsa_peft.files import atomic_path

__all__ = [
    "CorruptDataError",
    "ImageBuilder",
    "ImageCase",
    "ManualDownloadBuilder",
    "MissingDataError",
    "SegmentationConfig",
    "VolumeBuilder",
    "VolumeCase",
    "binary_label_map",
    "cases_from_folder_pairs",
    "check_image_case",
    "check_volume_pair",
    "data_root",
    "export_parquet",
    "files_by_name",
    "find_dir",
    "held_out",
    "image_features",
    "image_size",
    "label_for",
    "list_files",
    "nifti_geometry",
    "nifti_stem",
    "read_gray",
    "volume_features",
]

PIXEL_SPACING = (1.0, 1.0)  # mm per pixel: none of the 2D sets records it


class MissingDataError(FileNotFoundError):
    """A folder or file of the official layout is missing or empty."""


class CorruptDataError(ValueError):
    """A file exists but cannot be read, is truncated, or does not fit the file it is paired with."""


@dataclasses.dataclass
class SegmentationConfig(datasets.BuilderConfig):
    """BuilderConfig of a segmentation set.

    classes: class name -> label values making up that class; the binary mask of class ``c`` is
        ``np.isin(label, classes[c])``.
    modality: "ct", "mri", "fundus", "dermoscopy" or "ultrasound" (picks the intensity normalisation).
    axial_pictures: the 2D pictures are axial slices in canonical (RAS+) voxel order, so pictures of them are shown
        in radiological view as volumes are.
    """

    classes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    modality: str = ""
    axial_pictures: bool = False


@dataclasses.dataclass(frozen=True)
class VolumeCase:
    """One labelled 3D case: NIfTI image and integer label volume of the same grid."""

    id: str
    image: Path
    label: Path


@dataclasses.dataclass(frozen=True)
class ImageCase:
    """One 2D case: an image plus either one label file or, per rater, the files of that rater's label."""

    id: str
    image: Path
    label: Path | None = None
    raters: tuple[tuple[Path, ...], ...] = ()

    def label_files(self) -> list[Path]:
        files = [self.label] if self.label is not None else []
        return files + [path for rater in self.raters for path in rater]


def volume_features() -> datasets.Features:
    """Features of a 3D example: id, image and label NIfTI (affine inside), spacing (3,) in mm."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Nifti(),
            "label": datasets.Nifti(),
            "spacing": datasets.Sequence(datasets.Value("float32"), length=3),
        }
    )


def image_features(with_raters: bool = False) -> datasets.Features:
    """Features of a 2D example: id, image, uint8 label map, spacing (2,) in mm; optionally rater_labels."""
    features = {
        "id": datasets.Value("string"),
        "image": datasets.Image(),
        "label": datasets.Image(),
        "spacing": datasets.Sequence(datasets.Value("float32"), length=2),
    }
    if with_raters:
        features["rater_labels"] = datasets.Sequence(datasets.Image())
    return datasets.Features(features)


# ----------------------------------------------------------------------------------------------------------
# Layout look-up


def data_root(config: datasets.BuilderConfig, dataset_name: str) -> Path:
    """The manual download folder given as ``data_dir``; a clear error when it is absent or empty."""
    if config.data_dir is None:
        raise MissingDataError(
            f"{dataset_name} is not downloadable: download it by hand and pass data_dir=<folder> "
            "(expected layouts: docs/data.md)"
        )
    root = Path(config.data_dir).expanduser().resolve()  # examples store file paths: they must not be relative
    if not root.is_dir():
        raise MissingDataError(f"{dataset_name} data_dir {root} is not a folder")
    if not any(root.iterdir()):
        raise MissingDataError(f"{dataset_name} data_dir {root} is empty")
    return root


def find_dir(root: Path, relative: str, max_depth: int = 3) -> Path | None:
    """The shallowest folder ``<base>/<relative>`` with ``base`` at most ``max_depth`` levels below ``root``.

    Lets ``data_dir`` point at the extracted archive or at a folder above it.
    """
    queue = deque([(root, 0)])
    while queue:
        base, depth = queue.popleft()
        if (base / relative).is_dir():
            return base / relative
        if depth < max_depth:
            subfolders = sorted(entry.path for entry in os.scandir(base) if entry.is_dir())
            queue.extend((Path(folder), depth + 1) for folder in subfolders)
    return None


def list_files(folder: Path, suffixes: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """Sorted files of ``folder`` whose name ends with one of ``suffixes`` (case-insensitive); never empty."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.name.lower().endswith(suffixes))
    if not files:
        raise MissingDataError(f"no {' / '.join(suffixes)} files in {folder}")
    return files


def files_by_name(folder: Path, recursive: bool = False) -> dict[str, list[Path]]:
    """Files of ``folder`` keyed by lower-cased file name, so label look-ups ignore the case of the name."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    index: dict[str, list[Path]] = {}
    for path in sorted(candidates):
        if path.is_file():
            index.setdefault(path.name.lower(), []).append(path)
    return index


def label_for(image: Path, labels: dict[str, list[Path]], name: str, folder: Path) -> Path:
    """The label file ``name`` of ``image`` from a `files_by_name` index of ``folder``."""
    found = labels.get(name.lower(), [])
    if not found:
        raise MissingDataError(f"no label for image {image}: expected {name} in {folder}")
    if len(found) > 1:
        raise CorruptDataError(f"label of image {image} is ambiguous: {', '.join(map(str, found))}")
    return found[0]


def cases_from_folder_pairs(
    root: Path,
    folders: tuple[tuple[str, str, str], ...],
    mask_name: Callable[[Path], str],
    image_suffixes: tuple[str, ...] = (".jpg",),
    recursive: bool = False,
) -> dict[str, list[ImageCase]]:
    """Cases of a layout that keeps each split's images in one folder and their masks in another.

    folders: (split, image folder, mask folder) per split, found with `find_dir`; a split whose image folder
        is absent is left out, one whose mask folder is absent is an error.
    mask_name: image path -> file name of its mask (matched without regard to case).
    """
    cases = {}
    for split, image_folder, mask_folder in folders:
        images = find_dir(root, image_folder)
        if images is None:
            continue
        masks_dir = find_dir(root, mask_folder)
        if masks_dir is None:
            raise MissingDataError(f"found {images} but not its ground truth folder {mask_folder!r} in {root}")
        masks = files_by_name(masks_dir, recursive)
        cases[split] = [
            ImageCase(image.stem, image, label_for(image, masks, mask_name(image), masks_dir))
            for image in list_files(images, image_suffixes, recursive)
        ]
    if not cases:
        expected = ", ".join(image_folder for _, image_folder, _ in folders)
        raise MissingDataError(f"none of the image folders {expected} is in {root}")
    return cases


def held_out(case_id: str, percent: int) -> bool:
    """Whether a case belongs to the held-out split: a stable hash of its id, not a seeded shuffle, so the
    split is the same on every machine and does not move when cases are added or removed."""
    digest = hashlib.sha256(case_id.encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < percent


def nifti_stem(path: Path) -> str:
    """File name without .nii / .nii.gz."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ----------------------------------------------------------------------------------------------------------
# File checks


def nifti_geometry(
    path: Path, allow_channels: bool = False
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(shape, spacing in mm) of a 3D NIfTI from its header, after checking the file holds all its voxels.
    With ``allow_channels`` a 4D (H, W, D, C) file of C channels is read too, and its (H, W, D) is returned."""
    try:
        image = nib.load(path)
        voxels = image.dataobj  # an ArrayProxy: where the voxels start and how many bytes they take, unread
        shape, data_start, itemsize = tuple(int(n) for n in voxels.shape), int(voxels.offset), voxels.dtype.itemsize
    except Exception as error:  # nibabel raises many types for a broken file; all mean "unreadable"
        raise CorruptDataError(f"{path}: not a readable NIfTI file ({error})") from error
    if len(shape) != 3 and not (allow_channels and len(shape) == 4):
        expected = "a 3D volume or 4D channels" if allow_channels else "a 3D volume"
        raise CorruptDataError(f"{path}: expected {expected}, header shape is {shape}")
    _require_complete(path, data_start + int(np.prod(shape)) * itemsize)
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return shape[:3], spacing


def _require_complete(path: Path, expected_bytes: int) -> None:
    """Raise when ``path`` holds fewer bytes than its header promises (a truncated copy)."""
    if not path.name.endswith(".gz"):
        stored = path.stat().st_size
    elif _gzip_trailer_size(path) == expected_bytes % 2**32:
        return  # the gzip trailer records the uncompressed size: a complete file, found without decompressing
    else:
        stored = _gunzipped_size(path)
    if stored < expected_bytes:
        raise CorruptDataError(
            f"{path}: truncated, holds {stored} bytes where its header promises {expected_bytes}"
        )


# io.open and GzipFile, not open and gzip.open: datasets swaps those two names in builder modules for its
# streaming wrappers, and the patched gzip.open leaves the underlying file open.


def _gzip_trailer_size(path: Path) -> int:
    with io.open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little")


def _gunzipped_size(path: Path) -> int:
    size = 0
    try:
        with io.open(path, "rb") as file, gzip.GzipFile(fileobj=file) as stream:
            while chunk := stream.read(1 << 24):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise CorruptDataError(f"{path}: truncated or corrupt gzip stream ({error})") from error
    return size


def check_volume_pair(case: VolumeCase, allow_channels: bool = False) -> tuple[float, float, float]:
    """Check image and label of a 3D case (readable, complete, same grid); returns the image spacing (mm).
    ``allow_channels``: the image may be 4D, channels last, on the label's grid."""
    image_shape, spacing = nifti_geometry(case.image, allow_channels)
    label_shape, _ = nifti_geometry(case.label)
    if image_shape != label_shape:
        raise CorruptDataError(
            f"{case.label}: label shape {label_shape} does not match image {case.image} shape {image_shape}"
        )
    # both are brought to canonical (RAS+) voxel order by their own affines: different orientations would
    # flip one and not the other, and the labels would no longer lie on their voxels
    image_axes, label_axes = (nib.aff2axcodes(nib.load(path).affine) for path in (case.image, case.label))
    if image_axes != label_axes:
        raise CorruptDataError(
            f"{case.label}: label orientation {''.join(label_axes)} differs from image {case.image} orientation "
            f"{''.join(image_axes)}; the labels would not lie on the image's voxels"
        )
    return spacing


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a 2D image after decoding it fully once, which exposes truncated files.

    JPEGs decode at 1/8 scale (libjpeg's DCT scaling): the whole stream is still read, at a fraction of the cost.
    """
    try:
        with Image.open(path) as image:
            size = image.size
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise CorruptDataError(f"{path}: not a readable image ({error})") from error
    return size


def check_image_case(case: ImageCase) -> None:
    """Check that the image and every label file of a 2D case decode and have the same size."""
    size = image_size(case.image)
    for label in case.label_files():
        label_size = image_size(label)
        if label_size != size:
            raise CorruptDataError(
                f"{label}: label size {label_size} (width, height) does not match image {case.image} size {size}"
            )


def read_gray(path: Path) -> np.ndarray:
    """A mask file as a (H, W) uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def binary_label_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 {0, 255} from a binary mask coded 0/255 (JPEG noise allowed: threshold 128) or 0/1."""
    foreground = mask >= 128 if mask.max() > 1 else mask == 1
    return np.where(foreground, 255, 0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Base builders


class ManualDownloadBuilder(datasets.GeneratorBasedBuilder):
    """A builder of a set read from its manual download; the class docstring is the description."""

    HOMEPAGE = ""
    CITATION = ""

    def _features(self) -> datasets.Features:
        raise NotImplementedError

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.__doc__, features=self._features(), homepage=self.HOMEPAGE, citation=self.CITATION
        )

    def _root(self) -> Path:
        return data_root(self.config, type(self).__name__)


class VolumeBuilder(ManualDownloadBuilder):
    """A 3D builder: subclasses list their labelled cases per split in `_find_cases`."""

    def _features(self) -> datasets.Features:
        return volume_features()

    def _find_cases(self, root: Path) -> dict[str, list[VolumeCase]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        cases = self._find_cases(self._root())
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"examples": [self._example(c) for c in split_cases]})
            for split, split_cases in cases.items()
            if split_cases
        ]

    def _example(self, case: VolumeCase) -> dict:
        """The checked example of a case; subclasses may add checks of their own."""
        return _volume_example(case)

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[str, dict]]:
        for example in examples:
            yield example["id"], example


def _volume_example(case: VolumeCase) -> dict:
    spacing = check_volume_pair(case)
    return {"id": case.id, "image": str(case.image), "label": str(case.label), "spacing": list(spacing)}


class ImageBuilder(ManualDownloadBuilder):
    """A 2D builder: subclasses list cases per split in `_find_cases` and turn label files into label maps."""

    WITH_RATERS = False

    def _features(self) -> datasets.Features:
        return image_features(self.WITH_RATERS)

    def _find_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        raise NotImplementedError

    def _labels(self, case: ImageCase) -> tuple[np.ndarray, list[np.ndarray]]:
        """(label map, per-rater label maps) of a case; the default reads one binary mask."""
        return binary_label_map(read_gray(case.label)), []

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        cases = self._find_cases(self._root())
        for split_cases in cases.values():
            for case in split_cases:
                check_image_case(case)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"cases": split_cases})
            for split, split_cases in cases.items()
            if split_cases
        ]

    def _generate_examples(self, cases: list[ImageCase]) -> Iterator[tuple[str, dict]]:
        for case in cases:
            label, rater_labels = self._labels(case)
            # PIL images, not arrays: datasets turns a list of arrays into nested int64 lists, not PNGs
            example = {
                "id": case.id,
                "image": str(case.image),
                "label": Image.fromarray(label),
                "spacing": list(PIXEL_SPACING),
            }
            if self.WITH_RATERS:
                example["rater_labels"] = [Image.fromarray(rater_label) for rater_label in rater_labels]
            yield case.id, example


# ----------------------------------------------------------------------------------------------------------
# Export for the Hub


def export_parquet(dataset: datasets.Dataset, path: str | os.PathLike, rows_per_group: int = 16) -> Path:
    """Write ``dataset`` to one parquet file with every NIfTI / image file embedded as bytes, as
    ``push_to_hub`` does, so the file stands alone. ``datasets.Dataset.from_parquet(path)`` reads it back
    with the same features. Written to a temporary file first, then moved into place.
    """
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as partial:
        with pq.ParquetWriter(partial, dataset.features.arrow_schema) as writer:
            for batch in dataset.with_format("arrow").iter(batch_size=rows_per_group):
                writer.write_table(embed_table_storage(batch))
    return path
