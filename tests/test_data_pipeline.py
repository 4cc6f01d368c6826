"""From `datasets` examples to SamModel batches: intensities, SAM framing, prompts, samples, evaluation cases."""

import datasets
import nibabel as nib
import numpy as np
import pytest
import torch

from datasets_scripts._common import image_features, volume_features
from datasets_scripts.mni152 import MNI152
from medsa_peft.data import (
    PromptSpec,
    SamFrame,
    SamTrainingSamples,
    collate_sam,
    covering_windows,
    decode_example,
    decoder_targets,
    frame_coordinates,
    frame_images,
    frame_masks,
    normalize_intensity,
    resized_shape,
    sam_logits_to_original,
    sam_pixel_values,
)
from medsa_peft.evaluation import evaluation_cases
from medsa_peft.data.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from medsa_peft.data.samples import nearest_present_slices

FRAME = SamFrame(image_size=64, mask_size=32)  # the frame of the tiny test SAM
FINE_FRAME = SamFrame(image_size=128, mask_size=128)  # upsamples every test image: no object is lost
CT_CLASSES = {"organ": (1,), "vessels": (2, 3), "absent": (9,)}


def slice_coded_ct(shape=(20, 30, 12)) -> np.ndarray:
    """CT volume whose slice z is the constant -175 + 25 z HU, so a framed slice tells its index."""
    return np.broadcast_to(-175.0 + 25.0 * np.arange(shape[2]), shape).astype(np.float32).copy()


def ct_labels(shape=(20, 30, 12)) -> np.ndarray:
    """Organ (1) in slices 9-10 only; vessels (2 and 3) in slices 2-6."""
    label = np.zeros(shape, np.uint8)
    label[4:14, 5:20, 9:11] = 1
    label[2:8, 10:16, 2:5] = 2
    label[2:8, 18:24, 4:7] = 3
    return label


def write_volume_split(folder, cases, affine=None) -> datasets.Dataset:
    """A split of 3D examples (the data contract's features) from (id, image, label) arrays saved as NIfTI."""
    affine = np.diag([0.8, 0.7, 2.5, 1.0]) if affine is None else affine
    columns = {"id": [], "image": [], "label": [], "spacing": []}
    for case_id, image, label in cases:
        for kind, array in (("image", image), ("label", label)):
            path = folder / f"{case_id}_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(array, affine), path)
            columns[kind].append(str(path))
        columns["id"].append(case_id)
        columns["spacing"].append([float(z) for z in nib.affines.voxel_sizes(affine)])
    return datasets.Dataset.from_dict(columns, features=volume_features())


@pytest.fixture
def ct_split(tmp_path):
    cases = [(case_id, slice_coded_ct(), ct_labels()) for case_id in ("case0", "case1")]
    return write_volume_split(tmp_path, cases)


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """The embedded default, both configs: {"3d": builder, "2d": builder}, prepared offline."""
    builders = {}
    for name in ("3d", "2d"):
        builder = MNI152(config_name=name, cache_dir=str(tmp_path_factory.mktemp(f"mni_{name}")))
        builder.download_and_prepare()
        builders[name] = builder
    return builders


def framed(sample: dict, frame: SamFrame) -> torch.Tensor:
    """A sample's pixel values as SamModel gets them: (D, 3, S, S) for a volume chunk, (3, S, S) for a picture."""
    batch = collate_sam([sample])
    pixel_values = sam_pixel_values(batch["images"], batch["image_sizes"], frame.image_size)
    return pixel_values if sample["images"].ndim == 4 else pixel_values[0]


def framed_slice_index(pixel_values: torch.Tensor) -> np.ndarray:
    """Slice indices of framed `slice_coded_ct` slices (D, 3, S, S), read back from the top-left pixel."""
    window = (pixel_values[:, 0, 0, 0] * SAM_PIXEL_STD[0] + SAM_PIXEL_MEAN[0]).numpy()  # in [0, 1]
    hounsfield = window * 425.0 - 175.0
    return np.rint((hounsfield + 175.0) / 25.0).astype(int)


# ----------------------------------------------------------------------------------------------------------
# Intensities


