"""The embedded default data set: MNI152 template slabs and slices, prepared offline from the nilearn wheel."""

import socket

import numpy as np
import pytest

from datasets_scripts.mni152 import MNI152, MNI152Config, load_template, slab_ranges, tissue_labels


def _refuse_network(*args, **kwargs):
    raise OSError("network access attempted while preparing the embedded data set")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Both configs prepared with every socket connection refused: {"3d": (builder, DatasetDict), "2d": ...}."""
    prepared = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", _refuse_network)
        for name in ("3d", "2d"):
            builder = MNI152(config_name=name, cache_dir=str(tmp_path_factory.mktemp(f"mni152_{name}")))
            builder.download_and_prepare()
            prepared[name] = builder, builder.as_dataset()
    return prepared


@pytest.fixture(scope="module")
def template():
    """(T1 intensities, tissue labels, affine) of the whole template at the builders' resolution."""
    t1, labels = load_template(MNI152Config().resolution_mm)
    return t1.get_fdata(), np.asanyarray(labels.dataobj), t1.affine


def slab_start(example) -> int:
    """First slice index of a 3D example, from its id "mni152_zSSS-EEE"."""
    return int(example["id"].split("_z")[1].split("-")[0])


def test_tissue_label_rule_is_the_most_probable_of_background_grey_white():
    grey = np.array([0.0, 0.6, 0.3, 0.45, 0.2, 0.5])
    white = np.array([0.1, 0.3, 0.6, 0.45, 0.2, 0.5])
    # background = 1 - grey - white: 0.9, 0.1, 0.1, 0.1, 0.6, 0.0 ; the last is a grey/white tie -> grey
    np.testing.assert_array_equal(tissue_labels(grey, white), [0, 1, 2, 1, 0, 1])


def test_slabs_are_full_and_disjoint():
    assert slab_ranges(20, 8) == [(0, 8), (8, 16)]
    assert slab_ranges(16, 8) == [(0, 8), (8, 16)]


def test_both_configs_describe_mri_with_white_matter_as_the_class(prepared):
    for builder, _ in prepared.values():
        assert builder.config.modality == "mri"
        assert builder.config.classes == {"white_matter": (2,)}
    # grey matter stays labelled (1): classes='{"grey_matter": [1], "white_matter": [2]}' selects both tissues
    slab, picture = prepared["3d"][1]["test"][0]["label"], prepared["2d"][1]["test"][0]["label"]
    assert set(np.unique(np.asanyarray(slab.dataobj))) == set(np.unique(np.asarray(picture))) == {0, 1, 2}
    assert MNI152.DEFAULT_CONFIG_NAME == "3d"
    # the 2d pictures are axial slices in canonical order: overlays show them in radiological view
    assert prepared["2d"][0].config.axial_pictures and not prepared["3d"][0].config.axial_pictures


def test_3d_slabs_carry_the_template_geometry_and_data(prepared, template):
    t1, labels, affine = template
    _, splits = prepared["3d"]
    depth = MNI152Config().slab_depth
    for split in splits.values():
        for example in split:
            start = slab_start(example)
            image, label = example["image"], example["label"]
            assert image.shape == label.shape == (*t1.shape[:2], depth)
            shifted = affine.copy()
            shifted[:3, 3] = affine[:3, :3] @ [0, 0, start] + affine[:3, 3]
            np.testing.assert_allclose(image.affine, shifted)
            np.testing.assert_allclose(label.affine, shifted)
            assert example["spacing"] == pytest.approx(image.header.get_zooms()[:3]) == [2.0, 2.0, 2.0]
            np.testing.assert_allclose(image.get_fdata(), t1[:, :, start : start + depth], atol=1e-6)
            np.testing.assert_array_equal(np.asanyarray(label.dataobj), labels[:, :, start : start + depth])


def test_3d_train_and_test_slabs_are_disjoint_and_all_hold_both_tissues(prepared):
    _, splits = prepared["3d"]
    depth = MNI152Config().slab_depth
    slices = {}
    for name, split in splits.items():
        assert len(split) > 0
        slices[name] = set()
        for example in split:
            start = slab_start(example)
            assert slices[name].isdisjoint(range(start, start + depth))
            slices[name].update(range(start, start + depth))
            assert set(np.unique(np.asanyarray(example["label"].dataobj))) == {0, 1, 2}
    assert slices["train"].isdisjoint(slices["test"])


def test_slabs_without_tissue_are_left_out(prepared, template):
    _, labels, _ = template
    _, splits = prepared["3d"]
    served = {slab_start(example) for split in splits.values() for example in split}
    depth = MNI152Config().slab_depth
    with_tissue = {start for start, stop in slab_ranges(labels.shape[2], depth) if labels[:, :, start:stop].any()}
    assert served == with_tissue
    assert len(with_tissue) < len(slab_ranges(labels.shape[2], depth))  # the top of the volume is empty


def test_2d_slices_come_from_the_slabs_of_the_same_split(prepared, template):
    t1, labels, _ = template
    _, volume_splits = prepared["3d"]
    _, image_splits = prepared["2d"]
    depth = MNI152Config().slab_depth
    for name, split in image_splits.items():
        slab_slices = {slab_start(example) + offset for example in volume_splits[name] for offset in range(depth)}
        served = set()
        for example in split:
            z = int(example["id"].split("_z")[1])
            served.add(z)
            label = np.asarray(example["label"])
            image = np.asarray(example["image"])
            assert example["image"].mode == example["label"].mode == "L"
            np.testing.assert_array_equal(label, labels[:, :, z])
            np.testing.assert_array_equal(image, np.rint(np.clip(t1[:, :, z], 0, 1) * 255).astype(np.uint8))
            assert example["spacing"] == [2.0, 2.0]
        # every slice of the split's slabs that holds tissue, and nothing else
        assert served == {z for z in slab_slices if labels[:, :, z].any()}
    grey_and_white = [
        {value for example in split for value in np.unique(np.asarray(example["label"]))}
        for split in image_splits.values()
    ]
    assert grey_and_white == [{0, 1, 2}, {0, 1, 2}]


def test_bad_slab_settings_are_refused():
    with pytest.raises(ValueError, match="slab_depth"):
        MNI152Config(name="bad", slab_depth=0)
