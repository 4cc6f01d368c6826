"""Reading and writing medical images with their geometry: NIfTI, DICOM series, PNG / JPG.

Every reader returns a `MedicalImage`: the pixel array in the file's own voxel order, and for volumes the
affine that maps voxel indices to RAS+ millimetres (nibabel's convention) and the voxel spacing. A mask
written with `write_mask` gets the geometry of the image it was predicted from. Writes are atomic: the file
appears complete under its name or not at all.

Axes. A volume is (I, J, K), its slices `array[:, :, k]` are (I, J) images with rows along I and columns
along J. NIfTI keeps the file's voxel order. A DICOM series becomes (rows, columns, slices), the slices in
order of their position along the slice normal (as SimpleITK / GDCM sorts them). A 2D image is (H, W)
grey or (H, W, 3) colour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from .files import atomic_path, write_png

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_PICTURE_MODES = ("1", "L", "I", "I;16", "F")
# DICOM Modality (0008,0060) values that name an intensity normalisation of the data layer.
_DICOM_MODALITIES = {"CT": "ct", "MR": "mri"}
# LPS (DICOM, ITK) to RAS (NIfTI, nibabel) world coordinates.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_IDENTITY_ORIENTATION = np.array([[0, 1], [1, 1], [2, 1]])


class UnsupportedFileError(ValueError):
    """The path is not a file type this package reads or writes."""


class ImageReadError(ValueError):
    """The file has a supported type but its content cannot be used."""


@dataclass
class MedicalImage:
    """An image read from disk with its geometry.

    array: volumes (I, J, K) raw intensities in the voxel order described in the module docstring; 2D
        images (H, W) grey or (H, W, 3) colour, as stored (uint8 for 8-bit pictures).
    affine: (4, 4) voxel index -> RAS+ mm for volumes; None for 2D pictures.
    spacing: mm per voxel along each spatial axis: 3 values for volumes, 2 for pictures (1.0: unknown).
    kind: "nifti", "dicom" or "picture".
    modality: "ct" / "mri" when the file says so (DICOM Modality tag), else None.
    header: the NIfTI header of a NIfTI file, copied into masks written for it.
    """

    path: Path
    kind: str
    array: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, ...]
    modality: str | None = None
    header: nib.Nifti1Header | None = None

    @property
    def is_volume(self) -> bool:
        return self.kind != "picture"

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """(I, J, K) for volumes, (H, W) for pictures (without the colour axis)."""
        return self.array.shape[:3] if self.is_volume else self.array.shape[:2]


def file_suffix(path: Path) -> str:
    """The lower-case suffix, `.nii.gz` counted as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def read_image(path: str | os.PathLike) -> MedicalImage:
    """Read a NIfTI file (.nii, .nii.gz), a DICOM series (its folder, or one of its files) or a PNG / JPG.

    Raises FileNotFoundError when nothing is at `path`, UnsupportedFileError for other file types and
    ImageReadError for unusable content; each message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = file_suffix(path)
    if path.is_dir() or suffix in DICOM_SUFFIXES:
        return _read_dicom_series(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in PICTURE_SUFFIXES:
        return _read_picture(path)
    raise UnsupportedFileError(
        f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected NIfTI {NIFTI_SUFFIXES}, "
        f"a DICOM series (a folder, or a file {DICOM_SUFFIXES}) or a picture {PICTURE_SUFFIXES}"
    )


def _read_nifti(path: Path) -> MedicalImage:
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises several types for corrupt or truncated files
        raise ImageReadError(f"{path}: cannot read the NIfTI file ({error})") from error
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D volume, got an array of shape {array.shape}")
    spacing = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    return MedicalImage(path, "nifti", array, image.affine.copy(), spacing, header=image.header.copy())


def _series_files(path: Path) -> list[str]:
    """The files of the one DICOM series at `path` (a folder holding one series, or one file of a series)."""
    folder = path if path.is_dir() else path.parent
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if path.is_file():
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise ImageReadError(f"{path}: not a readable DICOM file ({error})") from error
        series_ids = [reader.GetMetaData("0020|000e").strip()] if reader.HasMetaDataKey("0020|000e") else []
    if not series_ids:
        raise ImageReadError(f"{path}: no DICOM series found")
    if len(series_ids) > 1:
        raise ImageReadError(
            f"{path}: the folder holds {len(series_ids)} DICOM series ({', '.join(series_ids)}); "
            "pass the folder of one series, or one of its files"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


def _read_dicom_series(path: Path) -> MedicalImage:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(_series_files(path))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()  # GDCM applies RescaleSlope / RescaleIntercept (CT: Hounsfield units)
    except RuntimeError as error:
        raise ImageReadError(f"{path}: cannot read the DICOM series ({error})") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: expected a grey 3D DICOM series, got {image.GetDimension()}D "
            f"with {image.GetNumberOfComponentsPerPixel()} components per pixel"
        )
    # ITK index (column, row, slice) -> LPS: origin + direction @ (spacing * index); our axes are (row, column, slice).
    column_spacing, row_spacing, slice_spacing = image.GetSpacing()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axes_lps = np.stack(
        [direction[:, 1] * row_spacing, direction[:, 0] * column_spacing, direction[:, 2] * slice_spacing], axis=1
    )
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ axes_lps
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    array = np.transpose(sitk.GetArrayFromImage(image), (1, 2, 0))  # (slice, row, column) -> (row, column, slice)
    tag = reader.GetMetaData(0, "0008|0060").strip().upper() if reader.HasMetaDataKey(0, "0008|0060") else ""
    spacing = (float(row_spacing), float(column_spacing), float(slice_spacing))
    return MedicalImage(path, "dicom", array, affine, spacing, modality=_DICOM_MODALITIES.get(tag))


def _read_picture(path: Path) -> MedicalImage:
    try:
        with Image.open(path) as picture:
            picture.load()
            mode_ok = picture.mode in GREY_PICTURE_MODES
            array = np.asarray(picture if mode_ok else picture.convert("RGB"))
    except OSError as error:
        raise ImageReadError(f"{path}: cannot read the picture ({error})") from error
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return MedicalImage(path, "picture", array, None, (1.0, 1.0))


def write_mask(mask: np.ndarray, reference: MedicalImage, path: str | os.PathLike) -> Path:
    """Write a binary mask in the geometry of `reference`, atomically.

    mask: bool, `reference.spatial_shape`. Volumes are written as NIfTI (uint8 0/1) with the reference's
    affine (and header, for NIfTI input), whatever the input format; pictures as PNG (0/255).
    """
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != reference.spatial_shape:
        raise ValueError(
            f"{path}: mask of shape {mask.shape} does not match {reference.path} of shape {reference.spatial_shape}"
        )
    values = mask.astype(bool).astype(np.uint8)
    if not reference.is_volume:
        return write_png(values * 255, path)
    if file_suffix(path) not in NIFTI_SUFFIXES:
        raise UnsupportedFileError(
            f"{path}: masks of volumes are written as NIfTI; give a path ending in .nii.gz or .nii"
        )
    header = reference.header.copy() if reference.header is not None else None
    image = nib.Nifti1Image(values, reference.affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_zooms(reference.spacing)
    with atomic_path(path, suffix=file_suffix(path)) as temporary:
        nib.save(image, temporary)
    return path


class Reorientation:
    """Between a volume's voxel order in its file and the closest canonical (RAS+) order, nibabel's
    `io_orientation`: arrays both ways, and pixel indices and pixel-edge intervals along each file axis. The one
    reorientation of the package: the data layer and the predictor both use it."""

    def __init__(self, affine: np.ndarray | None, shape: tuple[int, int, int]):
        self.shape = shape
        self.ornt = _IDENTITY_ORIENTATION if affine is None else io_orientation(affine)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        return apply_orientation(array, self.ornt)

    def to_file(self, array: np.ndarray) -> np.ndarray:
        return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), self.ornt))

    def index(self, axis: int, value: float) -> tuple[int, float]:
        """(canonical axis, coordinate) of a pixel index along file `axis`."""
        target, direction = self.ornt[axis]
        return int(target), value if direction > 0 else self.shape[axis] - 1 - value

    def interval(self, axis: int, low: float, high: float) -> tuple[int, float, float]:
        """(canonical axis, low, high) of the pixel-edge interval [low, high) along file `axis`."""
        target, direction = self.ornt[axis]
        size = self.shape[axis]
        return (int(target), low, high) if direction > 0 else (int(target), size - high, size - low)

    @property
    def keeps_slice_axis(self) -> bool:
        return int(self.ornt[2, 0]) == 2

    def edges(self, file_edges: Sequence[tuple[float, float]]) -> dict[int, tuple[float, float]]:
        """Canonical axis -> (low, high) of pixel-edge intervals given along file axes 0, 1, ..."""
        mapped = (self.interval(axis, low, high) for axis, (low, high) in enumerate(file_edges))
        return {target: (low, high) for target, low, high in mapped}

    def canonical_order(self, values: Sequence[float]) -> tuple[float, ...]:
        """Per-axis values given along the file's axes 0, 1, 2 (sizes, spacings), in canonical axis order."""
        ordered = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(self.ornt):
            ordered[int(target)] = values[axis]
        return tuple(ordered)

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.canonical_order(self.shape))
