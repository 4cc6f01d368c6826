"""REFUGE / REFUGE2 fundus photographs with optic disc and cup, including the multi-rater REFUGE of Med-SA."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from ._common import (
    ImageBuilder,
    ImageCase,
    MissingDataError,
    SegmentationConfig,
    binary_label_map,
    cases_from_folder_pairs,
    find_dir,
    read_gray,
)

__all__ = [
    "REFUGE",
    "REFUGEConfig",
    "challenge_label_map",
    "disc_cup_label_map",
]

# Served label maps: 0 background, 128 neuroretinal rim (disc without cup), 255 cup; the disc is rim + cup.
RIM, CUP = 128, 255
CLASSES = {"optic_disc": (RIM, CUP), "optic_cup": (CUP,)}

# (split, image folder, ground-truth folder) of each layout; folders are found up to 3 levels below data_dir.
OFFICIAL_FOLDERS = (
    ("train", "Training400", "Annotation-Training400"),
    ("validation", "REFUGE-Validation400", "REFUGE-Validation400-GT"),
    ("test", "Test400", "REFUGE-Test-GT"),
)
REFUGE2_FOLDERS = (
    ("train", "train/images", "train/mask"),
    ("validation", "val/images", "val/mask"),
    ("test", "test/images", "test/mask"),
)
MULTIRATER_FOLDERS = (("train", "Training-400"), ("test", "Test-400"))


@dataclasses.dataclass
class REFUGEConfig(SegmentationConfig):
    """layout: "multirater" (REFUGE-MultiRater of Med-SA), "official" (REFUGE 2018 challenge zips) or
    "refuge2" (train/val/test folders with images/ and mask/)."""

    layout: str = "multirater"


def _config(layout: str, description: str) -> REFUGEConfig:
    return REFUGEConfig(name=layout, description=description, classes=dict(CLASSES), modality="fundus", layout=layout)


class REFUGE(ImageBuilder):
    """REFUGE fundus photographs (1200 images) with optic disc and cup; multi-rater where 7 raters are given."""

    HOMEPAGE = "https://refuge.grand-challenge.org/"
    CITATION = "Orlando et al., REFUGE Challenge, Medical Image Analysis 59 (2020) 101570"
    WITH_RATERS = True
    BUILDER_CONFIG_CLASS = REFUGEConfig
    BUILDER_CONFIGS = [
        _config("multirater", "REFUGE-MultiRater: per case the image and 7 raters' disc and cup masks"),
        _config("official", "REFUGE 2018 challenge release: Training400 / Validation400 / Test400 with BMP masks"),
        _config("refuge2", "REFUGE2 as circulated with train / val / test folders of images and BMP masks"),
    ]
    DEFAULT_CONFIG_NAME = "multirater"

    def _find_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        if self.config.layout == "multirater":
            return _multirater_cases(root)
        if self.config.layout == "official":
            return cases_from_folder_pairs(root, OFFICIAL_FOLDERS, _bmp_mask, recursive=True)
        if self.config.layout == "refuge2":
            return cases_from_folder_pairs(root, REFUGE2_FOLDERS, _bmp_mask)
        raise ValueError(f"unknown REFUGE layout {self.config.layout!r}: multirater, official or refuge2")

    def _labels(self, case: ImageCase) -> tuple[np.ndarray, list[np.ndarray]]:
        if case.label is not None:
            return challenge_label_map(read_gray(case.label)), []
        discs = [binary_label_map(read_gray(disc)) > 0 for disc, _ in case.raters]
        cups = [binary_label_map(read_gray(cup)) > 0 for _, cup in case.raters]
        rater_maps = [disc_cup_label_map(disc, cup) for disc, cup in zip(discs, cups)]
        consensus = disc_cup_label_map(_majority(discs), _majority(cups))
        return consensus, rater_maps


def challenge_label_map(mask: np.ndarray) -> np.ndarray:
    """Challenge coding (0 cup, 128 rim, 255 background; nearest of the three for stray grey values) to the
    served coding (0 background, 128 rim, 255 cup)."""
    served = np.zeros(mask.shape, np.uint8)
    served[mask < 192] = RIM
    served[mask < 64] = CUP
    return served


def disc_cup_label_map(disc: np.ndarray, cup: np.ndarray) -> np.ndarray:
    """Served label map from boolean disc and cup masks; a cup pixel counts as disc too."""
    served = np.zeros(disc.shape, np.uint8)
    served[disc] = RIM
    served[cup] = CUP
    return served


def _bmp_mask(image: Path) -> str:
    return f"{image.stem}.bmp"


def _majority(masks: list[np.ndarray]) -> np.ndarray:
    """Pixels marked by more than half of the raters."""
    return np.mean(masks, axis=0) > 0.5


def _multirater_cases(root: Path) -> dict[str, list[ImageCase]]:
    cases = {}
    for split, folder in MULTIRATER_FOLDERS:
        split_dir = find_dir(root, folder)
        if split_dir is not None:
            case_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
            if not case_dirs:
                raise MissingDataError(f"no case folders in {split_dir}")
            cases[split] = [_multirater_case(case_dir) for case_dir in case_dirs]
    if not cases:
        raise MissingDataError(f"no REFUGE-MultiRater folder Training-400 or Test-400 in {root}")
    return cases


def _multirater_case(case_dir: Path) -> ImageCase:
    name = case_dir.name
    image = case_dir / f"{name}.jpg"
    if not image.is_file():
        raise MissingDataError(f"no image {image}")
    discs = _rater_masks(case_dir, f"{name}_seg_disc_")
    cups = _rater_masks(case_dir, f"{name}_seg_cup_")
    if not discs:
        raise MissingDataError(f"no label for image {image}: no {name}_seg_disc_<rater>.png in {case_dir}")
    if discs.keys() != cups.keys():
        raise MissingDataError(
            f"no label for image {image}: disc raters {sorted(discs)} but cup raters {sorted(cups)} in {case_dir}"
        )
    raters = tuple((discs[rater], cups[rater]) for rater in sorted(discs))
    return ImageCase(name, image, raters=raters)


def _rater_masks(case_dir: Path, prefix: str) -> dict[int, Path]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.png$")
    matches = (pattern.match(path.name) for path in case_dir.iterdir())
    return {int(match.group(1)): case_dir / match.group(0) for match in matches if match}
