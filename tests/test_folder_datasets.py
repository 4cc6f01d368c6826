"""Your own data as --dataset: MSD / nnU-Net v1, nnU-Net v2 and 2D folders written from the embedded MNI152
template, their metadata, splits, named errors, and a short training run on one of them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from transformers import HfArgumentParser

from datasets_scripts._common import CorruptDataError, MissingDataError
from datasets_scripts.folder import canonical_modality
from folder_layouts import DEPTH, TISSUES, save, write_msd, write_nnunet_v2, write_pictures
from helpers import quick_training
from medsa_peft.data.builders import prepare_dataset
from medsa_peft.training import MedSATrainingArguments, train


@pytest.fixture
def prepare(tmp_path):
    def prepare(folder: Path, **options):
        return prepare_dataset(str(folder), cache_dir=str(tmp_path / "cache"), **options)

    return prepare


# ----------------------------------------------------------------------------------------------------------
# Layouts


def test_msd_folder_gives_its_classes_modality_and_a_seeded_split_by_case(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "Task99_MNI", mni_cases)
    data = prepare(folder)

    assert data.name == "Task99_MNI" and data.config_name == "msd"
    assert data.classes == TISSUES and data.modality == "mri"
    assert data.evaluation_split == "validation" and len(data.evaluation) == 1 and len(data.train) == 4
    assert not set(data.train["id"]) & set(data.evaluation["id"])
    example = data.train[0]
    assert example["image"].shape == example["label"].shape == (32, 26, DEPTH)
    np.testing.assert_allclose(example["image"].affine, mni_cases[0][0].affine)
    # the same seed holds out the same case; another fraction holds out more
    assert prepare(folder).evaluation["id"] == data.evaluation["id"]
    assert len(prepare(folder, validation_fraction=0.5).evaluation) == 2


def test_msd_labelled_test_split_is_the_held_out_split(tmp_path, mni_cases, prepare):
    data = prepare(write_msd(tmp_path / "msd", mni_cases[:3], test_cases=mni_cases[3:]))

    assert data.evaluation_split == "test" and data.evaluation["id"] == ["brain_t000", "brain_t001"]
    assert len(data.train) == 3


def test_nnunet_v2_channel_option_picks_the_channel_file_and_regions_become_classes(tmp_path, mni_cases, prepare):
    labels = {"background": 0, "grey matter": 1, "white matter": 2, "brain tissue": [1, 2]}
    folder = write_nnunet_v2(tmp_path / "Dataset099_MNI", mni_cases, labels)

    first = prepare(folder)
    assert first.config_name == "nnunet_v2" and first.modality == "mri"
    assert first.classes == {**TISSUES, "brain tissue": (1, 2)}
    second = prepare(folder, channel=1)
    case = first.train["id"][0]
    t1 = first.train[0]["image"].get_fdata()
    flair = second.train[second.train["id"].index(case)]["image"].get_fdata()
    np.testing.assert_allclose(flair, 1.0 - t1, atol=1e-6)
    assert second.evaluation["id"] == first.evaluation["id"]


@pytest.mark.parametrize("channel", [1, "1", "FLAIR", "flair"])
def test_four_dimensional_decathlon_images_serve_the_channel_chosen_by_index_or_name(
    tmp_path, mni_cases, prepare, channel
):
    folder = write_msd(tmp_path / "Task01_MNI", mni_cases, modality={"0": "T1", "1": "FLAIR"})

    first, chosen = prepare(folder), prepare(folder, channel=channel)
    assert first.modality == chosen.modality == "mri" and first.classes == TISSUES
    assert chosen.evaluation["id"] == first.evaluation["id"]
    case = chosen.train["id"][0]
    source = nib.load(folder / "imagesTr" / f"{case}.nii.gz")
    t1, flair = (first.train[0]["image"], chosen.train[0]["image"])
    assert t1.shape == flair.shape == chosen.train[0]["label"].shape == (32, 26, DEPTH)
    np.testing.assert_allclose(t1.get_fdata(), source.dataobj[..., 0], atol=1e-6)
    np.testing.assert_allclose(flair.get_fdata(), source.dataobj[..., 1], atol=1e-6)
    np.testing.assert_allclose(flair.affine, source.affine)
    assert chosen.train[0]["spacing"] == [2.0, 2.0, 2.0]


def test_nnunet_v2_channel_by_name(tmp_path, mni_cases, prepare):
    folder = write_nnunet_v2(tmp_path / "v2", mni_cases)
    by_index, by_name = prepare(folder, channel=1), prepare(folder, channel="flair")
    np.testing.assert_array_equal(by_name.train[0]["image"].get_fdata(), by_index.train[0]["image"].get_fdata())


def test_the_channel_option_of_train_py_takes_an_index_or_a_name(tmp_path, mni_cases, prepare):
    folder = write_nnunet_v2(tmp_path / "v2", mni_cases)
    parser = HfArgumentParser(MedSATrainingArguments)
    (by_name,) = parser.parse_args_into_dataclasses(["--dataset", str(folder), "--channel", "FLAIR"])
    (by_index,) = parser.parse_args_into_dataclasses(["--dataset", str(folder), "--channel", "1"])
    first, second = prepare(folder, channel=by_name.channel), prepare(folder, channel=by_index.channel)
    np.testing.assert_array_equal(first.train[0]["image"].get_fdata(), second.train[0]["image"].get_fdata())
    with pytest.raises(ValueError, match="--channel must be an index of at least 0 or a channel name, got -1"):
        parser.parse_args_into_dataclasses(["--dataset", str(folder), "--channel", "-1"])


def test_nnunet_v2_ignore_label_is_neither_a_class_nor_an_error(tmp_path, mni_cases, prepare):
    folder = write_nnunet_v2(tmp_path / "v2", mni_cases, {"background": 0, "grey matter": 1, "ignore": 2})
    assert prepare(folder).classes == {"grey matter": (1,)}


def test_overrides_of_classes_and_modality(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "msd", mni_cases)
    data = prepare(folder, classes='{"white matter": [2]}', modality="CT")
    assert data.classes == {"white matter": (2,)} and data.modality == "ct"
    with pytest.raises(ValueError, match=r"--classes names label values \[7\]"):
        prepare(folder, classes='{"tumour": [7]}')


@pytest.mark.parametrize(
    ("name", "rule"),
    [("CT", "ct"), ("MRI", "mri"), ("MR", "mri"), ("T1", "mri"), ("t1gd", "mri"), ("T2w", "mri"), ("FLAIR", "mri"),
     ("ADC", "mri"), ("ultrasound", "ultrasound")],
)
def test_modality_spellings_map_to_intensity_rules(name, rule):
    assert canonical_modality(name) == rule


def test_a_modality_without_a_rule_names_the_option(tmp_path, mni_cases, prepare):
    with pytest.raises(ValueError, match="--modality"):
        prepare(write_msd(tmp_path / "msd", mni_cases, modality="PET"))


def test_binary_picture_folder_is_one_foreground_class(tmp_path, mni_cases, prepare):
    data = prepare(write_pictures(tmp_path / "pictures", mni_cases, binary=True))

    assert data.config_name == "images" and data.classes == {"foreground": (255,)} and data.modality == "photo"
    assert len(data.train) == 4 and len(data.evaluation) == 1
    example = data.train[0]
    assert example["image"].size == (26, 32)  # any size: (width, height) of the slice
    assert set(np.unique(np.asarray(example["label"]))) == {0, 255}


def test_label_picture_folder_has_a_class_per_value_named_by_classes_json(tmp_path, mni_cases, prepare):
    folder = write_pictures(tmp_path / "pictures", mni_cases, binary=False, mask_folder="labels")
    assert prepare(folder).classes == {"class_1": (1,), "class_2": (2,)}

    (folder / "classes.json").write_text(json.dumps({"grey matter": 1, "white matter": [2]}))
    data = prepare(folder, modality="mri")
    assert data.classes == TISSUES and data.modality == "mri"
    np.testing.assert_array_equal(
        np.asarray(data.train[0]["label"]), np.asarray(Image.open(folder / "labels" / f"{data.train[0]['id']}.png"))
    )


def test_training_on_a_folder_reports_its_class_names(tmp_path, mni_cases, tiny_sam_dir):
    folder = write_msd(tmp_path / "Task99_MNI", mni_cases)
    args = quick_training(
        tiny_sam_dir, str(tmp_path / "cache"), tmp_path / "run", dataset=str(folder), max_steps=2, max_eval_cases=2,
        num_workers=0,
    )
    train(args)

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "Task99_MNI" and metrics["evaluation_split"] == "validation"
    assert {"dice/grey matter", "dice/white matter"} <= set(metrics["after"])


# ----------------------------------------------------------------------------------------------------------
# Named errors, nothing written


def assert_nothing_prepared(cache: Path):
    assert not any(cache.rglob("*.arrow"))


def test_dataset_json_listing_a_missing_file(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "msd", mni_cases)
    (folder / "labelsTr" / "brain_002.nii.gz").unlink()
    with pytest.raises(MissingDataError, match="brain_002.nii.gz listed in .*dataset.json does not exist"):
        prepare(folder)
    assert_nothing_prepared(tmp_path / "cache")


def test_label_of_another_shape(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "msd", mni_cases)
    save(mni_cases[1][1].slicer[:, :, :2], folder / "labelsTr" / "brain_001.nii.gz")
    with pytest.raises(CorruptDataError, match="brain_001.nii.gz: label shape"):
        prepare(folder)
    assert_nothing_prepared(tmp_path / "cache")


def test_label_of_another_affine(tmp_path, mni_cases, prepare):
    folder = write_nnunet_v2(tmp_path / "v2", mni_cases)
    image, label = mni_cases[3]
    moved = label.affine.copy()
    moved[:3, 3] += 4.0
    save(nib.Nifti1Image(np.asarray(label.dataobj), moved), folder / "labelsTr" / "brain_003.nii.gz")
    with pytest.raises(CorruptDataError, match="brain_003.nii.gz: label affine"):
        prepare(folder)
    assert_nothing_prepared(tmp_path / "cache")


def test_label_values_absent_from_dataset_json(tmp_path, mni_cases, prepare):
    folder = write_nnunet_v2(tmp_path / "v2", mni_cases)
    _, label = mni_cases[2]
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 5
    save(nib.Nifti1Image(values, label.affine), folder / "labelsTr" / "brain_002.nii.gz")
    with pytest.raises(CorruptDataError, match=r"brain_002.nii.gz: label values \[5\] are not among"):
        prepare(folder)
    assert_nothing_prepared(tmp_path / "cache")


def test_image_without_a_label(tmp_path, mni_cases, prepare):
    volumes = write_nnunet_v2(tmp_path / "v2", mni_cases)
    (volumes / "labelsTr" / "brain_004.nii.gz").unlink()
    with pytest.raises(MissingDataError, match="no label for image .*brain_004_0000.nii.gz"):
        prepare(volumes)
    pictures = write_pictures(tmp_path / "pictures", mni_cases, binary=True)
    (pictures / "masks" / "slice_3.png").unlink()
    with pytest.raises(MissingDataError, match="no label for image .*slice_3.png"):
        prepare(pictures)
    assert_nothing_prepared(tmp_path / "cache")


def test_empty_folder_and_unknown_layout(tmp_path, prepare):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="is empty"):
        prepare(tmp_path / "empty")
    (tmp_path / "other" / "scans").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="Known layouts: msd: .*nnunet_v2: .*images: "):
        prepare(tmp_path / "other")
    with pytest.raises(ValueError, match="or a local folder"):
        prepare(tmp_path / "absent")


def test_too_few_cases_to_hold_one_out(tmp_path, mni_cases, prepare):
    with pytest.raises(MissingDataError, match="at least 2"):
        prepare(write_msd(tmp_path / "msd", mni_cases[:1]))


def test_four_dimensional_decathlon_image_with_a_channel_it_lacks(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "msd", mni_cases, modality={"0": "T1", "1": "FLAIR"})
    description = json.loads((folder / "dataset.json").read_text())
    description["modality"]["2"] = "T2"  # dataset.json promises a third channel that the images lack
    (folder / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"--channel 2: .*brain_000.nii.gz has 2 channels, 0 to 1"):
        prepare(folder, channel="T2")
    with pytest.raises(ValueError, match=r"--channel 'PET' is not among the channels .*0 \(T1\), 1 \(FLAIR\)"):
        prepare(folder, channel="PET")
    assert_nothing_prepared(tmp_path / "cache")


def test_a_channel_of_a_three_dimensional_decathlon_image(tmp_path, mni_cases, prepare):
    folder = write_msd(tmp_path / "msd", mni_cases)
    with pytest.raises(ValueError, match="--channel 1: .*dataset.json lists channels 0 \\(T1\\)"):
        prepare(folder, channel=1)
