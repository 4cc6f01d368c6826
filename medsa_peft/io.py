"""Reading and writing medical images with their geometry: NIfTI, DICOM series, PNG / JPG.

Every reader returns a `MedicalImage`: the pixel array in the file's own voxel order, and for volumes the
affine that maps voxel indices to RAS+ millimetres (nibabel's convention) and the voxel spacing. A mask
written with `write_mask` gets the geometry of the image it was predicted from. Writes are atomic: the file
appears complete under its name or not at all.

Axes. A volume is (I, J, K), its slices `array[:, :, k]` are (I, J) images with rows along I and columns
along J. NIfTI keeps the file's voxel order. A DICOM series becomes (rows, columns, slices), the slices in
order of their position along the slice normal; a multi-frame DICOM file (rows, columns, frames). A 2D image
is (H, W) grey or (H, W, 3) colour.

Reading refuses what would give a wrong image without saying so (docs/inference.md, "Reading checks"): a
damaged gzip stream, voxels that are not grey real numbers, an image larger than `max_bytes` once decoded
(checked from the header, before anything is allocated), and DICOM series with missing, duplicated, unevenly
spaced or unreadable slices.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image, ImageMode
from pydicom.errors import InvalidDicomError

from .constants import DEFAULT_MAX_IMAGE_BYTES
from .files import atomic_path, write_png

__all__ = [
    "ImageReadError",
    "MedicalImage",
    "Reorientation",
    "UnsupportedFileError",
    "file_suffix",
    "read_image",
    "write_mask",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_PICTURE_MODES = ("1", "L", "I", "I;16", "F")
# DICOM Modality (0008,0060) values that name an intensity normalisation of the data layer.
_DICOM_MODALITIES = {"CT": "ct", "MR": "mri"}
# LPS (DICOM, ITK) to RAS (NIfTI, nibabel) world coordinates.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_IDENTITY_ORIENTATION = np.array([[0, 1], [1, 1], [2, 1]])
_GZIP_CHUNK_BYTES = 1 << 20
# DICOM values larger than this (the pixel data) stay on disk while headers are read.
_DICOM_DEFER_BYTES = 4096
# Slice positions closer than this are one position; a step between slices may differ from the usual step by
# this much plus the relative tolerance before the series counts as unevenly spaced.
_SAME_POSITION_MM = 0.01
_STEP_TOLERANCE = 0.01
_ORIENTATION_TOLERANCE = 1e-3
_LISTED = 3  # positions, files or steps named in one message
# PIL's decompression-bomb limit is a module global: it is lifted (under this lock) only while a picture's
# header is parsed, and read_image's own `max_bytes` applies instead.
_PIL_LIMIT_LOCK = threading.Lock()


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
    modality_tag: the DICOM Modality tag (0008,0060) as written ("CT", "NM", ...); None for other files or
        when the tag is absent.
    """

    path: Path
    kind: str
    array: np.ndarray
    affine: np.ndarray | None
    spacing: tuple[float, ...]
    modality: str | None = None
    header: nib.Nifti1Header | None = None
    modality_tag: str | None = None

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


def read_image(path: str | os.PathLike, max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES) -> MedicalImage:
    """Read a NIfTI file (.nii, .nii.gz), a DICOM series (its folder, or one of its files) or a PNG / JPG.

    max_bytes: the most bytes the decoded image may take, checked from the file's header before the voxels
        are read (None: no limit).
    Raises FileNotFoundError when nothing is at `path`, UnsupportedFileError for other file types and
    ImageReadError for unusable content; each message names the file.
    """
    path = Path(path)
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive number of bytes or None, got {max_bytes}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    suffix = file_suffix(path)
    if path.is_dir() or suffix in DICOM_SUFFIXES:
        return _read_dicom(path, max_bytes)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path, max_bytes)
    if suffix in PICTURE_SUFFIXES:
        return _read_picture(path, max_bytes)
    raise UnsupportedFileError(
        f"{path}: unsupported file type {suffix or '(no suffix)'!r}; expected NIfTI {NIFTI_SUFFIXES}, "
        f"a DICOM series (a folder, or a file {DICOM_SUFFIXES}) or a picture {PICTURE_SUFFIXES}"
    )


