"""Reading NIfTI, DICOM series and pictures with their geometry; writing masks in that geometry, atomically."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medsa_peft.io import ImageReadError, UnsupportedFileError, read_image, write_mask

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def write_dicom_series(
    folder: Path,
    hounsfield: np.ndarray,
    pixel_spacing=(0.7, 0.8),
    slice_gap=2.5,
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin=(-10.0, 20.0, 30.0),
    series_uid=None,
) -> list[Dataset]:
    """A CT series, one file per slice of `hounsfield` (rows, columns, slices), stored with RescaleIntercept -1024
    and written in shuffled file-name order; returns the datasets in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, columns, slices = hounsfield.shape
    normal = np.cross(orientation[:3], orientation[3:])
    study, series = generate_uid(), series_uid or generate_uid()
    datasets = []
    for index in range(slices):
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        instance = generate_uid()
        dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
        dataset.file_meta.MediaStorageSOPInstanceUID = instance
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.SOPClassUID, dataset.SOPInstanceUID = CTImageStorage, instance
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.FrameOfReferenceUID = study, series, study
        dataset.Modality, dataset.PatientID, dataset.InstanceNumber = "CT", "anonymous", index + 1
        dataset.ImagePositionPatient = [float(v) for v in np.asarray(origin) + index * slice_gap * normal]
        dataset.ImageOrientationPatient = [float(v) for v in orientation]
        dataset.PixelSpacing, dataset.SliceThickness = list(pixel_spacing), slice_gap
        dataset.Rows, dataset.Columns = rows, columns
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 1
        dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
        dataset.PixelData = (hounsfield[:, :, index] + 1024).astype(np.int16).tobytes()
        dataset.save_as(folder / f"image{(index * 3 + 1) % slices:03d}.dcm", enforce_file_format=True)
        datasets.append(dataset)
    return datasets


def hounsfield_volume(shape=(12, 10, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def lps_position(dataset: Dataset, row: int, column: int) -> np.ndarray:
    """World position (LPS mm) of a pixel from the DICOM tags alone (PS3.3 C.7.6.2.1.1)."""
    orientation = np.array(dataset.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    return (
        np.array(dataset.ImagePositionPatient, dtype=float)
        + orientation[:3] * column_spacing * column
        + orientation[3:] * row_spacing * row
    )


def test_dicom_series_reads_in_slice_order_with_hounsfield_units_and_its_geometry(tmp_path):
    volume = hounsfield_volume()
    # an oblique orientation: rows along (x + y) / sqrt 2, columns along z
    orientation = (np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0, 0.0, -1.0)
    datasets = write_dicom_series(tmp_path / "series", volume, orientation=orientation)

    image = read_image(tmp_path / "series")
    assert image.kind == "dicom" and image.modality == "ct"
    np.testing.assert_array_equal(image.array, volume)
    assert image.spacing == pytest.approx((0.7, 0.8, 2.5))
    for index, dataset in enumerate(datasets):
        for row, column in ((0, 0), (11, 0), (0, 9), (5, 7)):
            world = image.affine @ np.array([row, column, index, 1.0])
            np.testing.assert_allclose(world[:3], LPS_TO_RAS @ lps_position(dataset, row, column), atol=1e-4)

    one_file = read_image(next((tmp_path / "series").glob("*.dcm")))
    np.testing.assert_array_equal(one_file.array, volume)


def test_a_folder_with_two_series_is_refused(tmp_path):
    write_dicom_series(tmp_path / "mixed", hounsfield_volume((4, 4, 2)))
    write_dicom_series(tmp_path / "other", hounsfield_volume((4, 4, 2), seed=1), origin=(0.0, 0.0, 90.0))
    for path in (tmp_path / "other").iterdir():
        path.rename(tmp_path / "mixed" / f"other_{path.name}")
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_image(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path / "empty")


def test_nifti_mask_keeps_shape_affine_spacing_and_header(tmp_path):
    affine = np.array([[0.0, -0.9, 0.0, 12.0], [0.0, 0.0, 2.0, -4.0], [-0.8, 0.0, 0.0, 7.0], [0, 0, 0, 1.0]])
    source = nib.Nifti1Image(np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32), affine)
    source.header["descrip"] = b"scanner volume"
    nib.save(source, tmp_path / "mri.nii.gz")

    image = read_image(tmp_path / "mri.nii.gz")
    assert image.spatial_shape == (6, 5, 4) and image.spacing == pytest.approx((0.8, 0.9, 2.0))
    mask = np.zeros((6, 5, 4), bool)
    mask[1:3, 2:4, 1] = True
    write_mask(mask, image, tmp_path / "out" / "mask.nii.gz")

    written = nib.load(tmp_path / "out" / "mask.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    assert written.get_data_dtype() == np.uint8
    assert written.header.get_zooms() == pytest.approx((0.8, 0.9, 2.0))
    assert written.header["descrip"].tobytes().rstrip(b"\0") == b"scanner volume"
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), mask.astype(np.uint8))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mask.nii.gz"]  # no temporary left behind


def test_dicom_mask_is_written_as_nifti_in_the_series_geometry(tmp_path):
    write_dicom_series(tmp_path / "series", hounsfield_volume())
    image = read_image(tmp_path / "series")
    write_mask(np.ones(image.spatial_shape, bool), image, tmp_path / "mask.nii.gz")
    written = nib.load(tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(written.affine, image.affine)
    assert written.shape == (12, 10, 4)


@pytest.mark.parametrize("mode, shape", [("L", (7, 9)), ("RGB", (7, 9, 3)), ("RGBA", (7, 9, 3)), ("I;16", (7, 9))])
def test_pictures_read_as_grey_or_rgb(tmp_path, mode, shape):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 60000, (7, 9)).astype(np.uint16))
    else:
        picture = Image.fromarray(rng.integers(0, 255, (7, 9, len(mode))).astype(np.uint8).squeeze(), mode=mode)
    picture.save(tmp_path / "picture.png")
    image = read_image(tmp_path / "picture.png")
    assert image.kind == "picture" and image.array.shape == shape and image.affine is None
    assert image.spacing == (1.0, 1.0)


def test_picture_mask_is_a_png_of_the_same_size(tmp_path):
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / "skin.jpg")
    image = read_image(tmp_path / "skin.jpg")
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    write_mask(mask, image, tmp_path / "mask.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), mask.astype(np.uint8) * 255)


def test_bad_paths_and_bad_masks_fail_clearly_and_write_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "volume.mha").write_bytes(b"ObjectType = Image")
    with pytest.raises(UnsupportedFileError, match=r"volume\.mha.*unsupported file type '\.mha'"):
        read_image(tmp_path / "volume.mha")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image(tmp_path / "broken.nii.gz")

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), tmp_path / "ct.nii")
    image = read_image(tmp_path / "ct.nii")
    with pytest.raises(ValueError, match=r"shape \(4, 4\) does not match"):
        write_mask(np.zeros((4, 4), bool), image, tmp_path / "mask.nii.gz")
    with pytest.raises(UnsupportedFileError, match="NIfTI"):
        write_mask(np.zeros((4, 4, 3), bool), image, tmp_path / "mask.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz", "ct.nii", "volume.mha"]
