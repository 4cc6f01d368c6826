"""The `medsa-peft` console script: predict on files, convert the authors' checkpoints, clear errors."""

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from test_conversion import authors_checkpoint
from test_inference import save_nifti, saved_model
from test_io import hounsfield_volume, write_dicom_series

from medsa_peft.cli import main
from helpers import LocalHub

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_picture(path: Path, height=30, width=40) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3)).astype(np.uint8)).save(path)
    return path


def test_predict_a_volume_with_a_3d_box_and_an_overlay(sam, tmp_path, capsys):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    affine = np.diag([0.7, -0.7, 3.0, 1.0])
    source = save_nifti(tmp_path / "ct.nii.gz", np.random.default_rng(0).normal(0, 200, (20, 24, 6)), affine)
    status = main(
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            "--model",
            str(sam_dir),
            "--input",
            str(source),
            "--box",
            "3,4,1,18,15,5",
            "--modality",
            "ct",
            "--chunk-depth",
            "4",
            "--overlap",
            "1",
            "--output",
            str(tmp_path / "seg.nii.gz"),
            "--overlay",
            str(tmp_path / "seg.png"),
        ]
    )
    assert status == 0
    written = nib.load(tmp_path / "seg.nii.gz")
    assert written.shape == (20, 24, 6)
    np.testing.assert_allclose(written.affine, affine)
    mask = np.asanyarray(written.dataobj)
    assert not mask[:, :, [0, 5]].any()
    assert Image.open(tmp_path / "seg.png").mode == "RGB"
    assert f"-> {tmp_path / 'seg.nii.gz'}, {tmp_path / 'seg.png'}" in capsys.readouterr().out


