"""Your own data: a local folder recognised by its layout, with no code.

Three layouts (see docs/data.md, "Your own data"):

* ``msd``: the Medical Segmentation Decathlon / nnU-Net v1 raw layout: ``dataset.json`` ("modality", "labels"
  as {"1": "liver"}, "training" as [{"image": ..., "label": ...}]), ``imagesTr/``, ``labelsTr/``; 3D images, or
  4D images of several channels (Task01_BrainTumour) of which ``channel`` is served;
* ``nnunet_v2``: the nnU-Net v2 raw layout: ``dataset.json`` ("channel_names", "labels" as {"liver": 1},
  "file_ending"), ``imagesTr/CASE_0000<ending>`` (one file per channel), ``labelsTr/CASE<ending>``;
* ``images``: 2D pictures in ``images/`` and masks of the same file stem in ``masks/`` (or ``labels/``), with
  an optional ``classes.json`` ({"name": value or [values]}).

Classes and modality come from the folder's metadata; the held-out split is the folder's labelled test split
(``imagesTs/`` with ``labelsTs/``) where it has one, else a seeded fraction of the cases. Everything is checked
before a single example is written. The data sets that ``medsa_peft.data.publish`` exports (parquet with a dataset
card) and ``save_to_disk`` folders are recognised here too, and loaded there.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import datasets
import nibabel as nib
import numpy as np
from PIL import Image

from ._common import (
    CorruptDataError,
    ImageBuilder,
    ImageCase,
    MissingDataError,
    SegmentationConfig,
    VolumeBuilder,
    VolumeCase,
    binary_label_map,
    check_volume_pair,
    nifti_stem,
)

__all__ = [
    "FolderConfig",
    "FolderImages",
    "FolderVolumes",
    "LAYOUTS",
    "canonical_modality",
    "detect_layout",
    "folder_builder",
    "held_out_ids",
    "parse_classes",
    "read_label_map",
    "resolve_channel",
    "split_by_case",
]

LAYOUTS = {
    "msd": "Medical Segmentation Decathlon / nnU-Net v1: dataset.json with 'modality', 'labels' and 'training', "
    "imagesTr/, labelsTr/",
    "nnunet_v2": "nnU-Net v2: dataset.json with 'channel_names', 'labels' and 'file_ending', "
    "imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz",
    "images": "2D: images/ and masks/ (or labels/), paired by file stem, optional classes.json",
    "parquet": "parquet files as medsa-peft export-dataset writes them (README.md dataset card, data/*.parquet), "
    "or one .parquet file",
    "save_to_disk": "a folder written by datasets' save_to_disk (dataset_dict.json or state.json)",
}
PUBLISHED_LAYOUTS = ("parquet", "save_to_disk")  # loaded by medsa_peft.data.publish, not built from files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_ENDINGS = (".nii.gz", ".nii")
MASK_FOLDERS = ("masks", "labels")
# the modality names of dataset.json files, lower-cased, that select each intensity rule
CT_NAMES = {"ct", "cect", "ncct", "cta", "computed tomography"}
MRI_NAMES = {"mr", "mri", "t1", "t1w", "t1c", "t1ce", "t1gd", "t2", "t2w", "flair", "adc", "dwi", "pd", "swi"}
PICTURE_MODALITIES = ("fundus", "dermoscopy", "ultrasound", "photo")
DEFAULT_PICTURE_MODALITY = "photo"
IGNORE_LABEL = "ignore"  # nnU-Net v2: voxels left out of the loss; here neither a class nor an error


@dataclasses.dataclass
class FolderConfig(SegmentationConfig):
    """layout: one of `LAYOUTS`; channel: the channel fed to SAM (nnU-Net v2: the _000<channel> file; MSD: the
    index along a 4D image's last axis); validation_fraction, seed: the share
    of cases held out, and the seed that picks them, when the folder has no labelled test split;
    fingerprint: names, sizes and times of the folder's files, so a changed folder is prepared anew."""

    layout: str = ""
    channel: int = 0
    validation_fraction: float = 0.2
    seed: int = 0
    fingerprint: str = ""


# ----------------------------------------------------------------------------------------------------------
# Metadata


def canonical_modality(name: str, option: str = "--modality") -> str:
    """The intensity rule ("ct", "mri" or a picture modality) of a modality name as layouts write it."""
    key = " ".join(name.strip().lower().replace("-", " ").replace("_", " ").split())
    if key in CT_NAMES:
        return "ct"
    if key in MRI_NAMES or key.replace(" ", "") in MRI_NAMES or key.split(" ")[0] in {"mr", "mri"}:
        return "mri"
    if key in PICTURE_MODALITIES:
        return key
    raise ValueError(
        f"cannot tell the intensity rule of modality {name!r}; pass {option} ct, mri or one of "
        f"{', '.join(PICTURE_MODALITIES)}"
    )


def _values(value: Any, where: str) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise CorruptDataError(f"{where}: label values must be non-negative integers or lists of them, got {value!r}")
    return tuple(values)


def parse_classes(classes: str | dict, where: str = "--classes") -> dict[str, tuple[int, ...]]:
    """{"name": value or [values]} (a JSON string or a dict) as class name -> label values."""
    if isinstance(classes, str):
        try:
            classes = json.loads(classes)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where} is not valid JSON ({error}): {classes!r}") from error
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f'{where} must map class names to label values, like {{"liver": [1]}}; got {classes!r}')
    parsed = {str(name): _values(value, f"{where} class {name!r}") for name, value in classes.items()}
    if any(0 in values for values in parsed.values()):
        raise ValueError(f"{where}: label value 0 is the background, not a class")
    return parsed


