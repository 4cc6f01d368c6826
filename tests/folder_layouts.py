"""Your own data in the layouts users bring it in (MSD / nnU-Net v1, nnU-Net v2, 2D images + masks), written from
small crops of the embedded MNI152 template: shared by the folder, publishing and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from datasets_scripts.mni152 import load_template

CROP = (slice(30, 62), slice(40, 66))  # 32 x 26 voxels of the 2 mm template, inside the brain
CASE_STARTS = (30, 36, 42, 48, 54)  # first axial slice of each case, 3 slices deep, disjoint
DEPTH = 3
TISSUES = {"grey matter": (1,), "white matter": (2,)}


def template_cases() -> list[tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    """(T1, tissue labels) of small disjoint crops of the template, the template's affine carried along."""
    t1, labels = load_template(2)
    cut = (*CROP, slice(None))
    t1, labels = t1.slicer[cut], labels.slicer[cut]
    return [(t1.slicer[:, :, z : z + DEPTH], labels.slicer[:, :, z : z + DEPTH]) for z in CASE_STARTS]


def save(image: nib.Nifti1Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def inverted(image: nib.Nifti1Image) -> nib.Nifti1Image:
    return nib.Nifti1Image(1.0 - image.get_fdata(dtype=np.float32), image.affine)


def write_msd(root: Path, cases, test_cases=(), modality: str | dict = "T1") -> Path:
    """A Decathlon folder: dataset.json, imagesTr/, labelsTr/ and, given test cases, imagesTs/ with labelsTs/.
    A modality mapping of two channels ({"0": "T1", "1": "FLAIR"}) writes 4D images: the T1, then its inverse."""
    channels = modality if isinstance(modality, dict) else {"0": modality}
    training = []
    for index, (image, label) in enumerate(cases):
        name = f"brain_{index:03d}.nii.gz"
        if len(channels) > 1:
            channels_last = np.stack([image.get_fdata(dtype=np.float32), inverted(image).get_fdata()], axis=-1)
            image = nib.Nifti1Image(channels_last, image.affine)
        save(image, root / "imagesTr" / name)
        save(label, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    for index, (image, label) in enumerate(test_cases):
        save(image, root / "imagesTs" / f"brain_t{index:03d}.nii.gz")
        save(label, root / "labelsTs" / f"brain_t{index:03d}.nii.gz")
    description = {
        "name": "MNI",
        "modality": channels,
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
        "numTraining": len(training),
        "training": training,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def write_nnunet_v2(root: Path, cases, labels: dict | None = None) -> Path:
    """An nnU-Net v2 folder of two channels: _0000 the T1, _0001 its inverse."""
    for index, (image, label) in enumerate(cases):
        save(image, root / "imagesTr" / f"brain_{index:03d}_0000.nii.gz")
        save(inverted(image), root / "imagesTr" / f"brain_{index:03d}_0001.nii.gz")
        save(label, root / "labelsTr" / f"brain_{index:03d}.nii.gz")
    description = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": labels or {"background": 0, "grey matter": 1, "white matter": 2},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def write_pictures(root: Path, cases, binary: bool, mask_folder: str = "masks") -> Path:
    """A 2D folder: the middle slice of each case as an 8-bit PNG, its mask (0/255 brain or 0/1/2 tissue)."""
    for index, (image, label) in enumerate(cases):
        pixels = np.rint(np.clip(image.get_fdata()[:, :, 1], 0, 1) * 255).astype(np.uint8)
        tissue = np.asarray(label.dataobj)[:, :, 1]
        mask = np.where(tissue > 0, 255, 0) if binary else tissue
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / mask_folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / f"slice_{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / mask_folder / f"slice_{index}.png")
    return root
