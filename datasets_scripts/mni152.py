"""The embedded default data set: the MNI ICBM152 2009 T1 template with grey- and white-matter labels; its task is
white matter.

The nilearn wheel carries the template and its tissue probability maps (nilearn/datasets/data/), so this
builder works offline and needs no `data_dir`. See docs/data.md (the embedded default) for the label rule and slabs.

Label of a voxel: the most probable of background, grey matter (1) and white matter (2), where
p_background = max(0, 1 - p_grey - p_white); ties go to the lower label. The volume is cut along its third
(inferior to superior) axis into disjoint slabs of `slab_depth` slices, counted from slice 0; a last
partial slab is dropped, as are slabs without tissue. Slab k goes to the test split when
k % test_period == test_period - 1, else to train. "3d" serves the slabs as volumes, "2d" the axial slices
of those slabs that hold tissue, so the two configs split the template identically.

The class is white matter alone (`DEMO_CLASSES`); the label maps keep grey matter as 1, so both tissues are a
`classes={"grey_matter": [1], "white_matter": [2]}` away. Why not both by default: the two tissues fill one region,
so the clicks or box of either class fall on the same place and only the intensity under a click could tell SAM
which class is meant; the shipped tiny SAM does not learn that (docs/data.md, "The embedded default").
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Iterator

import datasets
import nibabel as nib
import numpy as np

from ._common import SegmentationConfig, image_features, volume_features

__all__ = [
    "MNI152",
    "DEMO_CLASSES",
    "MNI152Config",
    "TISSUE_LABELS",
    "load_template",
    "slab_ranges",
    "split_slabs",
    "tissue_labels",
]

TISSUE_LABELS = {"grey_matter": (1,), "white_matter": (2,)}  # the values of the label maps
DEMO_CLASSES = {"white_matter": TISSUE_LABELS["white_matter"]}  # the classes served: the demo's task


@dataclasses.dataclass
class MNI152Config(SegmentationConfig):
    """volumes: serve slabs as NIfTI volumes ("3d") or their slices as images ("2d"); resolution_mm: isotropic
    voxel size the template is resampled to (nilearn's `resolution`); slab_depth: slices per slab;
    test_period: every test_period-th slab is a test slab."""

    volumes: bool = True
    resolution_mm: int = 2
    slab_depth: int = 8
    test_period: int = 4

    def __post_init__(self):
        super().__post_init__()
        self.axial_pictures = not self.volumes  # the "2d" pictures are the slabs' axial slices, in canonical order
        if self.resolution_mm < 1 or self.slab_depth < 1 or self.test_period < 2:
            raise ValueError(
                f"MNI152 needs resolution_mm >= 1, slab_depth >= 1, test_period >= 2; got {self.resolution_mm}, "
                f"{self.slab_depth}, {self.test_period}"
            )


def tissue_labels(grey_matter: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """uint8 labels 0 background / 1 grey / 2 white matter from probability maps in [0, 1] (same shape)."""
    background = np.clip(1.0 - grey_matter - white_matter, 0.0, None)
    return np.argmax(np.stack([background, grey_matter, white_matter]), axis=0).astype(np.uint8)


def load_template(resolution_mm: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """The T1 template (float32, scaled to [0, 1] by nilearn) and its tissue labels, both on nilearn's grid."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=resolution_mm)
    grey = load_mni152_gm_template(resolution=resolution_mm).get_fdata()
    white = load_mni152_wm_template(resolution=resolution_mm).get_fdata()
    return (
        _nifti(t1.get_fdata(dtype=np.float32), t1.affine),
        _nifti(tissue_labels(grey, white), t1.affine),
    )


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A fresh NIfTI of `data` (its own dtype) in millimetres, so no header of the source recasts it."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    return image


def slab_ranges(depth: int, slab_depth: int) -> list[tuple[int, int]]:
    """(start, stop) of the full slabs of a volume `depth` slices deep, in order."""
    return [(start, start + slab_depth) for start in range(0, depth - slab_depth + 1, slab_depth)]


def split_slabs(labels: np.ndarray, config: MNI152Config) -> dict[str, list[tuple[int, int]]]:
    """Slabs holding tissue, by split: {"train": [(start, stop), ...], "test": [...]}."""
    splits = {"train": [], "test": []}
    for index, (start, stop) in enumerate(slab_ranges(labels.shape[2], config.slab_depth)):
        if labels[:, :, start:stop].any():
            test = index % config.test_period == config.test_period - 1
            splits["test" if test else "train"].append((start, stop))
    return splits


def _nifti_bytes(image: nib.Nifti1Image, name: str) -> dict:
    return {"path": f"{name}.nii.gz", "bytes": gzip.compress(image.to_bytes(), compresslevel=6)}


def _config(name: str, volumes: bool) -> MNI152Config:
    kind = "disjoint axial slabs as NIfTI volumes" if volumes else "axial slices of those slabs as images"
    return MNI152Config(
        name=name,
        description=f"MNI ICBM152 2009 T1 template, grey/white matter labels, white matter as the class; {kind}",
        classes=dict(DEMO_CLASSES),
        modality="mri",
        volumes=volumes,
    )


class MNI152(datasets.GeneratorBasedBuilder):
    """MNI ICBM152 2009 symmetric T1 template with grey / white matter labels (white matter the class), from the
    nilearn wheel (offline)."""

    BUILDER_CONFIG_CLASS = MNI152Config
    BUILDER_CONFIGS = [_config("3d", volumes=True), _config("2d", volumes=False)]
    DEFAULT_CONFIG_NAME = "3d"
    HOMEPAGE = "https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/"
    CITATION = (
        "Fonov et al., Unbiased average age-appropriate atlases for pediatric studies, NeuroImage 54(1), 2011; "
        "Fonov et al., Unbiased nonlinear average age-appropriate brain templates from birth to adulthood, "
        "NeuroImage 47, S102, 2009"
    )

    def _info(self) -> datasets.DatasetInfo:
        features = volume_features() if self.config.volumes else image_features()
        return datasets.DatasetInfo(
            description=self.__doc__, features=features, homepage=self.HOMEPAGE, citation=self.CITATION
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        t1, labels = load_template(self.config.resolution_mm)
        slabs = split_slabs(np.asanyarray(labels.dataobj), self.config)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"t1": t1, "labels": labels, "slabs": ranges})
            for split, ranges in slabs.items()
        ]

    def _generate_examples(
        self, t1: nib.Nifti1Image, labels: nib.Nifti1Image, slabs: list[tuple[int, int]]
    ) -> Iterator[tuple[str, dict]]:
        generate = self._slab_examples if self.config.volumes else self._slice_examples
        for start, stop in slabs:
            yield from generate(t1.slicer[:, :, start:stop], labels.slicer[:, :, start:stop], start)

    def _slab_examples(self, t1: nib.Nifti1Image, labels: nib.Nifti1Image, start: int) -> Iterator[tuple[str, dict]]:
        name = f"mni152_z{start:03d}-{start + t1.shape[2] - 1:03d}"
        yield name, {
            "id": name,
            "image": _nifti_bytes(t1, f"{name}_t1"),
            "label": _nifti_bytes(labels, f"{name}_label"),
            "spacing": [float(zoom) for zoom in t1.header.get_zooms()[:3]],
        }

    def _slice_examples(self, t1: nib.Nifti1Image, labels: nib.Nifti1Image, start: int) -> Iterator[tuple[str, dict]]:
        intensities = np.rint(np.clip(t1.get_fdata(), 0.0, 1.0) * 255).astype(np.uint8)
        label_maps = np.asanyarray(labels.dataobj)
        spacing = [float(zoom) for zoom in t1.header.get_zooms()[:2]]
        for offset in range(t1.shape[2]):
            if label_maps[:, :, offset].any():
                name = f"mni152_z{start + offset:03d}"
                yield name, {
                    "id": name,
                    "image": intensities[:, :, offset],
                    "label": label_maps[:, :, offset],
                    "spacing": spacing,
                }