def test_ct_is_windowed_to_minus_175_250_hu():
    hounsfield = np.array([-1000.0, -175.0, 37.5, 250.0, 3000.0])
    np.testing.assert_allclose(normalize_intensity(hounsfield, "ct"), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_mri_percentiles_of_the_foreground_map_to_0_and_1():
    rng = np.random.default_rng(0)
    volume = np.zeros((40, 40, 10), np.float32)
    volume[10:30, 10:30] = rng.uniform(100.0, 1100.0, (20, 20, 10))
    volume[15, 15, 5] = 1e6  # an outlier is clipped, not allowed to squash the range
    scaled = normalize_intensity(volume, "mri")
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.all(scaled[volume == 0] == 0)  # background stays 0
    foreground = scaled[10:30, 10:30]
    assert np.mean(foreground <= 0.0) == pytest.approx(0.005, abs=0.002)
    assert np.mean(foreground >= 1.0) == pytest.approx(0.005, abs=0.002)
    assert np.median(foreground) == pytest.approx(0.5, abs=0.05)


def test_mri_with_a_constant_foreground_is_a_binary_image():
    image = np.zeros((4, 4), np.float32)
    image[1:3, 1:3] = 7.0
    np.testing.assert_array_equal(normalize_intensity(image, "mri"), image / 7.0)
    np.testing.assert_array_equal(normalize_intensity(np.zeros((3, 3)), "mri"), np.zeros((3, 3)))


def test_photos_are_8_bit_scaled_to_unit_range():
    photo = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(normalize_intensity(photo, "fundus"), [[0.0, 0.2, 1.0]])
    with pytest.raises(ValueError, match="uint8"):
        normalize_intensity(photo.astype(np.uint16), "dermoscopy")
    with pytest.raises(ValueError, match="unknown modality 'pet'"):
        normalize_intensity(photo, "pet")


# ----------------------------------------------------------------------------------------------------------
# SAM frame


def test_sam_frame_of_a_sam_config(sam_config):
    assert SamFrame.from_config(sam_config) == FRAME
    assert resized_shape((512, 512), 1024) == (1024, 1024)
    assert resized_shape((99, 117), 64) == (54, 64)  # 99 * 64 / 117 = 54.15


def test_slices_are_resized_on_the_long_side_normalised_then_zero_padded():
    grey = np.full((2, 30, 60), 0.5, np.float32)
    framed = frame_images(grey, 64)
    assert framed.shape == (2, 3, 64, 64) and framed.dtype == torch.float32
    expected = [(0.5 - mean) / std for mean, std in zip(SAM_PIXEL_MEAN, SAM_PIXEL_STD)]
    np.testing.assert_allclose(framed[:, :, :32, :].mean(dim=(0, 2, 3)), expected, rtol=1e-5)
    assert torch.all(framed[:, :, 32:, :] == 0)  # the bottom padding

    colour = np.zeros((1, 40, 20, 3), np.float32)
    colour[..., 0] = 1.0  # red
    framed = frame_images(colour, 64)
    assert torch.all(framed[:, :, :, 32:] == 0)  # the right padding
    red, green = framed[0, 0, :, :32], framed[0, 1, :, :32]
    assert torch.allclose(red, torch.tensor((1.0 - SAM_PIXEL_MEAN[0]) / SAM_PIXEL_STD[0]))
    assert torch.allclose(green, torch.tensor(-SAM_PIXEL_MEAN[1] / SAM_PIXEL_STD[1]))


def ellipse(height=50, width=80) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    return ((rows - 25) / 15) ** 2 + ((cols - 40) / 30) ** 2 <= 1


@pytest.mark.parametrize("frame", [SamFrame(1024, 256), FINE_FRAME])
def test_a_mask_framed_and_mapped_back_is_unchanged_when_the_frame_upsamples(frame):
    mask = ellipse()
    targets = decoder_targets(mask[None], frame)
    assert targets.shape == (1, frame.mask_size, frame.mask_size) and set(targets.unique().tolist()) == {0.0, 1.0}
    logits = targets * 20.0 - 10.0
    back = sam_logits_to_original(logits, mask.shape, frame.image_size)
    assert back.shape == (1, 50, 80)
    np.testing.assert_array_equal(back[0].numpy() > 0, mask)


def test_a_mask_through_the_tiny_frame_comes_back_up_to_resize_tolerance():
    mask = torch.from_numpy(ellipse())
    back = sam_logits_to_original(decoder_targets(mask[None], FRAME) * 20.0 - 10.0, (50, 80), 64)[0] > 0
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.9


def test_frame_masks_are_nearest_neighbour_and_padded():
    mask = np.zeros((1, 10, 20), bool)
    mask[0, :, :10] = True  # left half
    framed = frame_masks(mask, 40)
    assert framed.dtype == torch.bool
    assert framed[0, :20, :20].all() and not framed[0, :20, 20:].any() and not framed[0, 20:].any()


def test_coordinates_scale_by_image_size_over_the_long_side():
    points = np.array([[100.0, 50.0], [10.0, 20.0]])  # (x, y) in a 50 x 100 image
    np.testing.assert_allclose(frame_coordinates(points, (50, 100), 64), [[64.0, 32.0], [6.4, 12.8]])
    box = np.array([10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(frame_coordinates(box, (50, 100), 64), [6.4, 12.8, 19.2, 25.6])


def test_a_framed_box_bounds_the_framed_mask():
    mask = np.zeros((30, 45), bool)
    mask[6:18, 9:30] = True
    (box,) = PromptSpec.parse("box").sam_prompts(mask[None], 90, np.random.default_rng(0))["input_boxes"][0]
    rows, cols = np.nonzero(frame_masks(mask[None], 90)[0].numpy())
    np.testing.assert_allclose(box.numpy(), [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


# ----------------------------------------------------------------------------------------------------------
# Prompt recipes


@pytest.mark.parametrize("text", ["box", "box:0.75", "points:1", "points:3", "points:1+1"])
def test_prompt_specs_parse_and_print_back(text):
    assert str(PromptSpec.parse(text)) == text


def test_prompt_spec_fields_and_bad_strings():
    assert PromptSpec.parse("box:0.5") == PromptSpec("box", box_iou=0.5)
    assert PromptSpec.parse("points:3") == PromptSpec("points", num_positive=3, num_negative=0)
    assert PromptSpec.parse("points:1+2") == PromptSpec("points", num_positive=1, num_negative=2)
    for bad in ["boxes", "box:1.5", "points", "points:0", "points:1-1", "box:0"]:
        with pytest.raises(ValueError):
            PromptSpec.parse(bad)


def test_point_prompts_fall_on_the_object_and_around_it():
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:20, 10:20] = True
    prompt = PromptSpec.parse("points:3+2").sam_prompts(mask, 80, np.random.default_rng(0))
    assert prompt["input_points"].shape == (1, 1, 5, 2) and prompt["input_labels"].shape == (1, 1, 5)
    assert prompt["input_labels"].dtype == torch.int64
    np.testing.assert_array_equal(prompt["input_labels"][0, 0], [1, 1, 1, 0, 0])
    framed = frame_masks(mask, 80)[0]
    inside = [bool(framed[int(y), int(x)]) for x, y in prompt["input_points"][0, 0].tolist()]
    assert inside == [True, True, True, False, False]


# ----------------------------------------------------------------------------------------------------------
# Decoding examples


def test_volumes_are_read_in_canonical_order_with_the_axial_axis_last(tmp_path):
    image, label = slice_coded_ct(), ct_labels()
    # stored with the axial axis first and the left-right axis flipped
    stored_affine = np.array([[0, 0, -0.8, 0], [0, 0.7, 0, 0], [2.5, 0, 0, 0], [0, 0, 0, 1]], float)

    def turned(array):
        return np.transpose(array, (2, 1, 0))[..., ::-1].copy()

    stored = write_volume_split(tmp_path, [("turned", turned(image), turned(label))], affine=stored_affine)
    decoded = decode_example(stored[0], "ct")
    np.testing.assert_array_equal(decoded.label, label)
    np.testing.assert_allclose(decoded.image[..., 0], normalize_intensity(image, "ct"))
    assert decoded.spacing == pytest.approx((0.8, 0.7, 2.5))


def test_decoding_errors_name_the_example(tmp_path):
    non_integer = write_volume_split(tmp_path, [("fractional", slice_coded_ct(), ct_labels() * 0.5)])
    with pytest.raises(ValueError, match="'fractional'.*non-integer"):
        decode_example(non_integer[0], "ct")
    mismatched = write_volume_split(tmp_path, [("mismatched", slice_coded_ct(), ct_labels()[:, :, :5])])
    with pytest.raises(ValueError, match="'mismatched'.*differ in size"):
        decode_example(mismatched[0], "ct")


# ----------------------------------------------------------------------------------------------------------
# Training samples


def test_slices_without_the_object_take_the_prompt_of_the_nearest_slice_with_it():
    present = np.array([False, True, False, False, True, False, True])
    # slice 2 is nearer to 1, slice 3 to 4, slice 5 ties between 4 and 6 and takes the lower
    np.testing.assert_array_equal(nearest_present_slices(present), [1, 1, 1, 4, 4, 4, 6])


@pytest.mark.parametrize(
    "first, stop, size, total, overlap, starts",
    [
        (3, 8, 4, 10, 0, [3, 6]),
        (0, 10, 4, 10, 0, [0, 4, 6]),  # the last window moves back inside the volume
        (5, 6, 4, 6, 0, [2]),
        (2, 9, 10, 10, 0, [0]),
        (0, 10, 4, 10, 1, [0, 3, 6]),  # neighbours share a slice; 6..9 already reaches the end
        (0, 11, 4, 11, 1, [0, 3, 6, 7]),
        (3, 5, 4, 10, 0, [3]),  # an extent shorter than a window
        (8, 10, 4, 10, 0, [6]),
        (0, 3, 3, 3, 2, [0]),  # one window holds the whole volume
    ],
)
def test_depth_windows_cover_an_extent_inside_the_volume(first, stop, size, total, overlap, starts):
    windows = covering_windows(first, stop, size, total, overlap)
    assert [window.start for window in windows] == starts
    assert all(len(window) == size and 0 <= window.start and window.stop <= total for window in windows)
    assert set(range(first, stop)) <= {index for window in windows for index in window}


def test_3d_samples_are_depth_chunks_that_hold_the_class(ct_split):
    torch.manual_seed(0)
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FINE_FRAME, PromptSpec.parse("box"), volume_depth=4)
    assert samples.items == [(0, "organ"), (0, "vessels"), (1, "organ"), (1, "vessels")]  # "absent" never
    class_slices = {"organ": {9, 10}, "vessels": {2, 3, 4, 5, 6}}
    starts = {"organ": set(), "vessels": set()}
    for _ in range(5):
        for index, (_, class_name) in enumerate(samples.items):
            sample = samples[index]
            assert sample["images"].shape == (4, 1, 20, 30) and sample["images"].dtype == torch.float32
            assert framed(sample, FINE_FRAME).shape == (4, 3, 128, 128)
            assert sample["input_boxes"].shape == (4, 1, 4)
            assert sample["labels"].shape == (4, 128, 128)
            chunk = framed_slice_index(framed(sample, FINE_FRAME))
            np.testing.assert_array_equal(chunk, np.arange(chunk[0], chunk[0] + 4))  # consecutive slices
            starts[class_name].add(int(chunk[0]))
            holds = [bool(sample["labels"][j].any()) for j in range(4)]
            assert holds == [int(z) in class_slices[class_name] for z in chunk]
            assert any(holds)
    assert starts["organ"] == {7, 8}  # centred on slice 9 or 10, shifted to stay inside the 12 slices
    assert len(starts["vessels"]) >= 3  # the chunk position is random


def test_3d_slices_without_the_class_repeat_the_box_of_the_nearest_slice_with_it(ct_split):
    torch.manual_seed(1)
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FINE_FRAME, PromptSpec.parse("box"), volume_depth=6)
    sample = samples[samples.items.index((0, "organ"))]  # slices 6-11, organ in 9-10
    np.testing.assert_array_equal(framed_slice_index(framed(sample, FINE_FRAME)), np.arange(6, 12))
    organ_box = frame_coordinates([5.0, 4.0, 20.0, 14.0], (20, 30), 128)  # columns 5-19, rows 4-13
    for box in sample["input_boxes"][:, 0]:
        np.testing.assert_allclose(box.numpy(), organ_box, rtol=1e-6)
    assert [bool(labels.any()) for labels in sample["labels"]] == [False, False, False, True, True, False]


def test_samples_follow_torch_manual_seed(ct_split):
    def draw():
        samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("points:1+1"), volume_depth=3)
        return [samples[i % len(samples)] for i in range(6)]

    torch.manual_seed(3)
    first = draw()
    torch.manual_seed(3)
    for a, b in zip(first, draw()):
        for name in a:
            assert torch.equal(a[name], b[name])


def test_examples_are_decoded_once_into_the_store_and_samples_read_only_their_chunk(
    ct_split, tmp_path, monkeypatch
):
    import medsa_peft.data.store as store_module

    decoded_ids = []

    def counting_decode(example):
        decoded_ids.append(example["id"])
        return decode_image_of(example)

    decode_image_of = store_module.decode_image
    monkeypatch.setattr(store_module, "decode_image", counting_decode)
    store = tmp_path / "store"
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=2,
                                 store_dir=store)
    assert decoded_ids == ["case0", "case1"]
    volume = np.load(samples.examples[0].folder / "image.npy", mmap_mode="r")
    assert volume.dtype == np.int16 and volume.shape == (12, 20, 30)  # whole HU values, slices first
    for _ in range(3):
        for index in range(len(samples)):
            samples[index]
    again = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=2,
                               store_dir=store)
    assert decoded_ids == ["case0", "case1"]  # samples and a second data set over the split decode nothing
    assert again.items == samples.items

    changed = ct_labels()
    changed[4:14, 5:20, 9:11] = 0  # the organ removed from case1's label file, rewritten in place
    nib.save(nib.Nifti1Image(changed, np.diag([0.8, 0.7, 2.5, 1.0])), ct_split[1]["label"].get_filename())
    renewed = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=2,
                                 store_dir=store)
    assert decoded_ids == ["case0", "case1", "case1"]
    assert renewed.items == [(0, "organ"), (0, "vessels"), (1, "vessels")]


