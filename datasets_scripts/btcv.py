"""BTCV (Beyond the Cranial Vault) abdomen CT, 13 organs, from the Synapse "RawData" download."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from monai.data import load_decathlon_datalist

from ._common import (
    CorruptDataError,
    MissingDataError,
    SegmentationConfig,
    VolumeBuilder,
    VolumeCase,
    find_dir,
    nifti_stem,
)

__all__ = [
    "BTCV",
    "BTCVConfig",
]

ORGANS = {
    "spleen": (1,),
    "right_kidney": (2,),
    "left_kidney": (3,),
    "gallbladder": (4,),
    "esophagus": (5,),
    "liver": (6,),
    "stomach": (7,),
    "aorta": (8,),
    "inferior_vena_cava": (9,),
    "portal_and_splenic_veins": (10,),
    "pancreas": (11,),
    "right_adrenal_gland": (12,),
    "left_adrenal_gland": (13,),
}

# The 30 labelled cases of RawData/Training.
LABELLED_CASES = tuple(range(1, 11)) + tuple(range(21, 41))
# Swin UNETR / MONAI tutorial dataset_0.json: validation = cases 35-40, the other 24 train.
SWIN_UNETR_VALIDATION = (35, 36, 37, 38, 39, 40)
# TransUNet (Chen et al. 2021) Synapse split: these 12 cases test, the other 18 train.
TRANSUNET_TEST = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)


@dataclasses.dataclass
class BTCVConfig(SegmentationConfig):
    """held_out_cases / held_out_split: the built-in split (case numbers of RawData/Training); or
    split_json: a MONAI decathlon-style json in data_dir ("training" -> train, "validation" -> validation),
    its paths relative to data_dir."""

    held_out_cases: tuple[int, ...] = ()
    held_out_split: str = "validation"
    split_json: str | None = None


def _config(name: str, description: str, **split) -> BTCVConfig:
    return BTCVConfig(name=name, description=description, classes=dict(ORGANS), modality="ct", **split)


class BTCV(VolumeBuilder):
    """BTCV multi-organ abdomen CT (MICCAI 2015 challenge): 30 labelled volumes, labels 1-13 for 13 organs."""

    HOMEPAGE = "https://www.synapse.org/#!Synapse:syn3193805/wiki/217752"
    CITATION = "Landman et al., MICCAI Multi-Atlas Labeling Beyond the Cranial Vault - Workshop and Challenge, 2015"
    BUILDER_CONFIG_CLASS = BTCVConfig
    BUILDER_CONFIGS = [
        _config(
            "swin_unetr",
            "24 train / 6 validation cases, the split of Swin UNETR and MONAI's dataset_0.json",
            held_out_cases=SWIN_UNETR_VALIDATION,
            held_out_split="validation",
        ),
        _config(
            "transunet",
            "18 train / 12 test cases, the Synapse split of TransUNet",
            held_out_cases=TRANSUNET_TEST,
            held_out_split="test",
        ),
        _config(
            "monai_json", "splits read from dataset_0.json in data_dir (MONAI layout)", split_json="dataset_0.json"
        ),
    ]
    DEFAULT_CONFIG_NAME = "swin_unetr"

    def _find_cases(self, root: Path) -> dict[str, list[VolumeCase]]:
        if self.config.split_json is not None:
            return _cases_from_json(root, root / self.config.split_json)
        images = find_dir(root, "Training/img", max_depth=2)
        if images is None:
            raise MissingDataError(f"no Training/img folder of the Synapse RawData layout in {root}")
        training = images.parent
        cases = {"train": [], self.config.held_out_split: []}
        for number in LABELLED_CASES:
            image = training / "img" / f"img{number:04d}.nii.gz"
            label = training / "label" / f"label{number:04d}.nii.gz"
            if not image.is_file():
                raise MissingDataError(f"BTCV case {number:04d} missing: no image {image}")
            if not label.is_file():
                raise MissingDataError(f"no label for image {image}: expected {label}")
            split = self.config.held_out_split if number in self.config.held_out_cases else "train"
            cases[split].append(VolumeCase(nifti_stem(image), image, label))
        return cases


def _cases_from_json(root: Path, split_json: Path) -> dict[str, list[VolumeCase]]:
    if not split_json.is_file():
        raise MissingDataError(f"no split file {split_json}")
    try:
        lists = json.loads(split_json.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptDataError(f"{split_json}: not a JSON file ({error})") from error
    if not isinstance(lists, dict) or "training" not in lists:
        raise MissingDataError(f"{split_json}: no 'training' list (a MONAI split file maps 'training' to its cases)")
    cases = {}
    for key, split in (("training", "train"), ("validation", "validation")):
        if key not in lists:
            continue
        entries = lists[key]
        if not isinstance(entries, list) or not all(
            isinstance(entry, dict) and {"image", "label"} <= entry.keys() for entry in entries
        ):
            raise CorruptDataError(
                f"{split_json}: its {key!r} list must hold objects with an \"image\" and a \"label\" path"
            )
        entries = load_decathlon_datalist(split_json, is_segmentation=True, data_list_key=key, base_dir=root)
        cases[split] = [_json_case(entry, split_json) for entry in entries]
    return cases


def _json_case(entry: dict, split_json: Path) -> VolumeCase:
    image, label = Path(entry["image"]), Path(entry["label"])
    if not image.is_file():
        raise MissingDataError(f"image {image} listed in {split_json} does not exist")
    if not label.is_file():
        raise MissingDataError(f"no label for image {image}: {label} listed in {split_json} does not exist")
    return VolumeCase(nifti_stem(image), image, label)

