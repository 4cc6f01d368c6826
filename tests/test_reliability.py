"""Files written by others: every damaged, oversized, unusual or ambiguous input gives a correct result or one clear
line naming the file and the cause, never a silent wrong answer or a raw traceback (issue 14).

The inputs are real files the installed packages ship (pydicom's CT_small.dcm, MR_small.dcm, rtdose.dcm, rtstruct.dcm;
nibabel's anatomical.nii) and small files written here from them.
"""

import copy
import gzip
import json
import logging
import re
import shutil
import struct
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from safetensors.torch import load_file, save_file
from helpers import tiny_sam_model
from test_inference import medsa_model, save_nifti, saved_model

import builder_fixtures as fixtures
from datasets_scripts._common import CorruptDataError, MissingDataError
from datasets_scripts.btcv import BTCV
from datasets_scripts.isic import ISIC
from medsa_peft.cli import main
from medsa_peft.data.preprocess import normalize_intensity
from medsa_peft.inference import Box3D, MedSAPredictor, SlicePrompt, load_medsa_model
from medsa_peft.io import DEFAULT_MAX_IMAGE_BYTES, ImageReadError, read_image

CT_SMALL = get_testdata_file("CT_small.dcm")


def ct_series(folder: Path, offsets_mm, **tags) -> list[Path]:
    """Copies of CT_small.dcm as one series, slice i moved `offsets_mm[i]` along the slice normal; `tags` are set
    on every file (a list value: one per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(CT_SMALL)
    orientation = np.array(template.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array(template.ImagePositionPatient, dtype=float)
    series, paths = generate_uid(), []
    for index, offset in enumerate(offsets_mm):
        dataset = copy.deepcopy(template)
        dataset.SeriesInstanceUID = series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [float(value) for value in origin + offset * normal]
        for keyword, value in tags.items():
            setattr(dataset, keyword, value[index] if isinstance(value, list) else value)
        paths.append(folder / f"slice{index:02d}.dcm")
        dataset.save_as(paths[-1])
    return paths


def one_line_error(path, **kwargs) -> str:
    """The message of the ImageReadError that reading `path` raises; it is one line and names the input."""
    with pytest.raises(ImageReadError) as raised:
        read_image(path, **kwargs)
    message = str(raised.value)
    assert "\n" not in message and str(path) in message
    return message


# --- NIfTI ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def anatomical_gz(tmp_path) -> Path:
    """nibabel's anatomical.nii, gzipped: a real .nii.gz."""
    path = tmp_path / "anatomical.nii.gz"
    path.write_bytes(gzip.compress((Path(NIBABEL_DATA) / "anatomical.nii").read_bytes()))
    return path


