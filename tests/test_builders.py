"""The clinical builders on tiny synthetic copies of each official layout (see tests/builder_fixtures.py)."""

from __future__ import annotations

import gzip
import shutil

import datasets
import nibabel as nib
import numpy as np
import pytest

import builder_fixtures as fixtures
from datasets_scripts import _common
from datasets_scripts._common import CorruptDataError, MissingDataError, export_parquet
from datasets_scripts.brats import BraTS
from datasets_scripts.btcv import BTCV
from datasets_scripts.isic import ISIC
from datasets_scripts.refuge import REFUGE
from datasets_scripts.thyroid import Thyroid


@pytest.fixture
def prepare(tmp_path):
    """prepare(Builder, data_dir, config_name, **config_kwargs) -> DatasetDict, cached under tmp_path."""

    def prepare(builder_class, data_dir, config_name, **config_kwargs):
        builder = builder_class(
            config_name=config_name, data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), **config_kwargs
        )
        builder.download_and_prepare()
        return builder.as_dataset()

    return prepare


def split_sizes(dataset_dict: datasets.DatasetDict) -> dict[str, int]:
    return {split: len(dataset) for split, dataset in dataset_dict.items()}


def pixels(image) -> np.ndarray:
    return np.asarray(image)


# ----------------------------------------------------------------------------------------------------------
# BTCV


def test_btcv_swin_unetr_split_serves_volumes_with_header_spacing(tmp_path, prepare):
    data_dir = fixtures.write_btcv(tmp_path / "btcv")
    btcv = prepare(BTCV, data_dir, "swin_unetr")

    assert split_sizes(btcv) == {"train": 24, "validation": 6}
    assert btcv["train"].features == _common.volume_features()
    assert btcv["validation"]["id"] == [f"img{n:04d}" for n in range(35, 41)]
    example = btcv["train"][0]
    assert example["id"] == "img0001"
    assert example["spacing"] == pytest.approx(fixtures.VOXEL_SPACING)
    image, label = example["image"], example["label"]
    assert image.shape == label.shape == fixtures.VOLUME_SHAPE
    np.testing.assert_array_equal(image.get_fdata(), fixtures.ct_volume(1))
    np.testing.assert_allclose(label.affine, image.affine)
    assert set(np.unique(label.get_fdata()).astype(int)) == set(range(14))


def test_btcv_config_carries_the_13_organs_and_ct_modality():
    config = BTCV.builder_configs["swin_unetr"]
    assert config.modality == "ct"
    assert list(config.classes)[:3] == ["spleen", "right_kidney", "left_kidney"]
    assert config.classes["left_adrenal_gland"] == (13,)
    assert sorted(value for values in config.classes.values() for value in values) == list(range(1, 14))


def test_btcv_transunet_split_holds_out_its_12_test_cases(tmp_path, prepare):
    btcv = prepare(BTCV, fixtures.write_btcv(tmp_path / "btcv"), "transunet")

    assert split_sizes(btcv) == {"train": 18, "test": 12}
    assert btcv["test"]["id"][:5] == ["img0001", "img0002", "img0003", "img0004", "img0008"]


def test_btcv_reads_a_monai_dataset_json_from_a_relative_data_dir(tmp_path, prepare, monkeypatch):
    fixtures.write_btcv_monai(tmp_path / "btcv", training=(1, 2, 3), validation=(4,))
    monkeypatch.chdir(tmp_path)
    btcv = prepare(BTCV, "btcv", "monai_json")
    monkeypatch.chdir(tmp_path / "btcv" / "imagesTr")  # examples hold absolute paths

    assert split_sizes(btcv) == {"train": 3, "validation": 1}
    assert btcv["validation"][0]["id"] == "img0004"
    np.testing.assert_array_equal(btcv["validation"][0]["image"].get_fdata(), fixtures.ct_volume(4))


# ----------------------------------------------------------------------------------------------------------
# BraTS

BRATS_CASES = tuple(f"BraTS2021_{n:05d}" for n in range(10))