def _read_json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptDataError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(content, dict):
        raise CorruptDataError(f"{path}: expected a JSON object")
    return content


def detect_layout(root: Path) -> str:
    """The layout of folder ``root`` (a key of `LAYOUTS`), from its files."""
    description = root / "dataset.json"
    if description.is_file():
        metadata = _read_json(description)
        if "channel_names" in metadata:
            return "nnunet_v2"
        if "modality" in metadata or "training" in metadata:
            return "msd"
        raise MissingDataError(f"{description} has neither 'channel_names' (nnU-Net v2) nor 'modality' (MSD)")
    if (root / "images").is_dir():
        if not any((root / folder).is_dir() for folder in MASK_FOLDERS):
            raise MissingDataError(f"found {root / 'images'} but no masks/ or labels/ folder beside it")
        return "images"
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "save_to_disk"
    if any(next(root.glob(pattern), None) for pattern in ("*.parquet", "*/*.parquet", "*/*/*.parquet")):
        return "parquet"  # searched 2 levels down (data/train-*.parquet, default/train/0000.parquet), not the disk
    known = "; ".join(f"{name}: {description}" for name, description in LAYOUTS.items())
    raise MissingDataError(f"{root} is in no layout this builder knows. Known layouts: {known}")


def _volume_labels(metadata: dict, layout: str, where: Path) -> dict[str, tuple[int, ...]]:
    """Name -> values of every entry of dataset.json's "labels", the background included."""
    labels = metadata.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise CorruptDataError(f"{where}: no 'labels' mapping")
    if layout == "msd":  # {"0": "background", "1": "liver"}
        try:
            classes = {str(name): (int(value),) for value, name in labels.items()}
        except ValueError as error:
            raise CorruptDataError(f"{where}: MSD 'labels' keys must be label values ({error})") from error
    else:  # {"background": 0, "liver": 1, "tumour region": [1, 2]}
        classes = {str(name): _values(value, f"{where} label {name!r}") for name, value in labels.items()}
    return classes