def test_a_damaged_gzip_stream_is_refused(anatomical_gz):
    expected = np.asanyarray(nib.load(Path(NIBABEL_DATA) / "anatomical.nii").dataobj)
    np.testing.assert_array_equal(read_image(anatomical_gz).array, expected)  # the intact file reads
    data = anatomical_gz.read_bytes()
    for name, position in (("middle", len(data) // 2), ("crc", len(data) - 6), ("length", len(data) - 2)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        (anatomical_gz.parent / f"{name}.nii.gz").write_bytes(damaged)
        assert "gzip data is damaged" in one_line_error(anatomical_gz.parent / f"{name}.nii.gz")
    (anatomical_gz.parent / "cut.nii.gz").write_bytes(data[:-4])
    assert "Compressed file ended" in one_line_error(anatomical_gz.parent / "cut.nii.gz")


def test_nifti2_gz_reads_through_the_checked_stream(tmp_path):
    source = nib.load(Path(NIBABEL_DATA) / "example_nifti2.nii.gz")
    volume = np.asanyarray(source.dataobj)[..., 1]
    nib.save(nib.Nifti2Image(volume, source.affine), tmp_path / "two.nii.gz")
    image = read_image(tmp_path / "two.nii.gz")
    np.testing.assert_array_equal(image.array, volume)
    np.testing.assert_allclose(image.affine, source.affine)


def test_a_small_nifti_claiming_gigabytes_fails_fast_without_allocating(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    stream = header.binaryblock + b"\0" * 4096
    (tmp_path / "claims.nii.gz").write_bytes(gzip.compress(stream))
    assert (tmp_path / "claims.nii.gz").stat().st_size < 4096

    tracemalloc.start()
    try:
        message = one_line_error(tmp_path / "claims.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2
    assert "2048 x 2048 x 1024 float32 image takes 16.0 GiB (17179869184 bytes)" in message
    assert f"over the limit of 4.0 GiB ({DEFAULT_MAX_IMAGE_BYTES} bytes)" in message

    anatomical = Path(NIBABEL_DATA) / "anatomical.nii"  # 33 x 41 x 25 int16: 67650 bytes
    assert "limit of 66.0 KiB (67584 bytes)" in one_line_error(anatomical, max_bytes=67584)
    assert read_image(anatomical, max_bytes=67650).array.shape == (33, 41, 25)


@pytest.mark.parametrize(
    "voxels, named",
    [
        (np.ones((4, 5, 3), np.complex64), "complex64 (NIfTI datatype 32)"),
        (np.zeros((4, 5, 3), [("R", "u1"), ("G", "u1"), ("B", "u1")]), "RGB (NIfTI datatype 128)"),
    ],
)
def test_complex_and_rgb_nifti_are_refused(tmp_path, voxels, named):
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), tmp_path / "odd.nii.gz")
    assert f"its voxels are {named}; only grey volumes of real numbers" in one_line_error(tmp_path / "odd.nii.gz")


# --- pictures ------------------------------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a `width` x `height` grey picture, with a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_pictures_follow_our_size_limit_not_pils(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_claiming(100_000, 100_000))  # over PIL's limit: a raw error before
    message = one_line_error(tmp_path / "bomb.png")
    assert "the 100000 x 100000 L picture takes 9.3 GiB (10000000000 bytes) once decoded, over the limit" in message

    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would refuse 1200 pixels
    assert read_image(tmp_path / "small.png").array.shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100
    message = one_line_error(tmp_path / "small.png", max_bytes=3599)
    assert "the 40 x 30 RGB picture takes 3.5 KiB (3600 bytes) once decoded, over the limit of 3.5 KiB (3599" in message


# --- DICOM ---------------------------------------------------------------------------------------------------------


def test_an_evenly_spaced_series_reads_in_hounsfield_units(tmp_path):
    ct_series(tmp_path / "series", [0, 5, 10, 15])
    image = read_image(tmp_path / "series")
    template = pydicom.dcmread(CT_SMALL)
    hounsfield = template.pixel_array * float(template.RescaleSlope) + float(template.RescaleIntercept)
    np.testing.assert_array_equal(image.array, np.repeat(hounsfield[:, :, None], 4, axis=2))
    assert image.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    assert (image.modality, image.modality_tag) == ("ct", "CT")
    assert "128 x 128 x 4 DICOM volume takes 256.0 KiB" in one_line_error(tmp_path / "series", max_bytes=200_000)


def test_a_gap_in_the_slice_positions_is_refused(tmp_path):
    ct_series(tmp_path / "gap", [0, 5, 20])
    message = one_line_error(tmp_path / "gap")
    assert "not evenly spaced along the normal" in message
    assert "5 mm (slice01.dcm) to 20 mm (slice02.dcm) is 15 mm" in message


def test_two_echoes_at_each_position_are_refused(tmp_path):
    ct_series(tmp_path / "echoes", [0, 0, 5, 5], EchoNumbers=[1, 2, 1, 2])
    message = one_line_error(tmp_path / "echoes")
    assert "2 slices at one position (0 mm along the normal): slice00.dcm, slice01.dcm" in message
    assert "several echoes" in message


def test_a_truncated_file_in_the_middle_of_a_series_is_named(tmp_path):
    files = ct_series(tmp_path / "series", [0, 5, 10, 15, 20])
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])  # GDCM's own series scan leaves it out: 4 slices, no error
    for path in (tmp_path / "series", files[0]):
        assert "GDCM cannot read slice02.dcm of this series: truncated or damaged" in one_line_error(path)

    files[2].write_bytes(data[: data.rfind(b"\xe0\x7f\x10\x00")])  # cut before the pixel data element (7FE0,0010)
    assert "slice02.dcm of this series hold no pixel data" in one_line_error(tmp_path / "series")

    files[2].write_bytes(b"")  # nothing left: not a DICOM file, a missing slice
    assert "5 mm (slice01.dcm) to 15 mm (slice03.dcm) is 10 mm" in one_line_error(tmp_path / "series")

    damaged = bytearray(data)
    damaged[136] ^= 0x01  # the value representation of the first meta element
    files[2].write_bytes(damaged)
    assert "a damaged DICOM file, cannot read its header" in one_line_error(files[2])