def test_brats_holds_out_cases_by_stable_hash(tmp_path, prepare):
    brats = prepare(BraTS, fixtures.write_brats(tmp_path / "brats", BRATS_CASES), "flair-regions")

    assert split_sizes(brats) == {"train": 7, "validation": 3}
    # Pinned: the split must not change between versions or machines.
    assert brats["validation"]["id"] == ["BraTS2021_00001", "BraTS2021_00005", "BraTS2021_00008"]


def test_brats_configs_pick_the_sequence_and_the_classes(tmp_path, prepare):
    data_dir = fixtures.write_brats(tmp_path / "brats", BRATS_CASES[:2])
    example = prepare(BraTS, data_dir, "t1ce-labels")["train"][0]

    assert example["id"] == "BraTS2021_00000"
    assert example["image"].get_filename().endswith("BraTS2021_00000_t1ce.nii.gz")
    assert np.all(example["image"].get_fdata() == 200)  # the fixture fills t1ce with 100 * 2 + case index
    assert set(np.unique(example["label"].get_fdata()).astype(int)) == {0, 1, 2, 4}
    assert BraTS.builder_configs["t1ce-labels"].classes == {"NCR": (1,), "ED": (2,), "ET": (4,)}
    assert BraTS.builder_configs["flair-regions"].classes == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert BraTS.builder_configs["flair-regions"].modality == "mri"


def test_brats_serves_another_sequence_by_config_keyword_and_rejects_unknown_ones(tmp_path, prepare):
    data_dir = fixtures.write_brats(tmp_path / "brats", BRATS_CASES[:2])
    example = prepare(BraTS, data_dir, "flair-regions", sequence="t2")["train"][0]
    assert example["image"].get_filename().endswith("_t2.nii.gz")
    with pytest.raises(ValueError, match="sequence must be one of"):
        prepare(BraTS, data_dir, "flair-regions", sequence="dwi")


# ----------------------------------------------------------------------------------------------------------
# REFUGE


def test_refuge_official_maps_the_challenge_coding_to_rim_and_cup(tmp_path, prepare):
    refuge = prepare(REFUGE, fixtures.write_refuge_official(tmp_path / "refuge"), "official")

    assert split_sizes(refuge) == {"train": 4, "validation": 3, "test": 3}
    assert sorted(refuge["train"]["id"]) == ["g0001", "g0002", "n0001", "n0002"]
    example = refuge["train"][0]
    label = pixels(example["label"])
    classes = REFUGE.builder_configs["official"].classes
    np.testing.assert_array_equal(np.isin(label, classes["optic_disc"]), fixtures.disc(radius=8))
    np.testing.assert_array_equal(np.isin(label, classes["optic_cup"]), fixtures.disc(radius=4))
    assert example["rater_labels"] == []
    assert example["spacing"] == [1.0, 1.0]


def test_refuge_multirater_takes_the_majority_of_seven_raters(tmp_path, prepare):
    refuge = prepare(REFUGE, fixtures.write_refuge_multirater(tmp_path / "refuge"), "multirater")

    assert split_sizes(refuge) == {"train": 2, "test": 1}
    example = refuge["train"][0]
    classes = REFUGE.builder_configs["multirater"].classes
    label = pixels(example["label"])
    # Raters draw discs of radius 6..12 and cups of 2..5: four of seven agree up to radius 9 and 3.5.
    np.testing.assert_array_equal(np.isin(label, classes["optic_disc"]), fixtures.disc(radius=9))
    np.testing.assert_array_equal(np.isin(label, classes["optic_cup"]), fixtures.disc(radius=3.5))
    assert len(example["rater_labels"]) == 7
    first_rater = pixels(example["rater_labels"][0])
    np.testing.assert_array_equal(np.isin(first_rater, classes["optic_disc"]), fixtures.disc(radius=6))