def _byte_size(count: int) -> str:
    """`count` bytes in binary units, e.g. '4.0 GiB'."""
    value, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def _check_size(path: Path, claimed: int, max_bytes: int | None, what: str) -> None:
    """Raise ImageReadError when `claimed` decoded bytes exceed `max_bytes`."""
    if max_bytes is not None and claimed > max_bytes:
        raise ImageReadError(
            f"{path}: {what} takes {_byte_size(claimed)} ({claimed} bytes) once decoded, over the limit of "
            f"{_byte_size(max_bytes)} ({max_bytes} bytes); raise max_bytes (--max-image-bytes) if the file is genuine"
        )


def _read_nifti(path: Path, max_bytes: int | None) -> MedicalImage:
    try:
        image = nib.load(path)  # the header; the voxels are read below
    except Exception as error:  # nibabel raises several types for corrupt or truncated files
        raise ImageReadError(f"{path}: cannot read the NIfTI file ({error})") from error
    dtype = image.get_data_dtype()
    if dtype.kind not in "biuf":  # complex, RGB24 / RGBA32 (structured) voxels
        raise ImageReadError(
            f"{path}: its voxels are {image.header.get_value_label('datatype')} (NIfTI datatype "
            f"{int(image.header['datatype'])}); only grey volumes of real numbers are read"
        )
    shape = " x ".join(str(size) for size in image.shape)
    _check_size(path, math.prod(image.shape) * dtype.itemsize, max_bytes, f"the header's {shape} {dtype} image")
    try:
        array = _nifti_voxels(path, image)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ImageReadError(f"{path}: the gzip data is damaged ({error}); the file is corrupt or truncated") from error
    except Exception as error:
        raise ImageReadError(f"{path}: cannot read the NIfTI file ({error})") from error
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ImageReadError(f"{path}: expected a 3D volume, got an array of shape {array.shape}")
    spacing = tuple(float(zoom) for zoom in image.header.get_zooms()[:3])
    return MedicalImage(path, "nifti", array, image.affine.copy(), spacing, header=image.header.copy())