def _foreground(labels: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The classes of a "labels" mapping: neither the background (0) nor nnU-Net v2's "ignore" label."""
    return {name: values for name, values in labels.items() if values != (0,) and name != IGNORE_LABEL}


def _channel_names(metadata: dict, layout: str) -> dict[str, str]:
    """{"0": "FLAIR", ...}: dataset.json's "channel_names" (nnU-Net v2) or "modality" (MSD); {} when absent."""
    names = metadata.get("channel_names" if layout == "nnunet_v2" else "modality")
    return {str(key): str(value) for key, value in names.items()} if isinstance(names, dict) else {}


def resolve_channel(channel: int | str, names: dict[str, str], where: Path | str) -> int:
    """The index of ``channel``, given by index (2, "2") or by name as dataset.json writes it ("T1Gd", case
    ignored); ``names`` maps indices ("0") to names, and may be empty when the metadata names no channel."""
    text = str(channel).strip()
    if text.isdigit():
        index = int(text)
        if names and text not in names and str(index) not in names:
            raise ValueError(f"--channel {channel}: {where} lists channels {_listed(names)}")
        return index
    if isinstance(channel, int):
        raise ValueError(f"--channel must be at least 0, got {channel}")
    matches = [int(key) for key, name in names.items() if name.strip().lower() == text.lower()]
    if len(matches) != 1:
        found = "is not among" if not matches else "names several of"
        raise ValueError(f"--channel {channel!r} {found} the channels {where} lists: {_listed(names) or 'none'}")
    return matches[0]


def _listed(names: dict[str, str]) -> str:
    return ", ".join(f"{key} ({name})" for key, name in sorted(names.items(), key=lambda item: int(item[0])))


def _fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def folder_builder(
    folder: str | os.PathLike,
    cache_dir: str | None = None,
    channel: int | str = 0,
    modality: str | None = None,
    classes: str | dict | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetBuilder:
    """The builder of a local folder in one of the file layouts (msd, nnunet_v2, images): its layout recognised,
    classes and modality read from its metadata (``classes`` and ``modality`` override them). ``channel``: an
    index, or a channel name of dataset.json."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise MissingDataError(f"{root} is not a folder")
    if not any(root.iterdir()):
        raise MissingDataError(f"{root} is empty")
    check_validation_fraction(validation_fraction)
    layout = detect_layout(root)
    if layout in PUBLISHED_LAYOUTS:
        raise ValueError(f"{root} is a {layout} data set: load it with medsa_peft.data.builders.prepare_dataset")
    if layout == "images":
        builder_class = FolderImages
        known = _picture_classes(root)
        allowed = {value for values in known.values() for value in values}
        found_modality = DEFAULT_PICTURE_MODALITY
        if str(channel).strip() != "0":
            raise ValueError(f"--channel {channel}: {root} holds 2D pictures; --channel picks a channel of volumes")
        channel = 0
    else:
        builder_class = FolderVolumes
        description = root / "dataset.json"
        metadata = _read_json(description)
        labels = _volume_labels(metadata, layout, description)
        allowed = {value for values in labels.values() for value in values}
        known = _foreground(labels)
        names = _channel_names(metadata, layout)
        channel = resolve_channel(channel, names, description)
        found_modality = canonical_modality(names[str(channel)]) if names else ""
    chosen = parse_classes(classes) if classes is not None else known
    if classes is not None:
        unknown = sorted({value for values in chosen.values() for value in values} - allowed)
        if unknown:
            raise ValueError(f"--classes names label values {unknown} that {root.name}'s labels do not list")
    if not chosen:
        raise CorruptDataError(f"{root}: the labels name no class besides the background")
    if modality is not None:
        found_modality = canonical_modality(modality)
    if not found_modality:
        raise ValueError(f"{root / 'dataset.json'} names no modality; pass --modality ct or mri")
    return builder_class(
        config_name=layout,
        data_dir=str(root),
        cache_dir=cache_dir,
        layout=layout,
        classes=chosen,
        modality=found_modality,
        channel=channel,
        validation_fraction=float(validation_fraction),
        seed=seed,
        fingerprint=_fingerprint(root),
    )


# ----------------------------------------------------------------------------------------------------------
# Cases and splits


def check_validation_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"--validation_fraction must lie between 0 and 1, got {fraction}")


def held_out_ids(ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the distinct case ``ids`` (at least one, never all), drawn in sorted id order."""
    ids = sorted(set(ids))
    if len(ids) < 2:
        raise MissingDataError(f"found {len(ids)} labelled case(s): at least 2 are needed to hold one out")
    count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return {ids[index] for index in np.random.default_rng(seed).permutation(len(ids))[:count].tolist()}


def split_by_case(cases: list, fraction: float, seed: int) -> dict[str, list]:
    """{"train": ..., "validation": ...}: a seeded ``fraction`` of the cases (at least one) held out whole."""
    held = held_out_ids([case.id for case in cases], fraction, seed)
    cases = sorted(cases, key=lambda case: case.id)
    return {
        "train": [case for case in cases if case.id not in held],
        "validation": [case for case in cases if case.id in held],
    }


def _visible_files(folder: Path, endings: tuple[str, ...]) -> list[Path]:
    """Files of ``folder`` ending with one of ``endings`` (case-insensitive), hidden files (macOS "._x") left out."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(endings)
    )


def _require_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise MissingDataError(f"no {folder.name}/ folder in {folder.parent}")
    return folder


def _msd_cases(root: Path, metadata: dict) -> list[VolumeCase]:
    entries = metadata.get("training")
    if not isinstance(entries, list) or not entries:
        raise MissingDataError(f"{root / 'dataset.json'} lists no 'training' cases")
    cases = []
    for entry in entries:
        image, label = (root / os.path.normpath(entry[key]) for key in ("image", "label"))
        if not image.is_file():
            raise MissingDataError(f"image {image} listed in {root / 'dataset.json'} does not exist")
        if not label.is_file():
            raise MissingDataError(
                f"no label for image {image}: {label} listed in {root / 'dataset.json'} does not exist"
            )
        cases.append(VolumeCase(nifti_stem(image), image, label))
    listed = {case.image.name for case in cases}
    for image in _visible_files(_require_folder(root / "imagesTr"), NIFTI_ENDINGS):
        if image.name not in listed and not (root / "labelsTr" / image.name).is_file():
            raise MissingDataError(f"no label for image {image}: expected {root / 'labelsTr' / image.name}")
    return cases


def _msd_test_cases(root: Path) -> list[VolumeCase]:
    return [
        VolumeCase(nifti_stem(label), _paired(root / "imagesTs" / label.name, label), label)
        for label in _visible_files(root / "labelsTs", NIFTI_ENDINGS)
    ]


def _paired(image: Path, label: Path) -> Path:
    if not image.is_file():
        raise MissingDataError(f"label {label} has no image: expected {image}")
    return image


def _nnunet_cases(images: Path, labels: Path, ending: str, channel: int) -> list[VolumeCase]:
    """Cases of an nnU-Net v2 pair of folders: every case with a label, and no image without one."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(ending) + "$")
    label_files = {label.name[: -len(ending)]: label for label in _visible_files(labels, (ending,))}
    for image in _visible_files(images, (ending,)):
        match = pattern.match(image.name)
        if match is None:
            raise CorruptDataError(f"{image}: nnU-Net v2 image names end with _<4-digit channel>{ending}")
        if match.group(1) not in label_files:
            raise MissingDataError(f"no label for image {image}: expected {labels / (match.group(1) + ending)}")
    return [
        VolumeCase(case_id, _paired(images / f"{case_id}_{channel:04d}{ending}", label), label)
        for case_id, label in sorted(label_files.items())
    ]


def _labelled_test(root: Path) -> bool:
    return (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir()


class FolderVolumes(VolumeBuilder):
    """A folder of NIfTI volumes in the MSD (nnU-Net v1) or nnU-Net v2 raw layout."""

    BUILDER_CONFIG_CLASS = FolderConfig
    # rows written per Arrow batch: a 4D case's channel is embedded, and the default (1000) would hold 1000 volumes
    DEFAULT_WRITER_BATCH_SIZE = 8

    def _find_cases(self, root: Path) -> dict[str, list[VolumeCase]]:
        self._metadata = _read_json(root / "dataset.json")
        self._allowed = {0} | {
            value
            for values in _volume_labels(self._metadata, self.config.layout, root / "dataset.json").values()
            for value in values
        }
        if self.config.layout == "msd":
            cases = _msd_cases(root, self._metadata)
            test = _msd_test_cases(root) if _labelled_test(root) else []
        else:
            ending = self._metadata.get("file_ending", ".nii.gz")
            if ending not in NIFTI_ENDINGS:
                raise CorruptDataError(f"{root / 'dataset.json'}: file_ending {ending!r}; only NIfTI is read")
            images, labels = _require_folder(root / "imagesTr"), _require_folder(root / "labelsTr")
            cases = _nnunet_cases(images, labels, ending, self.config.channel)
            labelled = _labelled_test(root)
            test = _nnunet_cases(root / "imagesTs", root / "labelsTs", ending, self.config.channel) if labelled else []
        if not cases:
            raise MissingDataError(f"no labelled training case in {root}")
        if test:
            return {"train": cases, "test": test}
        return split_by_case(cases, self.config.validation_fraction, self.config.seed)

    def _example(self, case: VolumeCase) -> dict:
        image, label = nib.load(case.image), nib.load(case.label)
        channel, msd = self.config.channel, self.config.layout == "msd"
        if msd and image.ndim == 4 and channel >= image.shape[3]:
            count = image.shape[3]
            raise ValueError(f"--channel {channel}: {case.image} has {count} channels, 0 to {count - 1}")
        if msd and image.ndim == 3 and channel > 0:
            raise CorruptDataError(f"{case.image}: a 3D image has one channel; --channel {channel} needs 4D images")
        spacing = check_volume_pair(case, allow_channels=msd)  # MSD keeps channels in a 4D image, nnU-Net v2 in files
        example = {"id": case.id, "image": str(case.image), "label": str(case.label), "spacing": list(spacing)}
        if not np.allclose(image.affine, label.affine, rtol=1e-4, atol=1e-3):
            raise CorruptDataError(
                f"{case.label}: label affine {label.affine.tolist()} differs from image {case.image} affine "
                f"{image.affine.tolist()}"
            )
        voxels = np.asanyarray(label.dataobj)
        listed = np.zeros_like(voxels, dtype=bool)  # in the volume's (Fortran) order: mixed orders are slow
        for value in self._allowed:  # one comparison per listed value: a sort (np.unique) of the volume is slower
            listed |= voxels == value
        if not listed.all():
            others = np.unique(voxels[~listed])
            if not np.array_equal(others, np.rint(others)):
                raise CorruptDataError(f"{case.label}: the label volume holds non-integer values")
            unknown = others.astype(int).tolist()
            raise CorruptDataError(f"{case.label}: label values {unknown} are not among dataset.json's labels")
        return example

    def _generate_examples(self, examples: list[dict]) -> Iterator[tuple[str, dict]]:
        # A 4D image is served as its chosen channel, embedded; cut here, one case at a time, after every case
        # has been checked, so that no more than one channel volume is in memory.
        for example in examples:
            image = nib.load(example["image"])
            if image.ndim == 4:
                example = {**example, "image": {"bytes": channel_volume(image, self.config.channel), "path": None}}
            yield example["id"], example


def channel_volume(image: nib.Nifti1Image, channel: int) -> bytes:
    """Channel ``channel`` of a 4D (H, W, D, C) NIfTI image as a gzipped 3D NIfTI file: the stored data type and
    scaling, affine, spacing and units kept."""
    # only this channel's voxels are read; nibabel resets the header's scaling and finds it anew when writing
    volume = nib.Nifti1Image(np.asanyarray(image.dataobj[..., channel]), image.affine, image.header.copy())
    return gzip.compress(volume.to_bytes(), compresslevel=1)


# ----------------------------------------------------------------------------------------------------------
# 2D pictures


def read_label_map(path: Path) -> np.ndarray:
    """A mask file as a (H, W) uint8 label map: JPEG masks (lossy) thresholded to 0/255, others as stored."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                return binary_label_map(np.asarray(image.convert("L")))
            array = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptDataError(f"{path}: not a readable image ({error})") from error
    if array.dtype == bool:
        return np.where(array, 255, 0).astype(np.uint8)
    if array.ndim == 3:
        array = array[..., :3]  # an alpha channel is no label
        if not (array == array[..., :1]).all():
            raise CorruptDataError(f"{path}: a colour mask; masks must be single-channel label images")
        array = array[..., 0]
    if array.min() < 0 or array.max() > 255:
        raise CorruptDataError(f"{path}: label values must lie in 0-255, found {array.min()}-{array.max()}")
    return array.astype(np.uint8)


def _by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in _visible_files(folder, IMAGE_SUFFIXES):
        if path.stem in files:
            raise CorruptDataError(f"two files of stem {path.stem!r} in {folder}: {files[path.stem].name}, {path.name}")
        files[path.stem] = path
    return files


def _picture_cases(root: Path) -> list[ImageCase]:
    masks_dir = next(root / name for name in MASK_FOLDERS if (root / name).is_dir())
    images, masks = _by_stem(root / "images"), _by_stem(masks_dir)
    if not images:
        raise MissingDataError(f"no {' / '.join(IMAGE_SUFFIXES)} files in {root / 'images'}")
    for stem, image in images.items():
        if stem not in masks:
            raise MissingDataError(f"no label for image {image}: expected a mask {stem}.<png|jpg|tif> in {masks_dir}")
    for stem, mask in masks.items():
        if stem not in images:
            raise MissingDataError(f"mask {mask} has no image {stem}.<png|jpg|tif|bmp> in {root / 'images'}")
    return [ImageCase(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _picture_classes(root: Path) -> dict[str, tuple[int, ...]]:
    """classes.json's classes, else "foreground" for 0/255 masks, else "class_<v>" per value present."""
    if (root / "classes.json").is_file():
        return parse_classes(_read_json(root / "classes.json"), str(root / "classes.json"))
    present = set()
    for case in _picture_cases(root):
        present |= set(np.unique(read_label_map(case.label)).tolist())
    present.discard(0)
    if present == {255}:
        return {"foreground": (255,)}
    return {f"class_{value}": (value,) for value in sorted(present)}


class FolderImages(ImageBuilder):
    """A folder of 2D pictures in images/ with masks of the same file stem in masks/ (or labels/)."""

    BUILDER_CONFIG_CLASS = FolderConfig

    def _find_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        cases = _picture_cases(root)
        if (root / "classes.json").is_file():
            allowed = {0} | {value for values in _picture_classes(root).values() for value in values}
            for case in cases:
                unknown = sorted(set(np.unique(read_label_map(case.label)).tolist()) - allowed)
                if unknown:
                    raise CorruptDataError(f"{case.label}: label values {unknown} are not among classes.json's")
        return split_by_case(cases, self.config.validation_fraction, self.config.seed)

    def _labels(self, case: ImageCase) -> tuple[np.ndarray, list[np.ndarray]]:
        return read_label_map(case.label), []