def test_other_objects_beside_a_series(tmp_path):
    folder = tmp_path / "export"
    files = ct_series(folder, [0, 5, 10])
    shutil.copy(get_testdata_file("rtdose.dcm"), folder / "dose.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "structures.dcm")
    (folder / "README.txt").write_text("exported by a PACS")
    (folder / "._slice00.dcm").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # a macOS resource fork: hidden, skipped
    assert "the folder holds 2 DICOM series" in one_line_error(folder)
    assert read_image(files[1]).array.shape == (128, 128, 3)  # a file of the series: the RT objects are left out

    dose = pydicom.dcmread(folder / "dose.dcm")
    dose.SeriesInstanceUID = pydicom.dcmread(files[0]).SeriesInstanceUID  # the dose claims the CT's series
    dose.save_as(folder / "dose.dcm")
    assert "dose.dcm holds 15 frames, among the 4 files of this series" in one_line_error(files[0])
    assert "DICOM RTSTRUCT object without pixel data, not an image" in one_line_error(folder / "structures.dcm")


def test_slices_in_two_orientations_or_without_positions_are_refused(tmp_path):
    ct_series(tmp_path / "tilted", [0, 5, 10], ImageOrientationPatient=[[1, 0, 0, 0, 1, 0]] * 2 + [[1, 0, 0, 0, 0, 1]])
    assert "not parallel: slice02.dcm differ in ImageOrientationPatient" in one_line_error(tmp_path / "tilted")
    files = ct_series(tmp_path / "unplaced", [0, 5, 10])
    dataset = pydicom.dcmread(files[1])
    del dataset.ImagePositionPatient
    dataset.save_as(files[1])
    assert "slice01.dcm record no ImagePositionPatient" in one_line_error(tmp_path / "unplaced")


def test_a_multi_frame_file_is_the_volume_it_holds(tmp_path):
    (tmp_path / "dose").mkdir()
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "dose" / "dose.dcm")
    frames = pydicom.dcmread(tmp_path / "dose" / "dose.dcm").pixel_array  # (frames, rows, columns)
    for path in (tmp_path / "dose" / "dose.dcm", tmp_path / "dose"):
        image = read_image(path)
        np.testing.assert_array_equal(image.array, np.transpose(frames, (1, 2, 0)))
        assert image.spacing == pytest.approx((10.0, 10.0, 5.0))  # GridFrameOffsetVector steps 5 mm
        assert (image.modality, image.modality_tag) == (None, "RTDOSE")

    dose = pydicom.dcmread(tmp_path / "dose" / "dose.dcm")
    dose.GridFrameOffsetVector = [0.0, 5.0, 10.0] + [20.0 + 5 * index for index in range(12)]
    dose.save_as(tmp_path / "dose" / "dose.dcm")
    assert "10 mm (frame 3) to 20 mm (frame 4) is 10 mm" in one_line_error(tmp_path / "dose")

    (tmp_path / "bad").mkdir()
    shutil.copy(get_testdata_file("badVR.dcm"), tmp_path / "bad" / "bad.dcm")  # NumberOfFrames '1A'
    with pytest.warns(UserWarning, match="Invalid value for VR IS: '1A'"):  # pydicom's own warning
        assert "holds an unusable value (invalid literal for int()" in one_line_error(tmp_path / "bad")