def _nifti_voxels(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    """The voxels of `image`, loaded from `path`. A .nii.gz is read through one gzip stream to its very end, so
    that the stream's CRC and length are checked (nibabel stops after the voxels, before the check)."""
    if file_suffix(path) != ".nii.gz":
        return np.asanyarray(image.dataobj)
    with gzip.open(path, "rb") as stream:
        streamed = type(image).from_file_map(type(image).make_file_map({"image": stream}), mmap=False)
        array = np.asanyarray(streamed.dataobj)
        while stream.read(_GZIP_CHUNK_BYTES):
            pass
    return array


def _itk_message(error: RuntimeError) -> str:
    """The one informative line of an ITK / SimpleITK exception (they span lines and start with a source path)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception thrown in SimpleITK"):
        lines = lines[1:]
    return re.sub(r"^(ITK ERROR: |sitk::ERROR: )?(\w+\(0x[0-9a-f]+\): )?", "", lines[0]) if lines else str(error)


def _dicom_header(path: Path) -> pydicom.Dataset | None:
    """The data set of a DICOM file with its pixel data left on disk; None when `path` is not a DICOM file.

    A file named like a DICOM file but without the 'DICM' preamble is read as a bare data set.
    """
    try:
        try:
            return pydicom.dcmread(path, defer_size=_DICOM_DEFER_BYTES)
        except InvalidDicomError:
            if file_suffix(path) not in DICOM_SUFFIXES:
                return None
            return pydicom.dcmread(path, defer_size=_DICOM_DEFER_BYTES, force=True)
    except Exception as error:  # pydicom raises many types on damaged files
        raise ImageReadError(f"{path}: a damaged DICOM file, cannot read its header ({error})") from error


def _text(header: pydicom.Dataset, keyword: str) -> str:
    return str(header.get(keyword, "") or "").strip()


def _names(paths: Sequence[Path | str], limit: int = _LISTED) -> str:
    names = [path.name if isinstance(path, Path) else path for path in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _series_files(path: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """(file, header) of each image file of the one DICOM series at `path`: a folder holding one series, or
    one file of a series (its folder is searched for the others; a file without a Series Instance UID is alone).
    Hidden files (a leading '.') are left out."""
    folder = path if path.is_dir() else path.parent
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    without_pixels: list[tuple[Path, pydicom.Dataset]] = []
    entries = (entry for entry in folder.iterdir() if entry == path or not entry.name.startswith("."))
    for file in sorted(entry for entry in entries if entry.is_file()):
        header = _dicom_header(file)
        if header is None:
            continue
        if "PixelData" in header:
            series.setdefault(_text(header, "SeriesInstanceUID"), []).append((file, header))
        else:
            without_pixels.append((file, header))
    if path.is_file():
        header = _dicom_header(path)
        if header is None:
            raise ImageReadError(f"{path}: not a DICOM file")
        if "PixelData" not in header:
            raise ImageReadError(f"{path}: a DICOM {_text(header, 'Modality')} object without pixel data, not an image")
        uid = _text(header, "SeriesInstanceUID")
        if not uid:
            return [(path, header)]
    elif not series:
        raise ImageReadError(f"{path}: no DICOM series found")
    elif len(series) > 1:
        raise ImageReadError(
            f"{path}: the folder holds {len(series)} DICOM series ({', '.join(sorted(series))}); "
            "pass the folder of one series, or one of its files"
        )
    else:
        uid = next(iter(series))
    files = series[uid]
    sop_class = files[0][1].get("SOPClassUID")
    # a slice truncated before its pixel data still names the series and the SOP class of the others
    truncated = [
        file
        for file, header in without_pixels
        if _text(header, "SeriesInstanceUID") == uid and header.get("SOPClassUID") == sop_class
    ]
    if truncated:
        raise ImageReadError(
            f"{path}: {_names(truncated)} of this series hold no pixel data: truncated or damaged slices; "
            "repair or remove them"
        )
    return files


def _orientation(header: pydicom.Dataset) -> np.ndarray | None:
    """ImageOrientationPatient as 6 numbers (or from the shared functional groups of an enhanced file)."""
    value = header.get("ImageOrientationPatient")
    shared = header.get("SharedFunctionalGroupsSequence")
    if value is None and shared and "PlaneOrientationSequence" in shared[0]:
        value = shared[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
    return None if value is None or len(value) != 6 else np.array([float(number) for number in value])


def _frame_positions(header: pydicom.Dataset, frames: int) -> list[float] | None:
    """Positions (mm along the slice normal) of the frames of a multi-frame file, in stored order; None when
    the file does not record them."""
    offsets = header.get("GridFrameOffsetVector")  # RT dose: offsets along the normal
    if offsets is not None and len(offsets) == frames:
        return [float(offset) for offset in offsets]
    groups, orientation = header.get("PerFrameFunctionalGroupsSequence"), _orientation(header)
    if not groups or len(groups) != frames or orientation is None:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    positions = []
    for group in groups:
        plane = group.get("PlanePositionSequence")
        if not plane or "ImagePositionPatient" not in plane[0]:
            return None
        positions.append(float(normal @ np.array([float(value) for value in plane[0].ImagePositionPatient])))
    return positions


def _check_steps(path: Path, labels: list[str], positions: list[float]) -> float:
    """The step (mm) between `positions` (mm along the normal, in reading order); ImageReadError unless they
    step evenly.

    labels: one name per position (a file, or a frame).
    """
    steps = np.diff(positions)
    same = np.flatnonzero(np.abs(steps) < _SAME_POSITION_MM)
    if same.size:
        index = int(same[0])
        together = [
            label for label, position in zip(labels, positions) if abs(position - positions[index]) < _SAME_POSITION_MM
        ]
        raise ImageReadError(
            f"{path}: {len(together)} slices at one position ({positions[index] - positions[0]:g} mm along the "
            f"normal): {_names(together)}; several echoes, phases or acquisitions share this series: put each "
            "in a folder of its own"
        )
    step = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - step) > _STEP_TOLERANCE * abs(step) + _SAME_POSITION_MM)
    if uneven.size:
        jumps = [
            f"{positions[i] - positions[0]:g} mm ({labels[i]}) to {positions[i + 1] - positions[0]:g} mm "
            f"({labels[i + 1]}) is {steps[i]:g} mm"
            for i in uneven[:_LISTED]
        ]
        more = f" and {uneven.size - _LISTED} more" if uneven.size > _LISTED else ""
        raise ImageReadError(
            f"{path}: the slices are not evenly spaced along the normal (the usual step is {step:g} mm): "
            f"{'; '.join(jumps)}{more}; a slice is missing or the series mixes spacings"
        )
    return abs(step)


def _check_series(path: Path, files: list[tuple[Path, pydicom.Dataset]]) -> tuple[list[Path], float | None]:
    """The files of a DICOM series in slice order and the step between its slices (None when unrecorded), after
    checking that they make one evenly spaced grey volume."""
    headers = [header for _, header in files]
    frames = [int(header.get("NumberOfFrames") or 1) for header in headers]
    if len(files) > 1 and max(frames) > 1:
        index = int(np.argmax(frames))
        raise ImageReadError(
            f"{path}: {files[index][0].name} holds {frames[index]} frames, among the {len(files)} files of this "
            "series; pass the multi-frame file alone"
        )
    sizes: dict[tuple[int, int], list[Path]] = {}
    for file, header in files:
        sizes.setdefault((int(header.get("Rows") or 0), int(header.get("Columns") or 0)), []).append(file)
    if len(sizes) > 1:
        described = "; ".join(f"{rows} x {columns}: {_names(paths)}" for (rows, columns), paths in sizes.items())
        raise ImageReadError(f"{path}: the files of this series differ in size (rows x columns): {described}")
    samples = int(headers[0].get("SamplesPerPixel") or 1)
    if samples != 1:
        raise ImageReadError(f"{path}: expected a grey DICOM image, got {samples} samples (colours) per pixel")
    if len(files) == 1:
        positions = _frame_positions(headers[0], frames[0]) if frames[0] > 1 else None
        if positions is None:
            return [files[0][0]], None
        return [files[0][0]], _check_steps(path, [f"frame {index + 1}" for index in range(frames[0])], positions)
    orientations = [_orientation(header) for header in headers]
    missing = [
        file
        for (file, header), orientation in zip(files, orientations)
        if orientation is None or "ImagePositionPatient" not in header
    ]
    if missing:
        raise ImageReadError(
            f"{path}: {_names(missing)} record no ImagePositionPatient / ImageOrientationPatient; the slices of "
            "the series cannot be ordered and spaced without them"
        )
    tilted = [
        file
        for (file, _), orientation in zip(files, orientations)
        if np.abs(orientation - orientations[0]).max() > _ORIENTATION_TOLERANCE
    ]
    if tilted:
        raise ImageReadError(
            f"{path}: the slices are not parallel: {_names(tilted)} differ in ImageOrientationPatient from "
            f"{files[0][0].name}; pass one stack (a localizer or a second orientation shares this series)"
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = [float(normal @ np.array([float(value) for value in header.ImagePositionPatient])) for header in headers]
    order = np.argsort(along, kind="stable")
    step = _check_steps(path, [files[i][0].name for i in order], [along[i] for i in order])
    return [files[i][0] for i in order], step


def _voxel_bytes(file: Path) -> int:
    """Bytes per voxel of the image GDCM decodes from `file` (its pixel type after RescaleSlope / Intercept)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(f"{file}: GDCM cannot read this DICOM file ({_itk_message(error)})") from error
    return sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).itemsize


