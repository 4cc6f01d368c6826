"""The cases of a prediction run: what each input of `medsa-peft predict` holds, and the name of each mask.

A file, or a folder holding one DICOM series, is one case. A folder of images (an nnU-Net `imagesTs/`, a folder of
pictures) holds one case per image, named as nnU-Net names its cases: when every image of the folder ends in a
4-digit channel number, the channel files `CASE_0000.nii.gz`, `CASE_0001.nii.gz`... form the case `CASE` and the
one of them at `channel` is segmented; otherwise each file is a case of its own stem. Each sub-folder is a DICOM
series, one case named after it. The mask of a folder's case is `CASE` + the input's ending (`.nii.gz`, `.nii`;
`.png` for pictures, `.nii.gz` for DICOM series); the mask of a file named on the command line keeps its former
name, `<stem>_mask` + `.nii.gz` / `.png`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..io import NIFTI_SUFFIXES, PICTURE_SUFFIXES, file_suffix

__all__ = ["PredictionCase", "prediction_cases"]

logger = logging.getLogger(__name__)

_CHANNEL_STEM = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")
_LISTED = 3  # names quoted in one message


@dataclass(frozen=True)
class PredictionCase:
    """One image to segment.

    source: the file or DICOM series folder that is read. name: the case (`CASE` of `CASE_0000.nii.gz`, a file's
    stem, a series folder's name). mask_name: the file name of its mask. channels: how many channel files the
    case has (1 unless its folder uses nnU-Net channel files). in_folder: whether it came from a folder of images
    (its mask then goes into the --output folder even when it is the only case).
    """

    source: Path
    name: str
    mask_name: str
    channels: int = 1
    in_folder: bool = False


def prediction_cases(inputs: Sequence[Path], channel: int = 0) -> list[PredictionCase]:
    """The cases of `inputs` (files, DICOM series folders, folders of images), in the order given; the cases of a
    folder in name order.

    channel: the channel segmented in folders of nnU-Net channel files (0: `_0000`).
    Raises FileNotFoundError for a missing input, and ValueError naming the folder and case when a case lacks that
    channel or its channels are not numbered `_0000, _0001, ...`. A folder without images or sub-folders is read as
    one DICOM series (an empty one is refused when it is read)."""
    if channel < 0:
        raise ValueError(f"--channel must be at least 0, got {channel}")
    cases = []
    for path in inputs:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir() and _holds_cases(path):
            cases.extend(_folder_cases(path, channel))
        else:
            cases.append(PredictionCase(path, _stem(path), _file_mask_name(path)))
    return cases


def _stem(path: Path) -> str:
    suffix = file_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _file_mask_name(path: Path) -> str:
    return f"{_stem(path)}_mask{'.png' if file_suffix(path) in PICTURE_SUFFIXES else '.nii.gz'}"


def _visible(folder: Path) -> list[Path]:
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and file_suffix(path) in (*NIFTI_SUFFIXES, *PICTURE_SUFFIXES)


def _holds_cases(folder: Path) -> bool:
    """A folder of images or of series folders; a folder of DICOM files is one series."""
    return any(_is_image(entry) or entry.is_dir() for entry in _visible(folder))


def _folder_cases(folder: Path, channel: int) -> list[PredictionCase]:
    entries = _visible(folder)
    images = [entry for entry in entries if _is_image(entry)]
    skipped = [entry.name for entry in entries if entry.is_file() and entry not in images]
    if skipped:
        logger.warning("%s: skipped what is neither NIfTI nor a picture: %s", folder, _listed(skipped))
    channel_files = [_CHANNEL_STEM.fullmatch(_stem(image)) for image in images]
    if images and all(channel_files):
        cases = _channel_cases(folder, images, channel_files, channel)
    else:
        cases = [PredictionCase(file, _stem(file), _stem(file) + _mask_ending(file), in_folder=True) for file in images]
    series = [
        PredictionCase(entry, entry.name, f"{entry.name}.nii.gz", in_folder=True) for entry in entries if entry.is_dir()
    ]
    return sorted([*cases, *series], key=lambda case: case.name)


def _mask_ending(image: Path) -> str:
    suffix = file_suffix(image)
    return suffix if suffix in NIFTI_SUFFIXES else ".png"


def _channel_cases(folder: Path, images: list[Path], matches: list[re.Match], channel: int) -> list[PredictionCase]:
    """One case per `CASE` + ending of the channel files `CASE_0000<ending>`, `CASE_0001<ending>`..."""
    groups: dict[tuple[str, str], dict[int, Path]] = {}
    for image, match in zip(images, matches, strict=True):
        groups.setdefault((match["case"], file_suffix(image)), {})[int(match["channel"])] = image
    cases = []
    for (name, ending), files in groups.items():
        numbers = sorted(files)
        found = ", ".join(f"_{number:04d}" for number in numbers)
        if numbers != list(range(len(numbers))):
            raise ValueError(
                f"{folder}: case {name} has the channel files {found}; nnU-Net numbers the channels of a case "
                f"_0000, _0001... (pass files named otherwise one by one, or rename them)"
            )
        if channel not in files:
            raise ValueError(f"{folder}: case {name} has no channel _{channel:04d} ({found}); --channel picks one")
        source = files[channel]
        cases.append(PredictionCase(source, name, name + _mask_ending(source), len(files), in_folder=True))
    return cases


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more
