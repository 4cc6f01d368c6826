"""Tiny synthetic copies of the official layouts of the clinical data sets, for the builder tests.

Each ``write_*`` function creates the folder tree of the real download under ``root`` (volumes 16x16x6,
images 32x32) and returns the folder to pass as ``data_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

VOLUME_SHAPE = (16, 16, 6)
VOXEL_SPACING = (0.8, 0.7, 2.5)
IMAGE_SIZE = 32  # pixels, square


def write_nifti(path: Path, array: np.ndarray, spacing=VOXEL_SPACING) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def ct_volume(seed: int, shape=VOLUME_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def organ_labels(values: tuple[int, ...], shape=VOLUME_SHAPE) -> np.ndarray:
    """A label volume holding each value (< 16) in a small block of its own."""
    label = np.zeros(shape, np.uint8)
    for value in values:
        label[value, :4, value % shape[2]] = value
    return label


def disc(size: int = IMAGE_SIZE, radius: float = 8.0, center=(16, 16)) -> np.ndarray:
    """Boolean (size, size) disc."""
    rows, cols = np.mgrid[:size, :size]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def write_photo(path: Path, seed: int, size=(IMAGE_SIZE, IMAGE_SIZE)) -> Path:
    """A random RGB image saved in the format of the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """A single-channel uint8 mask saved in the format of the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)
    return path


def write_btcv(root: Path, cases=tuple(range(1, 11)) + tuple(range(21, 41))) -> Path:
    """Synapse Abdomen/RawData: Training/img/img0001.nii.gz, Training/label/label0001.nii.gz, Testing/img."""
    raw = root / "Abdomen" / "RawData"
    for number in cases:
        write_nifti(raw / "Training" / "img" / f"img{number:04d}.nii.gz", ct_volume(number))
        write_nifti(raw / "Training" / "label" / f"label{number:04d}.nii.gz", organ_labels(tuple(range(1, 14))))
    write_nifti(raw / "Testing" / "img" / "img0061.nii.gz", ct_volume(61))
    return root


def write_btcv_monai(root: Path, training=(1, 2, 3), validation=(4,)) -> Path:
    """MONAI tutorial layout: imagesTr/, labelsTr/ and dataset_0.json listing the splits."""
    def entries(numbers):
        return [{"image": f"imagesTr/img{n:04d}.nii.gz", "label": f"labelsTr/label{n:04d}.nii.gz"} for n in numbers]

    for number in training + validation:
        write_nifti(root / "imagesTr" / f"img{number:04d}.nii.gz", ct_volume(number))
        write_nifti(root / "labelsTr" / f"label{number:04d}.nii.gz", organ_labels((1, 6)))
    split = {"training": entries(training), "validation": entries(validation), "test": ["imagesTs/img0061.nii.gz"]}
    (root / "dataset_0.json").write_text(json.dumps(split))
    return root


BRATS_SEQUENCES = ("flair", "t1", "t1ce", "t2")


def write_brats(root: Path, case_ids: tuple[str, ...]) -> Path:
    """BraTS2021_Training_Data/BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz"""
    for index, case_id in enumerate(case_ids):
        case_dir = root / "BraTS2021_Training_Data" / case_id
        for offset, sequence in enumerate(BRATS_SEQUENCES):
            volume = np.full(VOLUME_SHAPE, 100 * offset + index, np.int16)
            write_nifti(case_dir / f"{case_id}_{sequence}.nii.gz", volume, spacing=(1.0, 1.0, 1.0))
        write_nifti(case_dir / f"{case_id}_seg.nii.gz", organ_labels((1, 2, 4)), spacing=(1.0, 1.0, 1.0))
    return root


def refuge_challenge_mask(size: int = IMAGE_SIZE) -> np.ndarray:
    """REFUGE coding: 255 background, 128 rim, 0 cup (cup radius 4, disc radius 8)."""
    mask = np.full((size, size), 255, np.uint8)
    mask[disc(size, 8)] = 128
    mask[disc(size, 4)] = 0
    return mask


def write_refuge_official(root: Path) -> Path:
    """REFUGE 2018 zips: Training400/{Glaucoma,Non-Glaucoma}, Annotation-Training400/Disc_Cup_Masks/...,
    REFUGE-Validation400(-GT), Test400 + REFUGE-Test-GT."""
    train_images = root / "REFUGE-Training400" / "Training400"
    train_masks = root / "Annotation-Training400" / "Annotation-Training400" / "Disc_Cup_Masks"
    for group, prefix in (("Glaucoma", "g"), ("Non-Glaucoma", "n")):
        for number in (1, 2):
            write_photo(train_images / group / f"{prefix}{number:04d}.jpg", number)
            write_mask(train_masks / group / f"{prefix}{number:04d}.bmp", refuge_challenge_mask())
    for image_dir, mask_dir, prefix in (
        ("REFUGE-Validation400/REFUGE-Validation400", "REFUGE-Validation400-GT/Disc_Cup_Masks", "V"),
        ("REFUGE-Test400/Test400", "REFUGE-Test-GT/Disc_Cup_Masks", "T"),
    ):
        for number in (1, 2, 3):
            write_photo(root / image_dir / f"{prefix}{number:04d}.jpg", number)
            write_mask(root / mask_dir / f"{prefix}{number:04d}.bmp", refuge_challenge_mask())
    return root


def write_refuge2(root: Path) -> Path:
    """REFUGE2 as circulated: {train,val,test}/images/*.jpg and {train,val,test}/mask/*.bmp."""
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        for number in range(count):
            write_photo(root / "REFUGE2" / split / "images" / f"{split}{number}.jpg", number)
            write_mask(root / "REFUGE2" / split / "mask" / f"{split}{number}.bmp", refuge_challenge_mask())
    return root


def rater_discs(radii: tuple[float, ...]) -> list[np.ndarray]:
    return [disc(IMAGE_SIZE, radius) for radius in radii]


# Seven raters: disc radii 6..12, cup radii 2..5 (cup inside disc for every rater).
DISC_RADII = (6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0)
CUP_RADII = (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)


def write_refuge_multirater(root: Path, train=("g0001", "n0001"), test=("T0001",)) -> Path:
    """REFUGE-MultiRater: {Training-400,Test-400}/<id>/<id>.jpg, <id>_seg_{disc,cup}_<1..7>.png (0/255)."""
    for folder, case_ids in (("Training-400", train), ("Test-400", test)):
        for seed, case_id in enumerate(case_ids):
            case_dir = root / "REFUGE-MultiRater" / folder / case_id
            write_photo(case_dir / f"{case_id}.jpg", seed)
            for rater, (disc_mask, cup_mask) in enumerate(zip(rater_discs(DISC_RADII), rater_discs(CUP_RADII)), 1):
                write_mask(case_dir / f"{case_id}_seg_disc_{rater}.png", disc_mask * 255)
                write_mask(case_dir / f"{case_id}_seg_cup_{rater}.png", cup_mask * 255)
    return root


ISIC_FOLDERS = {
    "isic2016": (
        ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", "_Segmentation.png", 4),
        ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth", "_Segmentation.png", 2),
    ),
    "isic2018": (
        ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", "_segmentation.png", 3),
        ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth", "_segmentation.png", 1),
        ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth", "_segmentation.png", 2),
    ),
}


def write_isic(root: Path, edition: str) -> Path:
    """The challenge zips extracted side by side: <...>_Data/ISIC_xxxxxxx.jpg, <...>_GroundTruth/ISIC_xxxxxxx_*.png"""
    number = 0
    for image_folder, mask_folder, mask_suffix, count in ISIC_FOLDERS[edition]:
        (root / image_folder).mkdir(parents=True)
        (root / image_folder / "LICENSE.txt").write_text("CC-0")
        for _ in range(count):
            name = f"ISIC_{number:07d}"
            write_photo(root / image_folder / f"{name}.jpg", number)
            write_mask(root / mask_folder / f"{name}{mask_suffix}", disc() * 255)
            number += 1
    return root


def write_tn3k(root: Path, trainval=8, test=3, fold: dict | None = None) -> Path:
    """tn3k/{trainval,test}-{image,mask}/NNNN.jpg (masks are JPEGs too) and tn3k-trainval-fold0.json."""
    tn3k = root / "tn3k"
    for split, count in (("trainval", trainval), ("test", test)):
        for number in range(count):
            write_photo(tn3k / f"{split}-image" / f"{number:04d}.jpg", number)
            write_mask(tn3k / f"{split}-mask" / f"{number:04d}.jpg", disc() * 255)
    if fold is not None:
        (tn3k / "tn3k-trainval-fold0.json").write_text(json.dumps(fold))
    return root


def write_ddti(root: Path, count=4) -> Path:
    """DDTI in the TN-SCUI layout shipped with TN3K: DDTI/image/<n>.PNG, DDTI/mask/<n>.PNG (masks 0/1)."""
    for number in range(1, count + 1):
        write_photo(root / "DDTI" / "image" / f"{number}.PNG", number)
        write_mask(root / "DDTI" / "mask" / f"{number}.PNG", disc().astype(np.uint8))
    return root
