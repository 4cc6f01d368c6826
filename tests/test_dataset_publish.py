"""Publishing a data set the Hugging Face way: `medsa-peft export-dataset` writes parquet shards with a dataset
card, pushes them through the local Hub stand-in, and `--dataset user/name`, a local export, a lone parquet file
or a `save_to_disk` folder then train with the card's classes and modality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import yaml
from huggingface_hub import snapshot_download

from datasets_scripts._common import CorruptDataError, MissingDataError
from helpers import LocalHub, quick_training
from medsa_peft.cli import main
from medsa_peft.data.builders import prepare_dataset
from medsa_peft.data.publish import export_dataset
from medsa_peft.training import train
from folder_layouts import write_msd, write_pictures


@pytest.fixture
def hub(tmp_path, monkeypatch) -> LocalHub:
    """The local Hub stand-in: uploads land in a Hub cache that huggingface_hub reads offline."""
    hub = LocalHub(tmp_path / "hf_home")
    hub.install(monkeypatch.setattr)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    return hub


@pytest.fixture(scope="module")
def mni152_3d(tmp_path_factory):
    return prepare_dataset("mni152", "3d", cache_dir=str(tmp_path_factory.mktemp("mni152")))


def card_yaml(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---")[1])


def no_machine_path(folder: Path, *paths: Path) -> bool:
    text = (folder / "README.md").read_text()
    return not any(str(path) in text for path in paths)


# ----------------------------------------------------------------------------------------------------------
# The Hub round trip


def test_export_push_then_train_on_the_hub_id_with_the_card_classes(tmp_path, hub, mni_cases, tiny_sam_dir):
    folder = write_msd(tmp_path / "Task99_MNI", mni_cases)
    status = main([
        "export-dataset", str(folder), str(tmp_path / "export"), "--push_to_hub", "someone/mni-tissue",
        "--license", "cc-by-4.0", "--cache-dir", str(tmp_path / "cache"),
    ])
    assert status == 0

    assert hub.uploaded_folders == ["someone/mni-tissue"]  # the export folder as written, through upload_folder
    uploaded = hub.snapshot_dir("someone/mni-tissue", repo_type="dataset")
    assert sorted(path.relative_to(uploaded).as_posix() for path in uploaded.rglob("*") if path.is_file()) == [
        "README.md", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
    ]
    card = card_yaml(uploaded / "README.md")
    assert card["license"] == "cc-by-4.0" and card["task_categories"] == ["image-segmentation"]
    assert card["medsa_peft"]["classes"] == {"grey matter": [1], "white matter": [2]}
    assert card["medsa_peft"]["modality"] == "mri" and card["medsa_peft"]["source_config"] == "msd"
    assert "| spacing | 2 x 2 x 2 mm |" in (uploaded / "README.md").read_text()
    assert no_machine_path(uploaded, tmp_path)

    # datasets reads the upload offline: the card's configs name the splits
    loaded = datasets.load_dataset(snapshot_download("someone/mni-tissue", repo_type="dataset"),
                                   cache_dir=str(tmp_path / "load"))
    assert set(loaded) == {"train", "validation"} and isinstance(loaded["train"].features["image"], datasets.Nifti)
    assert loaded["train"][0]["image"].shape == (32, 26, 3)

    args = quick_training(
        tiny_sam_dir, str(tmp_path / "cache"), tmp_path / "run", dataset="someone/mni-tissue", max_steps=2,
        max_eval_cases=2, num_workers=0,
    )
    train(args)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "someone/mni-tissue" and metrics["evaluation_split"] == "validation"
    assert {"dice/grey matter", "dice/white matter"} <= set(metrics["after"])
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    assert "datasets:\n- someone/mni-tissue\n" in card  # the Hub id names the data set in the card's metadata
    assert "name: medsa-mni-tissue-parquet" in card  # and the model's name holds no "/"


def test_an_unknown_hub_id_offline_is_a_named_error(hub, tmp_path):
    with pytest.raises(MissingDataError, match="data set 'someone/absent': .*Hub data set cannot be read"):
        prepare_dataset("someone/absent", cache_dir=str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------------------
# Local exports, parquet files and save_to_disk folders


def test_an_exported_builder_loads_back_with_its_classes_splits_and_voxels(tmp_path, mni152_3d):
    out = export_dataset(mni152_3d, tmp_path / "mni152-parquet", license="other", max_shard_bytes=400_000)
    shards = sorted(path.name for path in (out / "data").iterdir())
    train_shards = [name for name in shards if name.startswith("train-")]
    count = len(train_shards)  # the stored size, and so the count, varies with the datasets release
    assert count >= 2  # the byte limit split the train split
    assert shards == ["test-00000-of-00001.parquet", *(f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count))]

    data = prepare_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert (data.name, data.config_name, data.evaluation_split) == ("mni152-parquet", "parquet", "test")
    assert data.classes == mni152_3d.classes and data.modality == "mri"
    assert data.train["id"] == mni152_3d.train["id"] and data.evaluation["id"] == mni152_3d.evaluation["id"]
    exported, source = data.train[5], mni152_3d.train[5]
    np.testing.assert_array_equal(exported["image"].get_fdata(), source["image"].get_fdata())
    np.testing.assert_array_equal(np.asarray(exported["label"].dataobj), np.asarray(source["label"].dataobj))
    np.testing.assert_allclose(exported["image"].affine, source["image"].affine)
    assert card_yaml(out / "README.md")["configs"][0]["data_files"][0]["path"] == [f"data/{name}" for name in train_shards]


def test_an_exported_picture_folder_keeps_its_pictures_and_class_names(tmp_path, mni_cases):
    folder = write_pictures(tmp_path / "slices", mni_cases, binary=False)
    (folder / "classes.json").write_text(json.dumps({"grey matter": 1, "white matter": 2}))
    source = prepare_dataset(str(folder), cache_dir=str(tmp_path / "cache"), modality="mri")

    data = prepare_dataset(str(export_dataset(source, tmp_path / "export")), cache_dir=str(tmp_path / "cache"))
    assert data.classes == {"grey matter": (1,), "white matter": (2,)} and data.modality == "mri"
    assert data.evaluation_split == "validation" and data.evaluation["id"] == source.evaluation["id"]
    assert isinstance(data.train.features["image"], datasets.Image)
    np.testing.assert_array_equal(np.asarray(data.train[0]["image"]), np.asarray(source.train[0]["image"]))
    np.testing.assert_array_equal(np.asarray(data.train[0]["label"]), np.asarray(source.train[0]["label"]))


def test_a_lone_parquet_file_needs_classes_and_modality_and_is_split_by_case(tmp_path, mni152_3d):
    out = export_dataset(mni152_3d, tmp_path / "export")
    lone = out / "data" / "train-00000-of-00001.parquet"
    with pytest.raises(ValueError, match="no dataset card naming its classes.*pass --classes and --modality"):
        prepare_dataset(str(lone), cache_dir=str(tmp_path / "cache"))

    data = prepare_dataset(
        str(lone), cache_dir=str(tmp_path / "cache"), classes='{"grey matter": 1}', modality="T1", seed=3
    )
    assert data.classes == {"grey matter": (1,)} and data.modality == "mri" and data.evaluation_split == "validation"
    assert len(data.evaluation) == 2 and len(data.train) == 6  # round(0.2 x 8) cases held out, whole
    assert not set(data.train["id"]) & set(data.evaluation["id"])
    again = prepare_dataset(str(lone), cache_dir=str(tmp_path / "cache"), classes='{"g": 1}', modality="mri", seed=3)
    assert again.evaluation["id"] == data.evaluation["id"]


def test_a_save_to_disk_folder_reads_the_card_beside_it(tmp_path, mni152_3d):
    folder = tmp_path / "saved"
    datasets.DatasetDict(train=mni152_3d.train, test=mni152_3d.evaluation).save_to_disk(str(folder))
    with pytest.raises(ValueError, match="pass --classes and --modality"):
        prepare_dataset(str(folder))
    shutil.copy(export_dataset(mni152_3d, tmp_path / "export") / "README.md", folder / "README.md")

    data = prepare_dataset(str(folder), modality="ct")
    assert (data.config_name, data.evaluation_split, data.modality) == ("save_to_disk", "test", "ct")
    assert data.classes == mni152_3d.classes and len(data.train) == len(mni152_3d.train)


# ----------------------------------------------------------------------------------------------------------
# Errors, nothing written half


def test_export_into_a_folder_that_holds_files_writes_nothing(tmp_path, mni152_3d):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="busy exists and is not an empty folder"):
        export_dataset(mni152_3d, tmp_path / "busy")
    assert [path.name for path in tmp_path.iterdir()] == ["busy"]
    assert [path.name for path in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_parquet_without_the_columns_of_an_export_is_a_named_error(tmp_path):
    datasets.Dataset.from_dict({"id": ["a", "b"], "scan": ["x", "y"]}).to_parquet(str(tmp_path / "scans.parquet"))
    with pytest.raises(CorruptDataError, match="scans .*needs columns id, image and label"):
        prepare_dataset(str(tmp_path / "scans.parquet"), classes='{"x": 1}', modality="ct")


def test_channel_is_refused_for_a_published_data_set(tmp_path, mni152_3d):
    out = export_dataset(mni152_3d, tmp_path / "export")
    with pytest.raises(ValueError, match="--channel 2: .*applies to folders of volumes"):
        prepare_dataset(str(out), channel=2)
