"""Propagating a mask from one prompted slice through a volume with a SAM 2 video model and a Med-SA adapter:
`MedSAPredictor.propagate_file` and `medsa-peft predict --propagate`."""

import nibabel as nib
import numpy as np
import pytest
import torch
from peft import get_peft_model
from transformers import Sam2Model, Sam2VideoInferenceSession, Sam2VideoModel

from helpers import randomize_adapters, tiny_sam2_model, tiny_sam2_video_model
from medsa_peft import MedSAConfig, compat
from medsa_peft.cli import main
from medsa_peft.data.preprocess import SamFrame
from medsa_peft.inference import MedSAPredictor
from medsa_peft.inference.prompts import SlicePrompt
from medsa_peft.sam_models import load_sam

SHAPE = (40, 48, 6)  # (I, J, K): six axial slices of 40 x 48 voxels
Z = 2  # the prompted slice
BOX = SlicePrompt(box=(6, 5, 30, 26))
BOX_AND_CLICK = SlicePrompt(box=(6, 5, 30, 26), points=[(18, 15)], labels=[1])


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    """A SAM 2 video checkpoint, a Med-SA adapter trained on it (random weights), a SAM 2 image checkpoint and a CT
    volume in RAS+ voxel order (file slice z is the model's slice z)."""
    root = tmp_path_factory.mktemp("propagation")
    tiny_sam2_video_model().save_pretrained(root / "sam2-video")
    tiny_sam2_model().save_pretrained(root / "sam2-image")
    peft_model = get_peft_model(Sam2VideoModel.from_pretrained(root / "sam2-video"), MedSAConfig())
    randomize_adapters(peft_model).save_pretrained(root / "adapter")
    hounsfield = np.random.default_rng(0).uniform(-300, 400, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(hounsfield, np.eye(4)), root / "ct.nii.gz")
    return {name: root / name for name in ("sam2-video", "sam2-image", "adapter")} | {"ct": root / "ct.nii.gz"}


def video_predictor(folders: dict) -> MedSAPredictor:
    return MedSAPredictor.from_pretrained(folders["adapter"], video=True, progress=False)


def test_every_slice_above_and_below_the_prompt_gets_a_mask_in_the_inputs_shape(folders):
    prediction = video_predictor(folders).propagate_file(folders["ct"], Z, BOX, modality="ct")
    assert prediction.mask.shape == SHAPE and prediction.mask.dtype == bool
    assert prediction.low_res.shape == (SHAPE[2], 16, 16)
    # each slice holds the tracker's own logits: none left at their initial zeros, none emptied as occluded
    assert all(bool((prediction.low_res[z] != 0).all()) for z in range(SHAPE[2]))
    assert bool((prediction.low_res > -1024).all())
    assert prediction.mask[:, :, :Z].any(axis=(0, 1)).all() and prediction.mask[:, :, Z + 1 :].any(axis=(0, 1)).all()
    assert np.isnan(prediction.iou_scores).all() and prediction.scores() == []


@pytest.mark.parametrize("prompt", [BOX, BOX_AND_CLICK], ids=["box", "box-and-click"])
def test_the_prompted_slice_is_segmented_as_the_image_predictor_segments_it(folders, prompt):
    """The same checkpoint and adapter loaded as SAM 2's image predictor (`Sam2Model`) give the prompted slice the
    same logits: the tracker's first frame is the image predictor's pass. (A single click differs: the tracker asks
    SAM 2 for three candidates there and keeps the best, the image predictor for its single mask.)"""
    propagated = video_predictor(folders).propagate_file(folders["ct"], Z, prompt, modality="ct")
    image_predictor = MedSAPredictor.from_pretrained(folders["adapter"], progress=False)
    assert type(image_predictor.model.get_base_model()) is Sam2Model
    prompts = [prompt if z == Z else None for z in range(SHAPE[2])]
    segmented = image_predictor.predict_file(folders["ct"], prompts, modality="ct")
    torch.testing.assert_close(propagated.low_res[Z], segmented.low_res[Z], rtol=0, atol=1e-4)
    assert np.array_equal(propagated.mask[:, :, Z], segmented.mask[:, :, Z])