def test_sample_settings_that_cannot_work_are_refused(ct_split, mni):
    with pytest.raises(ValueError, match="'case0' has 12 slices, fewer than volume_depth=13"):
        SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=13)
    images = mni["2d"].as_dataset(split="train")
    with pytest.raises(ValueError, match="volume_depth"):
        SamTrainingSamples(images, mni["2d"].config.classes, "mri", FRAME, PromptSpec.parse("box"), volume_depth=2)
    with pytest.raises(ValueError, match="no example"):
        SamTrainingSamples(ct_split, {"absent": (9,)}, "ct", FRAME, PromptSpec.parse("box"))


def test_2d_samples_of_the_embedded_default(mni):
    builder = mni["2d"]
    torch.manual_seed(0)
    train = builder.as_dataset(split="train")
    samples = SamTrainingSamples(
        train, builder.config.classes, builder.config.modality, FINE_FRAME, PromptSpec.parse("box:0.75")
    )
    assert len(samples) == sum((np.asarray(label) == 2).any() for label in train["label"])  # slices with white matter
    for index in range(0, len(samples), 7):
        sample = samples[index]
        assert sample["images"].shape == (1, 99, 117) and sample["images"].dtype == torch.float32
        assert framed(sample, FINE_FRAME).shape == (3, 128, 128)
        assert sample["input_boxes"].shape == (1, 4)
        assert sample["labels"].shape == (128, 128) and sample["labels"].any()