def test_frame_positions_of_per_frame_groups_are_checked(tmp_path):
    """rtdose.dcm with its frame positions in per-frame PlanePositionSequence items (as enhanced CT / MR store
    them) instead of GridFrameOffsetVector."""
    (tmp_path / "dose").mkdir()
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    del dose.GridFrameOffsetVector
    origin = np.array(dose.ImagePositionPatient, dtype=float)

    def place_frames(offsets) -> Path:
        groups = []
        for offset in offsets:
            plane, group = Dataset(), Dataset()
            plane.ImagePositionPatient = [float(value) for value in origin + [0, 0, offset]]
            group.PlanePositionSequence = Sequence([plane])
            groups.append(group)
        dose.PerFrameFunctionalGroupsSequence = Sequence(groups)
        dose.save_as(tmp_path / "dose" / "dose.dcm")
        return tmp_path / "dose" / "dose.dcm"

    gap = place_frames([0.0, 5.0, 10.0] + [20.0 + 5 * index for index in range(12)])
    assert "10 mm (frame 3) to 20 mm (frame 4) is 10 mm" in one_line_error(gap)
    even = place_frames([5.0 * index for index in range(15)])  # GDCM reads such an RT dose 1 mm apart
    assert "GDCM reads 1 mm between slices where their recorded positions step 5 mm" in one_line_error(even)


def test_a_single_mr_file_reads(tmp_path):
    (tmp_path / "mr").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr" / "MR_small.dcm")
    image = read_image(tmp_path / "mr" / "MR_small.dcm")
    np.testing.assert_array_equal(image.array[:, :, 0], pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)
    assert (image.modality, image.modality_tag) == ("mri", "MR")


# --- prediction ----------------------------------------------------------------------------------------------------


def test_nan_and_inf_voxels_are_ignored_with_a_warning(sam, tmp_path, caplog):
    volume = np.random.default_rng(0).normal(0, 200, (20, 24, 5))
    clean = save_nifti(tmp_path / "clean.nii.gz", volume, np.eye(4))
    volume[2:4, 3:6, :] = np.nan
    volume[10, 10, 2], volume[11, 11, 3] = np.inf, -np.inf
    holed = save_nifti(tmp_path / "holed.nii.gz", volume, np.eye(4))
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=True), chunk_depth=3, overlap=1, progress=False)
    box = Box3D(3, 4, 1, 18, 15, 4)

    expected = predictor.predict_file(clean, box, modality="ct").mask
    assert expected[:, :, 1:4].any(axis=(0, 1)).all()
    with caplog.at_level(logging.WARNING, logger="medsa_peft.inference.predictor"):
        prediction = predictor.predict_file(holed, box, modality="ct")
    np.testing.assert_array_equal(prediction.mask.any(axis=(0, 1)), expected.any(axis=(0, 1)))
    assert np.isfinite(prediction.normalized).all()
    assert f"{holed}: 32 of 2400 voxels are NaN or infinite; they are set to the lowest finite value" in caplog.text

    save_nifti(tmp_path / "void.nii.gz", np.full((20, 24, 5), np.nan), np.eye(4))
    with pytest.raises(ValueError, match="void.nii.gz: every voxel is NaN or infinite"):
        predictor.predict_file(tmp_path / "void.nii.gz", box, modality="mri")


@pytest.mark.parametrize("tag", ["CR", "NM", "OT", "US"])
def test_a_dicom_modality_without_a_rule_asks_for_one(sam, tmp_path, tag):
    ct_series(tmp_path / tag, [0, 5], Modality=tag)
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)
    with pytest.raises(ValueError) as raised:
        predictor.predict_file(tmp_path / tag, Box3D(1, 1, 0, 20, 20, 2))
    message = str(raised.value)
    assert f"{tmp_path / tag}: say which intensity normalisation applies" in message
    assert f"--modality on the command line; its DICOM Modality tag is '{tag}'" in message
    assert "NIfTI" not in message


def single_ct_slice(folder: Path, orientation=None) -> Path:
    """CT_small.dcm alone in `folder`, its ImageOrientationPatient replaced by `orientation` when given."""
    folder.mkdir(parents=True)
    dataset = pydicom.dcmread(CT_SMALL)
    if orientation is not None:
        dataset.ImageOrientationPatient = orientation
    dataset.save_as(folder / "slice.dcm")
    return folder / "slice.dcm"