def test_refuge2_reads_train_val_test_folders(tmp_path, prepare):
    refuge = prepare(REFUGE, fixtures.write_refuge2(tmp_path / "refuge"), "refuge2")

    assert split_sizes(refuge) == {"train": 3, "validation": 2, "test": 2}
    assert np.isin(pixels(refuge["test"][0]["label"]), (255,)).sum() == fixtures.disc(radius=4).sum()


# ----------------------------------------------------------------------------------------------------------
# ISIC and thyroid ultrasound


@pytest.mark.parametrize(
    ("edition", "sizes"),
    [("isic2016", {"train": 4, "test": 2}), ("isic2018", {"train": 3, "validation": 1, "test": 2})],
)
def test_isic_pairs_images_with_lesion_masks(tmp_path, prepare, edition, sizes):
    isic = prepare(ISIC, fixtures.write_isic(tmp_path / "isic", edition), edition)

    assert split_sizes(isic) == sizes
    assert isic["train"].features == _common.image_features()
    example = isic["train"][0]
    assert example["id"] == "ISIC_0000000"
    assert example["label"].mode == "L"
    assert example["image"].size == (fixtures.IMAGE_SIZE, fixtures.IMAGE_SIZE)
    np.testing.assert_array_equal(pixels(example["label"]) == 255, fixtures.disc())
    assert ISIC.builder_configs[edition].classes == {"lesion": (255,)}


def test_tn3k_splits_trainval_by_fold_file_and_cleans_jpeg_masks(tmp_path, prepare):
    fold = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7]}
    tn3k = prepare(Thyroid, fixtures.write_tn3k(tmp_path / "thyroid", fold=fold), "tn3k")

    assert split_sizes(tn3k) == {"train": 6, "validation": 2, "test": 3}
    assert tn3k["validation"]["id"] == ["0006", "0007"]
    label = pixels(tn3k["test"][0]["label"])
    assert set(np.unique(label)) == {0, 255}  # JPEG noise of the mask files is thresholded away
    np.testing.assert_array_equal(label == 255, fixtures.disc())


def test_tn3k_without_fold_file_trains_on_all_trainval_images(tmp_path, prepare):
    tn3k = prepare(Thyroid, fixtures.write_tn3k(tmp_path / "thyroid"), "tn3k")
    assert split_sizes(tn3k) == {"train": 8, "test": 3}


def test_ddti_is_one_test_split_with_01_masks_served_as_255(tmp_path, prepare):
    ddti = prepare(Thyroid, fixtures.write_ddti(tmp_path / "thyroid"), "ddti")

    assert split_sizes(ddti) == {"test": 4}
    np.testing.assert_array_equal(pixels(ddti["test"][0]["label"]) == 255, fixtures.disc())
    assert Thyroid.builder_configs["ddti"].modality == "ultrasound"


# ----------------------------------------------------------------------------------------------------------
# Export for the Hub


def test_parquet_export_embeds_volumes_and_loads_back(tmp_path, prepare):
    data_dir = fixtures.write_btcv_monai(tmp_path / "btcv", training=(1, 2), validation=(3,))
    train = prepare(BTCV, data_dir, "monai_json")["train"]

    path = export_parquet(train, tmp_path / "hub" / "train.parquet")
    shutil.rmtree(data_dir)  # the parquet file must not need the original files
    loaded = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "parquet_cache"))

    assert loaded.features == train.features
    assert loaded["id"] == ["img0001", "img0002"]
    example = loaded[1]
    np.testing.assert_array_equal(example["image"].get_fdata(), fixtures.ct_volume(2))
    assert example["label"].shape == fixtures.VOLUME_SHAPE
    assert example["spacing"] == pytest.approx(fixtures.VOXEL_SPACING)


def test_parquet_export_embeds_images_and_rater_labels(tmp_path, prepare):
    data_dir = fixtures.write_refuge_multirater(tmp_path / "refuge", train=("g0001",), test=())
    train = prepare(REFUGE, data_dir, "multirater")["train"]
    expected = train[0]

    path = export_parquet(train, tmp_path / "hub" / "train.parquet")
    shutil.rmtree(data_dir)
    loaded = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "parquet_cache"))[0]

    np.testing.assert_array_equal(pixels(loaded["image"]), pixels(expected["image"]))
    np.testing.assert_array_equal(pixels(loaded["label"]), pixels(expected["label"]))
    assert [pixels(r).sum() for r in loaded["rater_labels"]] == [pixels(r).sum() for r in expected["rater_labels"]]
    assert not list((tmp_path / "hub").glob("*.partial"))