def test_2d_colour_samples_keep_their_colours(tmp_path):
    photo = np.zeros((24, 32, 3), np.uint8)
    photo[..., 2] = 255  # blue
    lesion = np.zeros((24, 32), np.uint8)
    lesion[5:15, 8:20] = 255
    split = datasets.Dataset.from_dict(
        {"id": ["isic0"], "image": [photo], "label": [lesion], "spacing": [[1.0, 1.0]]}, features=image_features()
    )
    samples = SamTrainingSamples(split, {"lesion": (255,)}, "dermoscopy", FRAME, PromptSpec.parse("points:1"))
    sample = samples[0]
    assert sample["images"].shape == (3, 24, 32) and sample["images"].dtype == torch.uint8  # 8 bits, as stored
    pixel_values = framed(sample, FRAME)
    red, blue = pixel_values[0, 0, 0], pixel_values[2, 0, 0]
    assert red == pytest.approx(-SAM_PIXEL_MEAN[0] / SAM_PIXEL_STD[0], rel=1e-5)
    assert blue == pytest.approx((1 - SAM_PIXEL_MEAN[2]) / SAM_PIXEL_STD[2], rel=1e-5)
    assert sample["input_points"].shape == (1, 1, 2) and sample["input_labels"].tolist() == [[1]]


