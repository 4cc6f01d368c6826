"""BraTS 2021 (RSNA-ASNR-MICCAI) brain glioma MRI, from the BraTS2021_Training_Data download."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ._common import MissingDataError, SegmentationConfig, VolumeBuilder, VolumeCase, find_dir, held_out

__all__ = [
    "BraTS",
    "BraTSConfig",
]

SEQUENCES = ("flair", "t1", "t1ce", "t2")
# The training archive as named by the Kaggle copy and by the Synapse release; else data_dir holds the cases.
TRAINING_FOLDERS = ("BraTS2021_Training_Data", "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021")
# Label values of BraTS 2021: 1 necrotic tumour core, 2 peritumoral edema, 4 enhancing tumour.
LABELS = {"NCR": (1,), "ED": (2,), "ET": (4,)}
# The evaluation regions of the challenge: whole tumour, tumour core, enhancing tumour.
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


@dataclasses.dataclass
class BraTSConfig(SegmentationConfig):
    """sequence: the MRI sequence served as "image"; validation_percent: share of cases held out for the
    validation split, chosen by a stable hash of the case id (the challenge's own validation labels are
    not public)."""

    sequence: str = "flair"
    validation_percent: int = 20


def _config(sequence: str, class_set: str) -> BraTSConfig:
    classes = REGIONS if class_set == "regions" else LABELS
    return BraTSConfig(
        name=f"{sequence}-{class_set}",
        description=f"{sequence} images; classes: the {class_set} {tuple(classes)}",
        classes=dict(classes),
        modality="mri",
        sequence=sequence,
    )


class BraTS(VolumeBuilder):
    """BraTS 2021 training data: 1251 cases of t1, t1ce, t2, flair and a segmentation (labels 1, 2, 4)."""

    HOMEPAGE = "http://braintumorsegmentation.org/"
    CITATION = "Baid et al., The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation, arXiv:2107.02314"
    BUILDER_CONFIG_CLASS = BraTSConfig
    BUILDER_CONFIGS = [_config(sequence, class_set) for sequence in SEQUENCES for class_set in ("regions", "labels")]
    DEFAULT_CONFIG_NAME = "flair-regions"

    def _find_cases(self, root: Path) -> dict[str, list[VolumeCase]]:
        if self.config.sequence not in SEQUENCES:
            raise ValueError(f"BraTS sequence must be one of {SEQUENCES}, got {self.config.sequence!r}")
        found = (find_dir(root, folder, max_depth=2) for folder in TRAINING_FOLDERS)
        training = next((folder for folder in found if folder is not None), root)
        case_dirs = sorted(p for p in training.iterdir() if p.is_dir() and p.name.startswith("BraTS2021_"))
        if not case_dirs:
            raise MissingDataError(f"no BraTS2021_XXXXX case folders in {training}")
        cases = {"train": [], "validation": []}
        for case_dir in case_dirs:
            case = self._case(case_dir)
            cases["validation" if held_out(case.id, self.config.validation_percent) else "train"].append(case)
        return cases

    def _case(self, case_dir: Path) -> VolumeCase:
        image = case_dir / f"{case_dir.name}_{self.config.sequence}.nii.gz"
        label = case_dir / f"{case_dir.name}_seg.nii.gz"
        if not image.is_file():
            raise MissingDataError(f"BraTS case {case_dir.name}: no {self.config.sequence} image {image}")
        if not label.is_file():
            raise MissingDataError(f"no label for image {image}: expected {label}")
        return VolumeCase(case_dir.name, image, label)
