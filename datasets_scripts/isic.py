"""ISIC dermoscopy lesion segmentation (ISIC 2016 Part 1, 2017 Part 1, 2018 Task 1) from the challenge zips.

ISIC 2019 has no segmentation task (its two tasks classify lesions), so there is no ISIC 2019 config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from ._common import ImageBuilder, ImageCase, SegmentationConfig, binary_label_map, cases_from_folder_pairs

__all__ = [
    "ISIC",
    "ISICConfig",
]

CLASSES = {"lesion": (255,)}


@dataclasses.dataclass
class ISICConfig(SegmentationConfig):
    """folders: (split, image folder, ground-truth folder) per split; mask_suffix: what replaces ".jpg" in
    an image's name to give its mask's name (matched without regard to case)."""

    folders: tuple[tuple[str, str, str], ...] = ()
    mask_suffix: str = "_segmentation.png"


def _config(name: str, description: str, folders: tuple[tuple[str, str, str], ...]) -> ISICConfig:
    return ISICConfig(
        name=name, description=description, classes=dict(CLASSES), modality="dermoscopy", folders=folders
    )


ISIC_CONFIGS = [
    _config(
        "isic2016",
        "ISBI 2016 Part 1: 900 train / 379 test",
        (
            ("train", "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
            ("test", "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
        ),
    ),
    _config(
        "isic2017",
        "ISIC 2017 Part 1: 2000 train / 150 validation / 600 test",
        (
            ("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
            ("validation", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
            ("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
        ),
    ),
    _config(
        "isic2018",
        "ISIC 2018 Task 1: 2594 train / 100 validation / 1000 test",
        (
            ("train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
            ("validation", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
            ("test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
        ),
    ),
]


class ISIC(ImageBuilder):
    """ISIC dermoscopic images with a binary lesion mask (0 background, 255 lesion)."""

    HOMEPAGE = "https://challenge.isic-archive.com/data/"
    CITATION = "Codella et al., Skin Lesion Analysis Toward Melanoma Detection (ISIC challenges 2016-2018)"
    BUILDER_CONFIG_CLASS = ISICConfig
    BUILDER_CONFIGS = ISIC_CONFIGS
    DEFAULT_CONFIG_NAME = "isic2016"

    def _find_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        return cases_from_folder_pairs(root, self.config.folders, lambda image: image.stem + self.config.mask_suffix)

    def _labels(self, case: ImageCase) -> tuple[np.ndarray, list[np.ndarray]]:
        """The lesion is where any colour channel of the mask is lit, so that grey masks and colour ones (a red
        lesion on black) read alike; grey-level conversion would darken a pure red lesion below the threshold."""
        with Image.open(case.label) as mask:
            brightest = np.asarray(mask.convert("RGB")).max(axis=2)
        return binary_label_map(brightest), []