def _cut_short(header: pydicom.Dataset) -> bool:
    """Whether the uncompressed pixel data of a file holds fewer bytes than its header's image needs (a truncated
    copy), from the header `_series_files` read (its deferred pixel data is read here). Checked from the file, not
    by GDCM: some GDCM releases decode a short file without a word."""
    if "PixelData" not in header or header["PixelData"].is_undefined_length:  # compressed frames: GDCM checks
        return False
    bits = int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel") or 1)
    bits *= int(header.BitsAllocated) * int(header.get("NumberOfFrames") or 1)
    return len(header.PixelData) < (bits + 7) // 8


def _unreadable(files: list[Path]) -> list[Path]:
    """The files GDCM cannot read (truncated or damaged)."""
    unreadable = []
    for file in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(file))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            unreadable.append(file)
    return unreadable


def _read_dicom(path: Path, max_bytes: int | None) -> MedicalImage:
    files = _series_files(path)
    first = files[0][1]
    try:
        ordered, step = _check_series(path, files)
    except ImageReadError:
        raise
    except (TypeError, ValueError) as error:  # a malformed number in a header
        raise ImageReadError(f"{path}: a DICOM header of this series holds an unusable value ({error})") from error
    rows, columns = int(first.Rows), int(first.Columns)
    depth = len(ordered) if len(ordered) > 1 else int(first.get("NumberOfFrames") or 1)
    claimed = rows * columns * depth * _voxel_bytes(ordered[0])
    _check_size(path, claimed, max_bytes, f"the {rows} x {columns} x {depth} DICOM volume")
    headers = dict(files)
    cut_short = [file for file in ordered if _cut_short(headers[file])]
    if cut_short:
        raise ImageReadError(f"{path}: GDCM cannot read {_names(cut_short)} of this series: truncated or damaged files")
    try:
        if len(ordered) == 1:
            image = sitk.ReadImage(str(ordered[0]))  # one file, one frame or several: a 3D image
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(file) for file in ordered])
            image = reader.Execute()  # GDCM applies RescaleSlope / RescaleIntercept (CT: Hounsfield units)
    except RuntimeError as error:
        unreadable = _unreadable(ordered)
        if unreadable:
            raise ImageReadError(
                f"{path}: GDCM cannot read {_names(unreadable)} of this series: truncated or damaged files"
            ) from error
        raise ImageReadError(f"{path}: cannot read the DICOM series ({_itk_message(error)})") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(
            f"{path}: expected a grey 3D DICOM series, got {image.GetDimension()}D "
            f"with {image.GetNumberOfComponentsPerPixel()} components per pixel"
        )
    # ITK index (column, row, slice) -> LPS: origin + direction @ (spacing * index); our axes are (row, column, slice).
    column_spacing, row_spacing, slice_spacing = image.GetSpacing()
    if step is not None and abs(slice_spacing - step) > _STEP_TOLERANCE * step + _SAME_POSITION_MM:
        raise ImageReadError(
            f"{path}: GDCM reads {slice_spacing:g} mm between slices where their recorded positions step {step:g} mm; "
            "the file's geometry is inconsistent"
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    axes_lps = np.stack(
        [direction[:, 1] * row_spacing, direction[:, 0] * column_spacing, direction[:, 2] * slice_spacing], axis=1
    )
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ axes_lps
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    array = np.transpose(sitk.GetArrayFromImage(image), (1, 2, 0))  # (slice, row, column) -> (row, column, slice)
    tag = _text(first, "Modality").upper() or None
    spacing = (float(row_spacing), float(column_spacing), float(slice_spacing))
    return MedicalImage(
        path, "dicom", array, affine, spacing, modality=_DICOM_MODALITIES.get(tag or ""), modality_tag=tag
    )


@contextmanager
def _open_picture(path: Path) -> Iterator[Image.Image]:
    """`Image.open(path)` without PIL's decompression-bomb limit, which `read_image`'s `max_bytes` replaces."""
    with _PIL_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            picture = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with picture:
        yield picture


def _read_picture(path: Path, max_bytes: int | None) -> MedicalImage:
    try:
        with _open_picture(path) as picture:
            mode = ImageMode.getmode(picture.mode)
            mode_ok = picture.mode in GREY_PICTURE_MODES
            pixel_bytes = len(mode.bands) * np.dtype(mode.typestr).itemsize
            width, height = picture.size
            what = f"the {width} x {height} {picture.mode} picture"
            _check_size(path, width * height * (pixel_bytes if mode_ok else max(pixel_bytes, 3)), max_bytes, what)
            picture.load()
            array = np.asarray(picture if mode_ok else picture.convert("RGB"))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises all three for broken files
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
    """Between a volume's voxel order in its file and the order the model segments it in, the one reorientation of
    the package: the data layer and the predictor both use it.

    The model's order is the closest canonical (RAS+) order (nibabel's `io_orientation`), axial slices along its
    axis 2, except for a single non-axial slice: a volume with one voxel along a file axis and more than one along
    the canonical axial axis (a sagittal or coronal DICOM file, a (1, H, W) or (H, 1, W) NIfTI). No axial slice of
    it holds more than a strip of pixels, so the model sees that slice as stored, a 2D picture: its rows and
    columns are the file's two other axes in their stored order and direction. A volume with one voxel along the
    axial axis is an axial slice and keeps the canonical order, like the same slice in its series.

    Prompts address the volume as a stack of slices (rows, columns, slices): file axes `slice_axes`, (0, 1, 2)
    except for a single non-axial slice, whose slice axis is its one-voxel axis (the last one when there are two).
    `index`, `interval` and `edges` take axes of that stack; `canonical_order` takes file axes. "Canonical" in
    the names below means the model's order.
    """

    def __init__(self, affine: np.ndarray | None, shape: tuple[int, int, int]):
        self.shape = tuple(int(size) for size in shape)
        ornt = _IDENTITY_ORIENTATION if affine is None else io_orientation(affine)
        thin = [axis for axis in range(3) if self.shape[axis] == 1]
        # an undetermined axis (a degenerate affine: NaN row) is not axial
        self.single_slice = bool(thin) and not any(ornt[axis, 0] == 2 for axis in thin)
        self.slice_axes: tuple[int, int, int] = (0, 1, 2)
        if self.single_slice:
            self.slice_axes = (*(axis for axis in range(3) if axis != thin[-1]), thin[-1])
            ornt = np.array([[self.slice_axes.index(axis), 1] for axis in range(3)])
        self.ornt = ornt

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A (I, J, K, ...) array in the file's voxel order -> the model's order."""
        return apply_orientation(array, self.ornt)

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """An array in the model's order -> the file's voxel order."""
        return apply_orientation(array, ornt_transform(axcodes2ornt("RAS"), self.ornt))

    @property
    def slice_shape(self) -> tuple[int, int, int]:
        """(rows, columns, slices) of the volume as a stack of slices."""
        return tuple(self.shape[axis] for axis in self.slice_axes)

    def index(self, axis: int, value: float) -> tuple[int, float]:
        """(canonical axis, coordinate) of a pixel index along `axis` of the slice stack."""
        target, direction = self.ornt[self.slice_axes[axis]]
        return int(target), value if direction > 0 else self.slice_shape[axis] - 1 - value

    def interval(self, axis: int, low: float, high: float) -> tuple[int, float, float]:
        """(canonical axis, low, high) of the pixel-edge interval [low, high) along `axis` of the slice stack."""
        target, direction = self.ornt[self.slice_axes[axis]]
        size = self.slice_shape[axis]
        return (int(target), low, high) if direction > 0 else (int(target), size - high, size - low)

    @property
    def keeps_slice_axis(self) -> bool:
        """Whether each slice of the stack is a slice (along axis 2) of the model's order."""
        return int(self.ornt[self.slice_axes[2], 0]) == 2

    def edges(self, stack_edges: Sequence[tuple[float, float]]) -> dict[int, tuple[float, float]]:
        """Canonical axis -> (low, high) of pixel-edge intervals given along slice-stack axes 0, 1, ..."""
        mapped = (self.interval(axis, low, high) for axis, (low, high) in enumerate(stack_edges))
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