def test_predict_several_inputs_into_folders_with_points(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    inputs = [write_picture(tmp_path / "lesion.png"), write_picture(tmp_path / "mole.jpg", 25, 20)]
    status = main(
        [
            "predict",
            "--adapter",
            str(adapter_dir),
            "--model",
            str(sam_dir),
            "--input",
            *map(str, inputs),
            "--point",
            "10,12",
            "--point",
            "15,3,0",
            "--output",
            str(tmp_path / "masks"),
            "--overlay",
            str(tmp_path / "overlays"),
        ]
    )
    assert status == 0
    assert np.asarray(Image.open(tmp_path / "masks" / "lesion_mask.png")).shape == (30, 40)
    assert np.asarray(Image.open(tmp_path / "masks" / "mole_mask.png")).shape == (25, 20)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["lesion_overlay.png", "mole_overlay.png"]


def test_predict_an_nnunet_folder_writes_one_mask_per_case(sam, tmp_path, capsys):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    images = tmp_path / "Dataset001_Brain" / "imagesTs"
    images.mkdir(parents=True)
    shapes = {"brain_001": ((20, 24, 6), ".nii.gz"), "brain_002": ((16, 18, 5), ".nii")}
    for seed, (case, (shape, ending)) in enumerate(shapes.items()):
        for channel in range(2):  # e.g. T1 and FLAIR
            affine = np.diag([0.9, 0.9, 2.0 + channel, 1.0])  # the channels differ only so that the test can tell
            save_nifti(images / f"{case}_{channel:04d}{ending}", np.random.default_rng(seed).random(shape), affine)
    write_dicom_series(images / "ct_003", hounsfield_volume((12, 10, 4)))  # a DICOM series folder: one case

    common = ["predict", "--adapter", str(adapter_dir), "--model", str(sam_dir), "--box", "1,1,8,8"]
    out = ["--output", str(tmp_path / "masks")]
    assert main([*common, "--input", str(images), "--modality", "mri", "--channel", "1", *out]) == 0

    written = sorted(path.name for path in (tmp_path / "masks").iterdir())
    assert written == ["brain_001.nii.gz", "brain_002.nii", "ct_003.nii.gz"]  # nnU-Net names, the inputs' endings
    for case, (shape, ending) in shapes.items():
        mask = nib.load(tmp_path / "masks" / f"{case}{ending}")
        assert mask.shape == shape and mask.header.get_zooms()[2] == pytest.approx(3.0)  # channel _0001's geometry
    assert nib.load(tmp_path / "masks" / "ct_003.nii.gz").shape == (12, 10, 4)
    printed = capsys.readouterr()
    assert f"{images / 'brain_001_0001.nii.gz'}: " in printed.out and "_0000" not in printed.out
    assert "2 of the cases have 2 channel files: channel _0001 is segmented" in printed.out
    assert "3/3" in printed.err  # the progress bar counts cases

    assert main([*common, "--input", str(images), "--channel", "2", "--output", str(tmp_path / "other")]) == 1
    assert f"{images}: case brain_001 has no channel _0002 (_0000, _0001); --channel picks" in capsys.readouterr().err
    (images / "brain_002_0001.nii").rename(images / "brain_002_0002.nii")
    assert main([*common, "--input", str(images), "--output", str(tmp_path / "other")]) == 1
    assert "case brain_002 has the channel files _0000, _0002; nnU-Net numbers" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_folder_of_pictures_keeps_their_stems_and_names_what_fails(sam, tmp_path, capsys, caplog):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    write_picture(pictures / "lesion.png")
    write_picture(pictures / "mole.jpg", 25, 20)
    (pictures / "notes.txt").write_text("not an image")
    common = ["predict", "--adapter", str(adapter_dir), "--model", str(sam_dir), "--point", "5,6"]
    out = ["--output", str(tmp_path / "masks"), "--overlay", str(tmp_path / "overlays")]

    assert main([*common, "--input", str(pictures), *out]) == 0
    assert np.asarray(Image.open(tmp_path / "masks" / "lesion.png")).shape == (30, 40)
    assert np.asarray(Image.open(tmp_path / "masks" / "mole.png")).shape == (25, 20)  # a mask of a JPEG is a PNG
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["lesion_overlay.png", "mole_overlay.png"]
    assert f"{pictures}: skipped what is neither NIfTI nor a picture: notes.txt" in caplog.text

    # refused before anything is written: two cases for one mask, a mask over its own input, a file as --output
    write_picture(pictures / "lesion.jpg")
    for output, message in (
        (tmp_path / "new", f"inputs {pictures / 'lesion.jpg'} and {pictures / 'lesion.png'} would both write"),
        (pictures, f"{pictures / 'lesion.png'} would replace the input {pictures / 'lesion.png'}"),
        (tmp_path / "mask.png", "with 3 cases, --output (and --overlay) name folders, not files"),
    ):
        assert main([*common, "--input", str(pictures), "--output", str(output)]) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not (tmp_path / "mask.png").exists()

    (pictures / "lesion.jpg").unlink()
    (pictures / "broken.png").write_bytes(b"not a PNG")
    assert main([*common, "--input", str(pictures), "--output", str(tmp_path / "again")]) == 1
    printed = capsys.readouterr().err
    assert f"medsa-peft predict: case broken failed: {pictures / 'broken.png'}" in printed
    assert "medsa-peft predict: error: 1 of 3 cases failed (broken); the masks of the others are written" in printed
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["lesion.png", "mole.png"]


def test_convert_official_then_predict_with_the_converted_adapter(tmp_path, capsys):
    torch.save({"state_dict": authors_checkpoint()}, tmp_path / "checkpoint.pth")
    assert main(["convert-official", str(tmp_path / "checkpoint.pth"), "--out", str(tmp_path / "zoo")]) == 0
    report = capsys.readouterr().out
    assert str(tmp_path / "zoo" / "sam") in report and "left out 8 Depth_Adapter tensors" in report

    picture = write_picture(tmp_path / "fundus.png")
    status = main(
        [
            "predict",
            "--adapter",
            str(tmp_path / "zoo" / "adapter"),
            "--input",
            str(picture),
            "--box",
            "5,5,30,25",
            "--output",
            str(tmp_path / "mask.png"),
        ]
    )
    assert status == 0 and Image.open(tmp_path / "mask.png").size == (40, 30)


def test_errors_are_reported_without_a_traceback(sam, tmp_path, capsys):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    picture = write_picture(tmp_path / "lesion.png")
    common = ["predict", "--adapter", str(adapter_dir), "--model", str(sam_dir), "--input", str(picture)]

    assert main([*common, "--output", str(tmp_path / "m.png")]) == 1
    assert "give a prompt" in capsys.readouterr().err
    assert main([*common, "--box", "1,1,50,20", "--output", str(tmp_path / "m.png")]) == 1
    assert "box (1.0, 1.0, 50.0, 20.0) lies outside the 40 x 30" in capsys.readouterr().err
    assert main([*common, "--box", "1,1,0,20,20,1", "--point", "3,3", "--output", str(tmp_path / "m.png")]) == 1
    assert "3D --box cannot be combined with --point" in capsys.readouterr().err
    assert main([*common, "--box", "1,1,0.5,20,20,1", "--output", str(tmp_path / "m.png")]) == 1
    assert "z0 and z1 of a 3D box are slice indices, got 0.5, 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--box", "1,2,3", "--output", str(tmp_path / "m.png")])
    assert "--box (x0,y0,x1,y1 or x0,y0,z0,x1,y1,z1) takes 4 or 6 comma-separated numbers" in capsys.readouterr().err

    (adapter_dir / "adapter_config.json").unlink()
    assert main([*common, "--box", "1,1,5,5", "--output", str(tmp_path / "m.png")]) == 1
    assert "missing adapter_config.json" in capsys.readouterr().err
    assert main(["convert-official", str(tmp_path / "none.pth"), "--out", str(tmp_path / "x")]) == 1
    assert "none.pth: no such checkpoint file" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()


def test_console_script_loads_adapter_and_sam_by_hub_id(sam, tmp_path):
    assert entry_points(group="console_scripts")["medsa-peft"].load() is main
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    hub = LocalHub(tmp_path / "hf_home")
    hub.publish_folder("facebook/sam-vit-base", sam_dir)
    hub.publish_folder("user/medsa-tiny", adapter_dir)
    picture = write_picture(tmp_path / "lesion.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsa_peft.cli",
            "predict",
            "--adapter",
            "user/medsa-tiny",
            "--model",
            "facebook/sam-vit-base",
            "--input",
            str(picture),
            "--box",
            "2,3,30,25",
            "--output",
            str(tmp_path / "mask.png"),
            "--dtype",
            "bfloat16",
        ],
        env={**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "mask.png").size == (40, 30)