# ----------------------------------------------------------------------------------------------------------
# Bad data: clear errors that name the file


def test_missing_or_empty_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDataError, match="data_dir"):
        BTCV(cache_dir=str(tmp_path / "c")).download_and_prepare()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="is empty"):
        BTCV(data_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")).download_and_prepare()


def test_missing_label_volume_names_the_image(tmp_path, prepare):
    data_dir = fixtures.write_btcv(tmp_path / "btcv")
    missing = data_dir / "Abdomen" / "RawData" / "Training" / "label" / "label0007.nii.gz"
    missing.unlink()
    with pytest.raises(MissingDataError, match=r"img0007\.nii\.gz.*label0007\.nii\.gz"):
        prepare(BTCV, data_dir, "swin_unetr")


def test_label_volume_of_another_shape_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_brats(tmp_path / "brats", BRATS_CASES[:2])
    seg = data_dir / "BraTS2021_Training_Data" / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    fixtures.write_nifti(seg, np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(CorruptDataError, match=r"BraTS2021_00001_seg\.nii\.gz.*\(16, 16, 5\).*\(16, 16, 6\)"):
        prepare(BraTS, data_dir, "flair-regions")


def test_label_volume_of_another_orientation_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_brats(tmp_path / "brats", BRATS_CASES[:2])
    seg = data_dir / "BraTS2021_Training_Data" / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    flipped = np.diag([-0.8, 0.7, 2.5, 1.0])  # the same grid stored right-to-left: orientation LAS, not RAS
    nib.save(nib.Nifti1Image(np.zeros(fixtures.VOLUME_SHAPE, np.uint8), flipped), seg)
    with pytest.raises(CorruptDataError, match=r"BraTS2021_00001_seg\.nii\.gz: label orientation LAS differs"):
        prepare(BraTS, data_dir, "flair-regions")


def test_truncated_nifti_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_btcv_monai(tmp_path / "btcv")
    image = data_dir / "imagesTr" / "img0002.nii.gz"
    image.write_bytes(image.read_bytes()[:-200])
    with pytest.raises(CorruptDataError, match=r"img0002\.nii\.gz.*truncated"):
        prepare(BTCV, data_dir, "monai_json")


def test_nifti_with_fewer_voxels_than_its_header_promises_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_btcv_monai(tmp_path / "btcv", training=(1,), validation=())
    gz_label = data_dir / "labelsTr" / "label0001.nii.gz"
    nii = gzip.decompress(gz_label.read_bytes())
    gz_label.write_bytes(gzip.compress(nii[:-100]))  # a complete gzip stream of an incomplete NIfTI
    with pytest.raises(CorruptDataError, match=r"label0001\.nii\.gz.*truncated.*header promises"):
        prepare(BTCV, data_dir, "monai_json")

    plain = tmp_path / "plain.nii"
    plain.write_bytes(nii[:-100])
    with pytest.raises(CorruptDataError, match=r"plain\.nii: truncated"):
        _common.nifti_geometry(plain)


def test_volume_that_is_not_3d_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_btcv_monai(tmp_path / "btcv", training=(1,), validation=())
    fixtures.write_nifti(data_dir / "imagesTr" / "img0001.nii.gz", np.zeros((16, 16, 6, 1), np.int16))
    with pytest.raises(CorruptDataError, match=r"img0001\.nii\.gz: expected a 3D volume.*\(16, 16, 6, 1\)"):
        prepare(BTCV, data_dir, "monai_json")


def test_unreadable_nifti_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_btcv_monai(tmp_path / "btcv")
    (data_dir / "labelsTr" / "label0003.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(CorruptDataError, match=r"label0003\.nii\.gz.*not a readable NIfTI"):
        prepare(BTCV, data_dir, "monai_json")


def test_missing_mask_names_the_image_and_the_expected_mask(tmp_path, prepare):
    data_dir = fixtures.write_isic(tmp_path / "isic", "isic2016")
    (data_dir / "ISBI2016_ISIC_Part1_Training_GroundTruth" / "ISIC_0000002_Segmentation.png").unlink()
    with pytest.raises(MissingDataError, match=r"ISIC_0000002\.jpg.*ISIC_0000002_segmentation\.png"):
        prepare(ISIC, data_dir, "isic2016")


def test_truncated_image_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_isic(tmp_path / "isic", "isic2016")
    image = data_dir / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000005.jpg"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(CorruptDataError, match=r"ISIC_0000005\.jpg.*not a readable image"):
        prepare(ISIC, data_dir, "isic2016")


def test_mask_of_another_size_is_rejected(tmp_path, prepare):
    data_dir = fixtures.write_refuge_official(tmp_path / "refuge")
    mask = data_dir / "REFUGE-Validation400-GT" / "Disc_Cup_Masks" / "V0002.bmp"
    fixtures.write_mask(mask, np.zeros((20, 32), np.uint8))
    with pytest.raises(CorruptDataError, match=r"V0002\.bmp.*\(32, 20\).*V0002\.jpg.*\(32, 32\)"):
        prepare(REFUGE, data_dir, "official")


def test_two_masks_of_one_name_are_ambiguous_but_other_repeated_files_do_not_matter(tmp_path, prepare):
    data_dir = fixtures.write_refuge_official(tmp_path / "refuge")
    masks = data_dir / "Annotation-Training400" / "Annotation-Training400" / "Disc_Cup_Masks"
    for group in ("Glaucoma", "Non-Glaucoma"):
        (masks / group / ".DS_Store").write_bytes(b"")
    shutil.copy(masks / "Glaucoma" / "g0002.bmp", masks / "Non-Glaucoma" / "g0002.bmp")
    with pytest.raises(CorruptDataError, match=r"g0002\.jpg is ambiguous.*Glaucoma/g0002\.bmp"):
        prepare(REFUGE, data_dir, "official")

    (masks / "Non-Glaucoma" / "g0002.bmp").unlink()
    assert split_sizes(prepare(REFUGE, data_dir, "official"))["train"] == 4


def test_missing_ground_truth_folder_is_named(tmp_path, prepare):
    data_dir = fixtures.write_refuge_official(tmp_path / "refuge")
    shutil.rmtree(data_dir / "REFUGE-Test-GT")
    with pytest.raises(MissingDataError, match="REFUGE-Test-GT"):
        prepare(REFUGE, data_dir, "official")


def test_empty_image_folder_is_named(tmp_path, prepare):
    data_dir = fixtures.write_tn3k(tmp_path / "thyroid")
    for image in (data_dir / "tn3k" / "test-image").iterdir():
        image.unlink()
    with pytest.raises(MissingDataError, match=r"no \.jpg files in .*test-image"):
        prepare(Thyroid, data_dir, "tn3k")


def test_layout_without_any_known_folder_is_named(tmp_path, prepare):
    (tmp_path / "elsewhere" / "photos").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="Training-400"):
        prepare(REFUGE, tmp_path / "elsewhere", "multirater")


def test_complete_volume_is_checked_without_decompressing_it(tmp_path, monkeypatch):
    """The gzip trailer records the uncompressed size, so a complete .nii.gz is never decompressed to check it."""

    def fail(path):
        raise AssertionError(f"decompressed {path}")

    monkeypatch.setattr(_common, "_gunzipped_size", fail)
    path = fixtures.write_nifti(tmp_path / "ct.nii.gz", fixtures.ct_volume(0))
    shape, spacing = _common.nifti_geometry(path)
    assert shape == fixtures.VOLUME_SHAPE
    assert spacing == pytest.approx(fixtures.VOXEL_SPACING)