def test_a_single_sagittal_dicom_slice_is_segmented_as_stored(sam, tmp_path):
    """SAM sees the stored 128 x 128 slice, not 128 one-voxel axial strips of it: the mask equals the one the same
    model gives the slice as a 2D array, for a prompt in the slice's own pixels, written in the file's geometry."""
    path = single_ct_slice(tmp_path / "sagittal", orientation=[0, 1, 0, 0, 0, -1])  # rows: anterior, columns: down
    image = read_image(path)
    assert nib.aff2axcodes(image.affine)[2] in ("L", "R") and image.array.shape == (128, 128, 1)
    template = pydicom.dcmread(CT_SMALL)
    hounsfield = template.pixel_array * float(template.RescaleSlope) + float(template.RescaleIntercept)
    np.testing.assert_array_equal(image.array[:, :, 0], hounsfield)
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)

    for prompt in (SlicePrompt(box=(20, 50, 110, 100)), SlicePrompt(points=[(90, 30), (10, 120)], labels=[1, 0])):
        expected = predictor.predict_logits(normalize_intensity(hounsfield, "ct")[None], [prompt])[0].numpy() > 0
        prediction = predictor.predict_file(path, prompt)  # CT from the Modality tag
        assert expected.any() and not expected.all()
        np.testing.assert_array_equal(prediction.mask[:, :, 0], expected)
    prediction.save(tmp_path / "mask.nii.gz")
    written = nib.load(tmp_path / "mask.nii.gz")
    assert written.shape == (128, 128, 1)
    np.testing.assert_allclose(written.affine, image.affine)


def test_a_single_axial_dicom_slice_gets_the_mask_it_gets_in_its_series(sam, tmp_path):
    """One voxel along the axial axis is an axial slice: it keeps the canonical order, as the slices of a series."""
    ct_series(tmp_path / "series", [0, 5, 10])
    single = single_ct_slice(tmp_path / "single")
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)
    in_series = predictor.predict_file(tmp_path / "series", Box3D(20, 50, 1, 110, 100, 2)).mask
    alone = predictor.predict_file(single, SlicePrompt(box=(20, 50, 110, 100))).mask
    assert alone.shape == (128, 128, 1) and alone.any()
    np.testing.assert_array_equal(alone[:, :, 0], in_series[:, :, 1])


@pytest.mark.parametrize("name", ["thin.png", "thin.nii.gz"])
def test_a_slice_too_thin_for_sams_frame_is_refused(sam, tmp_path, name):
    """A 1 x 300 slice (a picture, or a single (1, 1, 300) slice) is 0 x 64 pixels in the tiny SAM's 64-pixel frame."""
    if name.endswith(".png"):
        Image.fromarray(np.zeros((1, 300), np.uint8)).save(tmp_path / name)
    else:
        nib.save(nib.Nifti1Image(np.zeros((1, 1, 300), np.uint8), np.eye(4)), tmp_path / name)
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)
    with pytest.raises(ValueError) as raised:
        predictor.predict_file(tmp_path / name, SlicePrompt(box=(0, 0, 200, 1)), modality="photo")
    assert str(raised.value) == (
        f"{tmp_path / name}: its 300 x 1 (x, y) slices are too thin for SAM: resized to 64 pixels along the long "
        "side, the short side is 0 pixels (it needs at least 3 pixel(s) here)"
    )


