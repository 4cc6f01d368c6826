"""Thyroid nodule ultrasound: TN3K and DDTI as distributed with TRFE-Net (Gong et al., ISBI 2021)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ._common import (
    ImageBuilder,
    CorruptDataError,
    ImageCase,
    MissingDataError,
    SegmentationConfig,
    cases_from_folder_pairs,
    find_dir,
)

__all__ = [
    "Thyroid",
    "ThyroidConfig",
]

CLASSES = {"nodule": (255,)}
TN3K_FOLDERS = (("trainval", "trainval-image", "trainval-mask"), ("test", "test-image", "test-mask"))
# DDTI in the TN-SCUI 2020 layout shipped with TN3K (image/ + mask/); p_image/ + p_mask/ accepted as well.
DDTI_FOLDERS = (("test", "image", "mask"), ("test", "p_image", "p_mask"))


@dataclasses.dataclass
class ThyroidConfig(SegmentationConfig):
    """collection: "tn3k" or "ddti"; fold: which tn3k-trainval-fold<k>.json splits TN3K's trainval images
    into train and validation (without that file all trainval images train)."""

    collection: str = "tn3k"
    fold: int = 0


def _config(collection: str, description: str) -> ThyroidConfig:
    return ThyroidConfig(
        name=collection, description=description, classes=dict(CLASSES), modality="ultrasound", collection=collection
    )


class Thyroid(ImageBuilder):
    """Thyroid ultrasound images with a binary nodule mask (0 background, 255 nodule)."""

    HOMEPAGE = "https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation"
    CITATION = (
        "Gong et al., Multi-Task Learning for Thyroid Nodule Segmentation with Thyroid Region Prior, ISBI 2021; "
        "Pedraza et al., An open access thyroid ultrasound image database (DDTI), SPIE 9287, 2015"
    )
    BUILDER_CONFIG_CLASS = ThyroidConfig
    BUILDER_CONFIGS = [
        _config("tn3k", "TN3K: 2879 trainval images (5 folds) and 614 test images"),
        _config("ddti", "DDTI: 637 images, one test split (the external test set of TN3K-trained models)"),
    ]
    DEFAULT_CONFIG_NAME = "tn3k"

    def _find_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        if self.config.collection == "tn3k":
            return self._tn3k_cases(root)
        if self.config.collection == "ddti":
            return _ddti_cases(root)
        raise ValueError(f"unknown thyroid collection {self.config.collection!r}: tn3k or ddti")

    def _tn3k_cases(self, root: Path) -> dict[str, list[ImageCase]]:
        cases = cases_from_folder_pairs(root, TN3K_FOLDERS, _same_name)
        if "trainval" not in cases:
            return cases
        trainval = cases.pop("trainval")
        fold_file = trainval[0].image.parent.parent / f"tn3k-trainval-fold{self.config.fold}.json"
        splits = _split_by_fold(trainval, fold_file) if fold_file.is_file() else {"train": trainval}
        return {**splits, **cases}


def _same_name(image: Path) -> str:
    return image.name


def _split_by_fold(trainval: list[ImageCase], fold_file: Path) -> dict[str, list[ImageCase]]:
    """TRFE-Net's fold files list positions in the trainval images sorted by their number."""
    if not all(case.id.isdigit() for case in trainval):
        raise CorruptDataError(f"{fold_file} indexes trainval images by number, but not all image names are numbers")
    ordered = sorted(trainval, key=lambda case: int(case.id))
    fold = json.loads(fold_file.read_text())
    try:
        return {"train": [ordered[i] for i in fold["train"]], "validation": [ordered[i] for i in fold["val"]]}
    except (KeyError, IndexError, TypeError) as error:
        raise CorruptDataError(
            f"{fold_file}: does not fit the {len(ordered)} trainval images (needs 'train' and 'val' index lists)"
        ) from error


def _ddti_cases(root: Path) -> dict[str, list[ImageCase]]:
    base = find_dir(root, "DDTI", max_depth=1) or root
    for folders in DDTI_FOLDERS:
        if (base / folders[1]).is_dir():
            return cases_from_folder_pairs(base, (folders,), _same_name, (".png", ".jpg"))
    raise MissingDataError(f"no DDTI image/ (or p_image/) folder in {base}")