# ----------------------------------------------------------------------------------------------------------
# Batches for SamModel


def test_3d_batches_go_volume_by_volume_into_sam(ct_split, sam):
    torch.manual_seed(0)
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("points:1+1"), volume_depth=3)
    chunks = [samples[0], samples[3]]
    batch = collate_sam(chunks)
    assert set(batch) == {"images", "image_sizes", "input_points", "input_labels", "labels", "depth"}
    assert batch["depth"] == 3
    assert batch["images"].shape == (6, 1, 20, 30) and batch["image_sizes"] == [(20, 30)] * 6
    assert batch["input_points"].shape == (6, 1, 2, 2) and batch["input_labels"].shape == (6, 1, 2)
    assert batch["labels"].shape == (6, 32, 32)
    for name in ("images", "input_points", "input_labels", "labels"):
        assert torch.equal(batch[name][:3], chunks[0][name]) and torch.equal(batch[name][3:], chunks[1][name])
    pixel_values = sam_pixel_values(batch["images"], batch["image_sizes"], FRAME.image_size)
    assert torch.equal(pixel_values, torch.cat([framed(chunk, FRAME) for chunk in chunks]))
    inputs = {name: value for name, value in batch.items() if name.startswith("input_")}
    with torch.no_grad():
        outputs = sam(pixel_values=pixel_values, **inputs, multimask_output=False)
    assert outputs.pred_masks.shape == (6, 1, 1, 32, 32)
    assert outputs.pred_masks[:, 0, 0].shape == batch["labels"].shape