def test_damaged_adapter_weights_fail_at_load(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    weights_file = adapter_dir / "adapter_model.safetensors"
    intact, weights = weights_file.read_bytes(), load_file(weights_file)
    name = sorted(weights)[0]

    damaged = dict(weights, **{name: weights[name].clone().fill_(float("nan"))})
    save_file(damaged, weights_file, metadata={"format": "pt"})
    expected = f"{adapter_dir}: 1 of the adapter's {len(weights)} weight tensors hold NaN or infinite values in float32"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_medsa_model(adapter_dir, sam_dir)

    large = dict(weights, **{name: weights[name].clone().fill_(1e6)})  # finite in float32, inf in float16
    save_file(large, weights_file, metadata={"format": "pt"})
    load_medsa_model(adapter_dir, sam_dir)
    with pytest.raises(ValueError, match="NaN or infinite values in float16"):
        load_medsa_model(adapter_dir, sam_dir, dtype="float16")

    damaged_file = re.escape(f"{weights_file}: cannot load the adapter's weights, the file is damaged")
    for content in (b"", intact[: len(intact) // 2], b"\xff" * 64):
        weights_file.write_bytes(content)
        with pytest.raises(ValueError, match=damaged_file):
            load_medsa_model(adapter_dir, sam_dir)


def load_error(adapter_dir: Path, sam_dir: Path) -> str:
    """The message of the ValueError that loading the adapter raises; it is one line and names the adapter."""
    with pytest.raises(ValueError) as raised:
        load_medsa_model(adapter_dir, sam_dir)
    message = str(raised.value)
    assert "\n" not in message and str(adapter_dir) in message
    return message


def test_an_adapter_of_an_unknown_peft_type_is_named(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (adapter_dir / "adapter_config.json").write_text(json.dumps(dict(config, peft_type="FOO")))
    message = load_error(adapter_dir, sam_dir)
    assert "adapter_config.json names peft_type 'FOO', a type PEFT does not know" in message
    assert "a Med-SA adapter has peft_type 'MEDSA'" in message


def test_an_adapter_of_another_sam_size_names_both(sam, tmp_path):
    _, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)  # hidden size 32
    tiny_sam_model(hidden_size=64).save_pretrained(tmp_path / "wider")
    message = load_error(adapter_dir, tmp_path / "wider")
    assert f"trained on another SAM than the base {tmp_path / 'wider'} (vision hidden size 64)" in message
    first = "base_model.model.vision_encoder.layers.0.medsa_space_adapter.default.fc1.weight"
    assert f"first {first} has [8, 32] where the base needs [16, 64]" in message


def test_adapter_weights_that_do_not_match_its_config_are_refused(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    config_file, weights_file = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    config, weights = json.loads(config_file.read_text()), load_file(weights_file)

    config_file.write_text(json.dumps(dict(config, depth_adapter=True)))  # no depth adapter in the weights
    with pytest.warns(UserWarning, match="Found missing adapter keys"):  # PEFT's own warning
        message = load_error(adapter_dir, sam_dir)
    described = "weight tensors of the adapter that adapter_config.json describes are missing"
    assert f"{weights_file}: 8 of the 60 {described}" in message
    assert "(base_model.model.vision_encoder.layers.0.medsa_depth_adapter.fc1.bias, " in message and ", ...)" in message

    config_file.write_text(json.dumps(config))
    name = sorted(weights)[0]
    save_file({key: value for key, value in weights.items() if key != name}, weights_file, metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="Found missing adapter keys"):
        message = load_error(adapter_dir, sam_dir)
    assert f"1 of the {len(weights)} {described} ({name})" in message

    extra = dict(weights, **{"base_model.model.extra.weight": weights[name].clone()})
    save_file(extra, weights_file, metadata={"format": "pt"})
    message = load_error(adapter_dir, sam_dir)
    assert "holds 1 weight tensors that the adapter adapter_config.json describes does not have" in message
    assert "(base_model.model.extra.weight); the config does not belong to these weights" in message


# --- data builders -------------------------------------------------------------------------------------------------


def prepared(builder_class, data_dir: Path, config_name: str, cache: Path) -> dict:
    builder = builder_class(config_name=config_name, data_dir=str(data_dir), cache_dir=str(cache))
    builder.download_and_prepare()
    return builder.as_dataset()


def test_an_isic_colour_mask_reads_as_its_lesion(tmp_path):
    root = fixtures.write_isic(tmp_path / "isic", "isic2016")
    red = np.zeros((*fixtures.disc().shape, 3), np.uint8)
    red[fixtures.disc()] = (255, 0, 0)  # grey level 76: below the 0/255 threshold of a grey reading
    Image.fromarray(red).save(root / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000000_Segmentation.png")
    label = np.asarray(prepared(ISIC, root, "isic2016", tmp_path / "cache")["train"][0]["label"])
    np.testing.assert_array_equal(label, np.where(fixtures.disc(), 255, 0))


@pytest.mark.parametrize(
    "content, error, expected",
    [
        ("{not json", CorruptDataError, "dataset_0.json: not a JSON file (Expecting property name"),
        (json.dumps({"validation": []}), MissingDataError, "dataset_0.json: no 'training' list"),
        (
            json.dumps({"training": [{"img": "a.nii.gz"}]}),
            CorruptDataError,
            "dataset_0.json: its 'training' list must hold objects with an \"image\" and a \"label\" path",
        ),
    ],
)
def test_a_garbage_btcv_split_file_is_named(tmp_path, content, error, expected):
    root = fixtures.write_btcv_monai(tmp_path / "btcv", training=(1,), validation=())
    (root / "dataset_0.json").write_text(content)
    with pytest.raises(error) as raised:
        prepared(BTCV, root, "monai_json", tmp_path / "cache")
    assert str(root / expected) in str(raised.value) and "\n" not in str(raised.value)


# --- command line --------------------------------------------------------------------------------------------------


def unusable_device() -> str:
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def test_command_line_refusals_are_one_line(sam, tmp_path, capsys):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / folder / "lesion.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "a" / "lesion.jpg")
    common = ["predict", "--adapter", str(adapter_dir), "--model", str(sam_dir)]
    one = [*common, "--input", str(tmp_path / "a" / "lesion.png"), "--output", str(tmp_path / "mask.png")]

    def error(argv) -> str:
        assert main(argv) == 1
        printed = capsys.readouterr().err
        lines = [line for line in printed.splitlines() if line.startswith("medsa-peft predict: error: ")]
        assert len(lines) == 1 and "Traceback" not in printed
        return lines[0]

    same_name = [*common, "--input", str(tmp_path / "a" / "lesion.png"), str(tmp_path / "b" / "lesion.png")]
    assert (
        f"inputs {tmp_path / 'a' / 'lesion.png'} and {tmp_path / 'b' / 'lesion.png'} would both write "
        f"{tmp_path / 'masks' / 'lesion_mask.png'}"
    ) in error([*same_name, "--box", "1,1,9,9", "--output", str(tmp_path / "masks")])
    same_stem = [*common, "--input", str(tmp_path / "a" / "lesion.png"), str(tmp_path / "a" / "lesion.jpg")]
    assert "would both write" in error([*same_stem, "--box", "1,1,9,9", "--output", str(tmp_path / "masks")])
    assert not (tmp_path / "masks").exists()

    with pytest.raises(SystemExit):
        main([*one, "--point", "10,5,0.5"])
    assert "--point label must be 1 (object) or 0 (background), got '0.5' in '10,5,0.5'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*one, "--box", "nan,1,5,5"])
    assert "takes finite numbers, got 'nan,1,5,5'" in capsys.readouterr().err
    assert "box (-5.0, 1.0, 20.0, 20.0) lies outside the 40 x 30" in error([*one, "--box", "-5,1,20,20"])
    assert "point (-1, 3) lies outside" in error([*one, "--point", "-1,3"])

    assert "over the limit of 1.0 KiB (1024 bytes)" in error([*one, "--box", "1,1,9,9", "--max-image-bytes", "1K"])
    with pytest.raises(SystemExit):
        main([*one, "--box", "1,1,9,9", "--max-image-bytes", "lots"])
    assert "--max-image-bytes takes a positive size such as 4G or 512M, got 'lots'" in capsys.readouterr().err

    Image.fromarray(np.zeros((1, 300), np.uint8)).save(tmp_path / "thin.png")
    thin = [*common, "--input", str(tmp_path / "thin.png"), "--output", str(tmp_path / "thin_mask.png")]
    assert "thin.png: its 300 x 1 (x, y) slices are too thin for SAM" in error([*thin, "--box", "0,0,200,1"])

    device = unusable_device()
    assert f"device '{device}' is not usable here (" in error([*one, "--box", "1,1,9,9", "--device", device])
    assert not (tmp_path / "mask.png").exists()
    assert main([*one, "--box", "1,1,9,9", "--max-image-bytes", "4G"]) == 0
