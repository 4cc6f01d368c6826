"""The Med-SA predictor: files in, masks in the input's geometry out; depth chunks; prompts in the file's frame."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from peft import IA3Config, get_peft_model
from PIL import Image
from test_io import hounsfield_volume, write_dicom_series
from transformers import SamModel

from medsa_peft import MedSAConfig
from medsa_peft.data.preprocess import frame_coordinates, frame_images, sam_logits_to_original
from medsa_peft.inference import AdapterNotFoundError, Box3D, MedSAPredictor, PromptError, SlicePrompt
from medsa_peft.io import UnsupportedFileError, read_image
from medsa_peft.tuner.layer import MedSAVisionLayer
from helpers import randomize_adapters

SIZE = 64  # image_size of the tiny SAM


def medsa_model(sam, depth_adapter: bool, seed: int = 1):
    """SAM + a Med-SA adapter whose weights are random (a fresh adapter computes exactly SAM)."""
    return randomize_adapters(get_peft_model(sam, MedSAConfig(depth_adapter=depth_adapter)), seed=seed)


def saved_model(sam, tmp_path: Path, depth_adapter: bool) -> tuple[Path, Path]:
    """(SAM folder, adapter folder) on disk."""
    sam.save_pretrained(tmp_path / "sam")
    medsa_model(sam, depth_adapter).save_pretrained(tmp_path / "adapter")
    return tmp_path / "sam", tmp_path / "adapter"


def random_slices(depth=6, height=20, width=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((depth, height, width), dtype=np.float32)


def save_nifti(path: Path, volume: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), path)
    return path


@torch.no_grad()
def sam_logits(model, slices: np.ndarray, boxes: np.ndarray, depth: int | None) -> torch.Tensor:
    """Low-resolution logits (N, s, s) of one plain forward call, written out by hand."""
    framed = frame_coordinates(boxes, slices.shape[1:3], SIZE)
    extra = {} if depth is None else {"depth": depth}
    out = model(
        pixel_values=frame_images(slices, SIZE),
        input_boxes=torch.from_numpy(framed)[:, None],
        multimask_output=False,
        **extra,
    )
    return out.pred_masks[:, 0, 0]


def slice_boxes(depth: int) -> np.ndarray:
    return np.array([[2 + i, 3, 18 + i, 15 - i] for i in range(depth)], dtype=np.float32)


def test_one_chunk_covering_the_volume_equals_a_single_pass(sam):
    model = medsa_model(sam, depth_adapter=True)
    slices, boxes = random_slices(), slice_boxes(6)
    expected = sam_logits_to_original(sam_logits(model, slices, boxes, depth=6), (20, 24), SIZE)
    prompts = [SlicePrompt(box=tuple(box)) for box in boxes]
    for chunk_depth in (6, 10):
        predictor = MedSAPredictor(model, chunk_depth=chunk_depth, overlap=2, progress=False)
        torch.testing.assert_close(predictor.predict_logits(slices, prompts), expected)
    # a single slice (a picture) is a volume of depth 1, even when the overlap is larger
    expected = sam_logits_to_original(sam_logits(model, slices[:1], boxes[:1], depth=1), (20, 24), SIZE)
    torch.testing.assert_close(predictor.predict_logits(slices[:1], prompts[:1]), expected)


def test_overlapping_chunks_average_their_logits(sam):
    model = medsa_model(sam, depth_adapter=True)
    slices, boxes = random_slices(), slice_boxes(6)
    first = sam_logits(model, slices[0:4], boxes[0:4], depth=4)  # chunks [0, 4) and [2, 6)
    second = sam_logits(model, slices[2:6], boxes[2:6], depth=4)
    low_res = torch.cat([first[:2], (first[2:] + second[:2]) / 2, second[2:]])
    expected = sam_logits_to_original(low_res, (20, 24), SIZE)
    prompts = [SlicePrompt(box=tuple(box)) for box in boxes]
    for batch_size in (4, 8):  # one chunk per pass, both chunks in one pass
        predictor = MedSAPredictor(model, chunk_depth=4, overlap=2, batch_size=batch_size, progress=False)
        torch.testing.assert_close(predictor.predict_logits(slices, prompts), expected, rtol=1e-5, atol=1e-5)


def test_a_model_without_depth_adapter_runs_the_prompted_slices_alone(sam):
    model = medsa_model(sam, depth_adapter=False)  # passing `depth` to it would raise
    slices, boxes = random_slices(depth=5), slice_boxes(5)
    prompts = [SlicePrompt(box=tuple(boxes[i])) if i in (0, 2, 3) else None for i in range(5)]
    expected = sam_logits_to_original(
        sam_logits(model, slices[[0, 2, 3]], boxes[[0, 2, 3]], depth=None), (20, 24), SIZE
    )
    for batch_size in (1, 8):
        logits = MedSAPredictor(model, batch_size=batch_size, progress=False).predict_logits(slices, prompts)
        torch.testing.assert_close(logits[[0, 2, 3]], expected, rtol=1e-5, atol=1e-5)
        assert torch.all(logits[[1, 4]] == float("-inf"))


def test_nifti_volume_gives_a_mask_with_its_shape_affine_and_spacing(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    # rows run anterior, columns left, slices downwards: reoriented to RAS+ for the model, and back
    affine = np.array([[0.0, -0.8, 0.0, 40.0], [0.9, 0.0, 0.0, 12.0], [0.0, 0.0, -2.5, -7.0], [0, 0, 0, 1.0]])
    volume = np.random.default_rng(0).normal(400, 300, (20, 24, 7))
    source = save_nifti(tmp_path / "ct.nii.gz", volume, affine)

    predictor = MedSAPredictor.from_pretrained(adapter_dir, sam_dir, chunk_depth=4, overlap=1, progress=False)
    prediction = predictor.predict_file(source, Box3D(3, 4, 1, 18, 15, 4), modality="ct")
    prediction.save(tmp_path / "seg.nii.gz")
    prediction.save_overlay(tmp_path / "seg.png")

    written = nib.load(tmp_path / "seg.nii.gz")
    assert written.shape == (20, 24, 7)
    np.testing.assert_allclose(written.affine, affine)
    assert written.header.get_zooms() == pytest.approx(nib.load(source).header.get_zooms())
    mask = np.asanyarray(written.dataobj).astype(bool)
    np.testing.assert_array_equal(mask, prediction.mask)
    assert mask[:, :, 1:4].any(axis=(0, 1)).all()
    assert not mask[:, :, 0].any() and not mask[:, :, 4:].any()  # slices outside z0 <= z < z1 are empty
    assert np.asarray(Image.open(tmp_path / "seg.png")).shape[2] == 3


def test_dicom_series_gives_a_mask_in_the_series_geometry(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    write_dicom_series(tmp_path / "series", hounsfield_volume((12, 10, 4)))
    predictor = MedSAPredictor.from_pretrained(adapter_dir, sam_dir, progress=False)
    prediction = predictor.predict_file(tmp_path / "series", SlicePrompt(box=(1, 2, 9, 11)))  # modality from the tag
    prediction.save(tmp_path / "seg.nii.gz")

    written = nib.load(tmp_path / "seg.nii.gz")
    assert written.shape == (12, 10, 4)
    np.testing.assert_allclose(written.affine, read_image(tmp_path / "series").affine)
    assert written.header.get_zooms() == pytest.approx((0.7, 0.8, 2.5))


def test_png_picture_matches_a_plain_forward_pass(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    picture = np.random.default_rng(0).integers(0, 256, (30, 40, 3)).astype(np.uint8)
    Image.fromarray(picture).save(tmp_path / "lesion.png")
    predictor = MedSAPredictor.from_pretrained(adapter_dir, sam_dir, progress=False)
    prompt = SlicePrompt(points=[(10, 12), (30, 5)], labels=[1, 0])
    prediction = predictor.predict_file(tmp_path / "lesion.png", prompt)

    with torch.no_grad():
        out = predictor.model(
            pixel_values=frame_images(picture[None] / 255.0, SIZE),
            input_points=torch.from_numpy(frame_coordinates(np.array([[[10, 12], [30, 5]]]), (30, 40), SIZE))[:, None],
            input_labels=torch.tensor([[[1, 0]]]),
            multimask_output=False,
        )
    expected = sam_logits_to_original(out.pred_masks[:, 0, 0], (30, 40), SIZE)[0] > 0
    np.testing.assert_array_equal(prediction.mask, expected.numpy())

    prediction.save(tmp_path / "mask.png")
    prediction.save_overlay(tmp_path / "overlay.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "mask.png")), expected.numpy() * 255)
    assert np.asarray(Image.open(tmp_path / "overlay.png")).shape == (30, 40, 3)


def file_box(box: Box3D, to_file_order) -> Box3D:
    """A canonical 3D box in the voxel frame of a file whose voxel order is `to_file_order(canonical)`."""
    block = np.zeros((20, 24, 5), bool)
    block[int(box.y0) : int(box.y1), int(box.x0) : int(box.x1), box.z0 : box.z1] = True
    rows, columns, slices = np.nonzero(to_file_order(block))
    return Box3D(columns.min(), rows.min(), slices.min(), columns.max() + 1, rows.max() + 1, slices.max() + 1)


def assert_box_follows_the_file(predictor, canonical_path, file_path, box: Box3D, to_file_order) -> np.ndarray:
    """The mask of `box` on the file stored in another voxel order equals that of the canonical file, brought to the
    file's order, with the file slices outside the box's z range empty (they get no prompt); returns it."""
    expected = to_file_order(predictor.predict_file(canonical_path, box, modality="mri").mask)
    stored_box = file_box(box, to_file_order)
    got = predictor.predict_file(file_path, stored_box, modality="mri").mask
    outside = np.ones(expected.shape[2], bool)
    outside[stored_box.z0 : stored_box.z1] = False
    expected[:, :, outside] = False
    np.testing.assert_array_equal(got, expected)
    assert not got[:, :, outside].any() and got.any()
    return got


def test_prompts_are_read_in_the_file_voxel_frame(sam, tmp_path):
    """The same anatomy stored in two voxel orders, prompted at the same anatomical place, gives the same mask."""
    affine = np.array([[0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # rows anterior, columns left

    def to_file_order(canonical):
        return canonical[::-1].transpose(1, 0, 2)

    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=True), chunk_depth=3, overlap=1, progress=False)
    canonical = np.random.default_rng(0).normal(size=(20, 24, 5))  # RAS+ voxel order
    canonical_path = save_nifti(tmp_path / "canonical.nii.gz", canonical, np.eye(4))
    file_path = save_nifti(tmp_path / "stored.nii.gz", to_file_order(canonical), affine)

    box = Box3D(3, 4, 1, 17, 12, 4)
    got = assert_box_follows_the_file(predictor, canonical_path, file_path, box, to_file_order)
    assert got[:, :, 1:4].any() and not got[:, :, [0, 4]].any()

    point = np.zeros((20, 24, 1), bool)
    point[6, 9] = True  # the canonical pixel at row 6, column 9
    rows, columns = np.nonzero(to_file_order(point)[:, :, 0])
    expected = predictor.predict_file(canonical_path, SlicePrompt(points=[(9, 6)]), modality="mri").mask
    got = predictor.predict_file(file_path, SlicePrompt(points=[(columns[0], rows[0])]), modality="mri").mask
    np.testing.assert_array_equal(got, to_file_order(expected))


def test_a_3d_box_follows_a_volume_stored_in_sagittal_slices(sam, tmp_path):
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])  # axes: S, R, A

    def to_file_order(canonical):
        return canonical.transpose(2, 0, 1)

    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=True), chunk_depth=3, overlap=1, progress=False)
    canonical = np.random.default_rng(1).normal(size=(20, 24, 5))
    canonical_path = save_nifti(tmp_path / "canonical.nii.gz", canonical, np.eye(4))
    file_path = save_nifti(tmp_path / "sagittal.nii.gz", to_file_order(canonical), affine)
    box = Box3D(3, 4, 1, 17, 12, 4)
    assert_box_follows_the_file(predictor, canonical_path, file_path, box, to_file_order)


@pytest.mark.parametrize("thin_axis", [0, 1], ids=["sagittal (1, H, W)", "coronal (H, 1, W)"])
def test_a_single_non_axial_slice_is_segmented_as_the_picture_it_stores(sam, tmp_path, thin_axis):
    """A NIfTI of one sagittal or coronal slice is the 2D picture of its two other axes: its mask is the one the same
    picture saved as PNG gets, for prompts in that picture's pixels, in the NIfTI's own shape and geometry."""
    picture = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "slice.png")
    affine = np.array([[0.8, 0, 0, 10.0], [0, 0.9, 0, -4.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.expand_dims(picture, thin_axis), affine), tmp_path / "slice.nii.gz")
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)

    prompts = [
        SlicePrompt(box=(3, 2, 25, 14), points=[(20, 5)], labels=[0]),
        SlicePrompt(points=[(7, 15), (29, 19)], labels=[1, 0]),  # x up to 29 and y up to 19: the picture's pixels
        Box3D(3, 2, 0, 25, 14, 1),
        [SlicePrompt(box=(10, 0, 30, 20))],
    ]
    for prompt in prompts:
        expected = predictor.predict_file(tmp_path / "slice.png", prompt, modality="photo")
        prediction = predictor.predict_file(tmp_path / "slice.nii.gz", prompt, modality="photo")
        assert expected.mask.any()
        np.testing.assert_array_equal(prediction.mask, np.expand_dims(expected.mask, thin_axis))
        np.testing.assert_array_equal(prediction.overlay(), expected.overlay())  # shown as stored

    prediction.save(tmp_path / "mask.nii.gz")
    written = nib.load(tmp_path / "mask.nii.gz")
    assert written.shape == np.expand_dims(picture, thin_axis).shape
    np.testing.assert_allclose(written.affine, affine)
    assert written.header.get_zooms() == pytest.approx((0.8, 0.9, 2.5))
    with pytest.raises(PromptError, match=r"point \(19, 29\) lies outside the 30 x 20 \(x, y\) slice"):
        predictor.predict_file(tmp_path / "slice.nii.gz", SlicePrompt(points=[(19, 29)]), modality="photo")
    with pytest.raises(PromptError, match=r"lies outside the 30 x 20 x 1 \(x, y, z\) volume"):
        predictor.predict_file(tmp_path / "slice.nii.gz", Box3D(3, 2, 0, 25, 14, 2), modality="photo")


def test_bad_input_fails_with_a_clear_error(sam, tmp_path):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    predictor = MedSAPredictor.from_pretrained(adapter_dir, sam_dir, progress=False)
    source = save_nifti(tmp_path / "ct.nii.gz", np.zeros((20, 24, 5)), np.eye(4))

    with pytest.raises(PromptError, match="3 slice prompts for 5 slices"):
        predictor.predict_file(source, [SlicePrompt(box=(1, 1, 5, 5))] * 3, modality="ct")
    with pytest.raises(PromptError, match=r"ct\.nii\.gz.*box \(1\.0, 1\.0, 30\.0, 10\.0\) lies outside the 24 x 20"):
        predictor.predict_file(source, SlicePrompt(box=(1, 1, 30, 10)), modality="ct")
    with pytest.raises(PromptError, match="lies outside the 24 x 20 x 5"):
        predictor.predict_file(source, Box3D(1, 1, 0, 10, 10, 6), modality="ct")
    with pytest.raises(PromptError, match=r"point \(3, 20\) lies outside"):
        predictor.predict_file(source, SlicePrompt(points=[(3, 20)]), modality="ct")
    with pytest.raises(PromptError, match="mix prompt forms"):
        predictor.predict_file(
            source, [SlicePrompt(box=(1, 1, 5, 5)), SlicePrompt(points=[(2, 2)]), None, None, None], modality="ct"
        )
    with pytest.raises(ValueError, match="ct.nii.gz: say which intensity normalisation"):
        predictor.predict_file(source, SlicePrompt(box=(1, 1, 5, 5)))
    sagittal = save_nifti(
        tmp_path / "sagittal.nii.gz", np.zeros((20, 24, 5)), np.diag([1.0, 1.0, 1.0, 1.0])[[2, 0, 1, 3]]
    )
    with pytest.raises(PromptError, match="not axial"):
        predictor.predict_file(sagittal, SlicePrompt(points=[(2, 2)]), modality="ct")

    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(UnsupportedFileError, match=r"notes\.txt: unsupported file type '\.txt'"):
        predictor.predict_file(tmp_path / "notes.txt", SlicePrompt(box=(1, 1, 5, 5)))

    (adapter_dir / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterNotFoundError, match="missing adapter_model.safetensors"):
        MedSAPredictor.from_pretrained(adapter_dir, sam_dir)
    ia3 = get_peft_model(SamModel.from_pretrained(sam_dir), IA3Config(target_modules=["qkv"], feedforward_modules=[]))
    ia3.save_pretrained(tmp_path / "ia3")
    with pytest.raises(ValueError, match="a IA3 adapter; the predictor serves MEDSA or LORA adapters"):
        MedSAPredictor.from_pretrained(tmp_path / "ia3", sam_dir)


def test_bfloat16_and_compile_switches(sam, tmp_path, monkeypatch):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=True)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function: compiled.append(function) or function)
    predictor = MedSAPredictor.from_pretrained(
        adapter_dir, sam_dir, dtype="bfloat16", compile=True, fused_attention=True, progress=False
    )
    sam_model = predictor.model.base_model.model
    encoder_layers = [module for module in predictor.model.modules() if isinstance(module, MedSAVisionLayer)]
    # one graph per image-encoder layer, the prompt encoder and the mask decoder (its Med-SA blocks inside) whole
    assert [function.__self__ for function in compiled] == encoder_layers + [
        sam_model.prompt_encoder,
        sam_model.mask_decoder,
    ]
    assert all(layer.fused_attention for layer in encoder_layers)
    assert {param.dtype for param in predictor.model.parameters()} == {torch.bfloat16}
    logits = predictor.predict_logits(random_slices(depth=3), [SlicePrompt(box=(2, 3, 18, 15))] * 3)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