def test_2d_batches_go_into_sam(mni, sam):
    builder = mni["2d"]
    split = builder.as_dataset(split="test")
    samples = SamTrainingSamples(split, builder.config.classes, builder.config.modality, FRAME, PromptSpec.parse("box"))
    batch = collate_sam([samples[0], samples[1], samples[2]])
    assert set(batch) == {"images", "image_sizes", "input_boxes", "labels"}
    assert batch["images"].shape == (3, 1, 54, 64)  # 99 x 117 slices stored shrunk to the 64 px frame
    assert batch["input_boxes"].shape == (3, 1, 4)
    pixel_values = sam_pixel_values(batch["images"], batch["image_sizes"], FRAME.image_size)
    assert pixel_values.shape == (3, 3, 64, 64)
    with torch.no_grad():
        outputs = sam(pixel_values=pixel_values, input_boxes=batch["input_boxes"], multimask_output=False)
    assert outputs.pred_masks[:, 0, 0].shape == batch["labels"].shape == (3, 32, 32)


def test_batches_mixing_prompt_kinds_or_dimensions_are_refused(ct_split, mni):
    box_samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=2)
    point_samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("points:1"), volume_depth=2)
    with pytest.raises(ValueError, match="one prompt kind"):
        collate_sam([box_samples[0], point_samples[0]])
    deeper = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=3)
    with pytest.raises(ValueError, match="depth"):
        collate_sam([box_samples[0], deeper[0]])
    builder = mni["2d"]
    images = builder.as_dataset(split="test")
    flat = SamTrainingSamples(images, builder.config.classes, "mri", FRAME, PromptSpec.parse("box"))
    with pytest.raises(ValueError, match="depth"):
        collate_sam([box_samples[0], flat[0]])


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def prompted_slices(case) -> list[int]:
    return [index for index, prompt in enumerate(case.prompts) if prompt is not None]