def test_zero_init_adapters_propagate_as_the_plain_video_model_and_trained_ones_do_not(folders):
    plain = Sam2VideoModel.from_pretrained(folders["sam2-video"]).eval()
    frame = SamFrame.from_config(plain.config)
    expected = MedSAPredictor(plain, frame=frame, depth_adapter=False, progress=False)
    expected = expected.propagate_file(folders["ct"], Z, BOX, modality="ct").low_res
    adapted = get_peft_model(Sam2VideoModel.from_pretrained(folders["sam2-video"]), MedSAConfig())
    at_init = MedSAPredictor(adapted, progress=False).propagate_file(folders["ct"], Z, BOX, modality="ct").low_res
    assert torch.equal(at_init, expected)
    trained = MedSAPredictor(randomize_adapters(adapted), progress=False)
    changed = trained.propagate_file(folders["ct"], Z, BOX, modality="ct").low_res
    assert not torch.allclose(changed, expected, atol=1e-3)


def test_an_adapter_trained_on_the_image_predictor_propagates_on_the_video_model(folders, tmp_path):
    image_model = get_peft_model(Sam2Model.from_pretrained(folders["sam2-video"]), MedSAConfig())
    randomize_adapters(image_model).save_pretrained(tmp_path / "adapter")
    predictor = MedSAPredictor.from_pretrained(tmp_path / "adapter", video=True, progress=False)
    assert type(predictor.model.get_base_model()) is Sam2VideoModel
    assert predictor.propagate_file(folders["ct"], Z, BOX, modality="ct").mask.shape == SHAPE


def test_models_that_do_not_track_are_refused_in_one_line(folders):
    with pytest.raises(ValueError, match=r"sam2-image: a 'sam2' model, not a SAM 2 video model") as refused:
        load_sam(folders["sam2-image"], video=True)
    assert "\n" not in str(refused.value)
    image_predictor = MedSAPredictor.from_pretrained(None, folders["sam2-video"], progress=False)
    with pytest.raises(ValueError, match=r"needs a SAM 2 video model .* this predictor runs a Sam2Model$"):
        image_predictor.propagate_file(folders["ct"], Z, BOX, modality="ct")
    with pytest.raises(ValueError, match=r"segments a volume from one prompted slice \(propagate_file"):
        video_predictor(folders).predict_file(folders["ct"], BOX, modality="ct")
    depth = get_peft_model(Sam2VideoModel.from_pretrained(folders["sam2-video"]), MedSAConfig(depth_adapter=True))
    with pytest.raises(ValueError, match=r"SD-Trans depth adapter .* use predict_file$"):
        MedSAPredictor(depth, progress=False).propagate_file(folders["ct"], Z, BOX, modality="ct")


def test_cli_propagate_writes_the_propagated_mask(folders, tmp_path, capsys):
    output = tmp_path / "seg.nii.gz"
    arguments = ["predict", "--adapter", str(folders["adapter"]), "--input", str(folders["ct"]), "--modality", "ct"]
    assert main([*arguments, "--output", str(output), "--box", "6,5,30,26", "--propagate", str(Z)]) == 0
    written = nib.load(output)
    expected = video_predictor(folders).propagate_file(folders["ct"], Z, BOX, modality="ct").mask
    assert written.shape == SHAPE and np.array_equal(np.asarray(written.dataobj).astype(bool), expected)

    image_model = ["--model", str(folders["sam2-image"]), "--output", str(tmp_path / "no.nii.gz"), "--box", "6,5,30,26"]
    assert main([*arguments, *image_model, "--propagate", str(Z)]) == 1
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medsa-peft predict: error")]
    assert "sam2-image: a 'sam2' model, not a SAM 2 video model" in error and not (tmp_path / "no.nii.gz").exists()


def test_the_session_members_propagation_files_its_inputs_with_still_exist():
    session = Sam2VideoInferenceSession(dtype=torch.float32)
    missing = [part for part in compat.SAM2_VIDEO_SESSION_PARTS if not hasattr(session, part)]
    assert not missing, f"Sam2VideoInferenceSession lacks {missing}"