def test_evaluation_cases_of_a_volume(ct_split):
    cases = list(evaluation_cases(ct_split, CT_CLASSES, "ct", PromptSpec.parse("box:0.75"), seed=0))
    assert [(case.id, case.class_name) for case in cases] == [
        ("case0", "organ"), ("case0", "vessels"), ("case1", "organ"), ("case1", "vessels")
    ]
    organ, vessels = cases[:2]
    assert organ.slices is vessels.slices  # decoded once per example
    assert organ.slices.shape == (12, 20, 30) and 0 <= organ.slices.min() and organ.slices.max() <= 1
    assert prompted_slices(organ) == [9, 10] and prompted_slices(vessels) == [2, 3, 4, 5, 6]
    assert all(organ.prompts[index].box is not None for index in prompted_slices(organ))
    np.testing.assert_array_equal(organ.truth, ct_labels() == 1)
    np.testing.assert_array_equal(vessels.truth, np.isin(ct_labels(), (2, 3)))
    assert organ.spacing == pytest.approx((0.8, 0.7, 2.5))
    again = list(evaluation_cases(ct_split, CT_CLASSES, "ct", PromptSpec.parse("box:0.75"), seed=0))
    assert [case.prompts for case in cases] == [case.prompts for case in again]


def test_evaluation_cases_of_the_embedded_default(mni):
    builder = mni["3d"]
    test_split = builder.as_dataset(split="test")
    cases = list(evaluation_cases(test_split, builder.config.classes, "mri", PromptSpec.parse("points:1")))
    assert len(cases) == len(test_split)  # one case per slab: every slab holds white matter, the class
    for case in cases:
        assert case.slices.shape == (8, 99, 117) and case.truth.shape == (99, 117, 8)
        assert prompted_slices(case) == np.flatnonzero(case.truth.any(axis=(0, 1))).tolist()
        assert all(len(case.prompts[index].points) == 1 for index in prompted_slices(case))
        assert case.spacing == (2.0, 2.0, 2.0)
    images = mni["2d"].as_dataset(split="test")
    first = next(evaluation_cases(images, builder.config.classes, "mri", PromptSpec.parse("box")))
    assert first.slices.shape == (1, 99, 117) and first.truth.shape == (99, 117, 1)
    assert prompted_slices(first) == [0] and first.spacing == (2.0, 2.0, 1.0)


def test_samples_load_in_dataloader_workers(ct_split):
    torch.manual_seed(0)
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), volume_depth=2)
    loader = torch.utils.data.DataLoader(samples, batch_size=2, num_workers=2, collate_fn=collate_sam)
    batches = list(loader)
    assert [batch["images"].shape[0] for batch in batches] == [4, 4]
    for batch in batches:
        assert batch["depth"] == 2
        per_chunk = batch["labels"].view(2, -1)  # the 2 slices of a chunk are consecutive rows
        assert per_chunk.any(dim=1).all()  # every chunk holds its class


# ----------------------------------------------------------------------------------------------------------
# Store and device framing


def test_class_voxels_are_the_flat_indices_of_the_class_in_canonical_order(ct_split, tmp_path):
    from medsa_peft.data.store import ClassVoxels

    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)
    for values in ((1,), (2, 3)):
        voxels = ClassVoxels(samples.examples[0], values)
        expected = np.flatnonzero(np.isin(ct_labels(), values))
        assert len(voxels) == len(expected)
        assert [voxels[rank] for rank in range(len(voxels))] == expected.tolist()
    with pytest.raises(IndexError):
        voxels[len(voxels)]


def test_the_store_is_written_atomically_and_an_interrupted_example_is_prepared_again(ct_split, tmp_path):
    samples = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)
    folder = samples.examples[1].folder
    assert not list(tmp_path.rglob(".*"))  # no temporary file left behind
    (folder / "meta.json").unlink()  # as if killed before its last file
    (folder / "image.npy").write_bytes(b"half")
    again = SamTrainingSamples(ct_split, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)
    assert np.load(folder / "image.npy").shape == (12, 20, 30) and again.items == samples.items


def test_bad_examples_name_their_file(tmp_path):
    mismatched = write_volume_split(tmp_path, [("mismatched", slice_coded_ct(), ct_labels()[:, :, :5])])
    with pytest.raises(ValueError, match=r"mismatched_image\.nii\.gz.*differ in size"):
        SamTrainingSamples(mismatched, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)
    missing = write_volume_split(tmp_path, [("gone", slice_coded_ct(), ct_labels())])
    (tmp_path / "gone_label.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"'gone'.*gone_label\.nii\.gz"):
        SamTrainingSamples(missing, CT_CLASSES, "ct", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)
    photos = datasets.Dataset.from_dict(
        {"id": ["deep"], "image": [np.zeros((8, 8), np.uint16)], "label": [np.zeros((8, 8), np.uint8)],
         "spacing": [[1.0, 1.0]]},
        features=image_features(),
    )
    with pytest.raises(ValueError, match="'deep'.*must be 8-bit"):
        SamTrainingSamples(photos, {"lesion": (255,)}, "dermoscopy", FRAME, PromptSpec.parse("box"), store_dir=tmp_path)


def test_batches_of_mixed_sizes_and_channels_frame_as_each_picture_alone():
    rng = np.random.default_rng(0)
    pictures = [
        torch.from_numpy(rng.integers(0, 256, (3, 40, 64), dtype=np.uint8)),
        torch.from_numpy(rng.integers(0, 256, (1, 64, 30), dtype=np.uint8)),  # grey, taller
        torch.from_numpy(rng.integers(0, 256, (3, 20, 25), dtype=np.uint8)),  # smaller than the frame
    ]
    samples = [{"images": picture, "input_boxes": torch.zeros(1, 4), "labels": torch.zeros(32, 32)}
               for picture in pictures]
    batch = collate_sam(samples)
    assert batch["images"].shape == (3, 3, 64, 64) and batch["image_sizes"] == [(40, 64), (64, 30), (20, 25)]
    assert torch.equal(batch["images"][1, 2, :64, :30], pictures[1][0])  # grey among colour: grey RGB
    assert not batch["images"][0, :, 40:].any() and not batch["images"][2, :, :, 25:].any()
    pixel_values = sam_pixel_values(batch["images"], batch["image_sizes"], 64)
    for picture, framed_alone in zip(pictures, pixel_values):
        colour = picture.expand(3, -1, -1).permute(1, 2, 0).numpy() / 255.0
        torch.testing.assert_close(framed_alone, frame_images(colour[None], 64)[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one dtype"):
        collate_sam([samples[0], {**samples[1], "images": pictures[1].float()}])


def test_the_store_prepares_in_several_processes_as_in_one(tmp_path):
    photos = datasets.Dataset.from_dict(
        {"id": [f"p{i}" for i in range(3)], "image": [np.full((90, 70, 3), 40 * i, np.uint8) for i in range(3)],
         "label": [np.pad(np.full((10, 10), 255, np.uint8), ((40, 40), (30, 30))) for _ in range(3)],
         "spacing": [[1.0, 1.0]] * 3},
        features=image_features(),
    )
    one = SamTrainingSamples(photos, {"lesion": (255,)}, "dermoscopy", FRAME, PromptSpec.parse("box"),
                             store_dir=tmp_path / "one")
    two = SamTrainingSamples(photos, {"lesion": (255,)}, "dermoscopy", FRAME, PromptSpec.parse("box"),
                             store_dir=tmp_path / "two", num_proc=2)
    assert one.items == two.items
    for a, b in zip(one.examples, two.examples):
        assert np.array_equal(a.image(), b.image()) and np.array_equal(a.label(), b.label())
        assert a.image().shape == (64, 50, 3)  # 90 x 70 shrunk to the 64 px frame
