"""Find and prepare the `datasets` builders of `datasets_scripts/` by a short name, a local folder by its layout,
or a published data set (a Hub id, a parquet export, a `save_to_disk` folder), as the examples take them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub.utils import HFValidationError, validate_repo_id

from datasets_scripts.folder import (
    PUBLISHED_LAYOUTS,
    canonical_modality,
    check_validation_fraction,
    detect_layout,
    folder_builder,
    held_out_ids,
    parse_classes,
)

from ..constants import EMBEDDED_DEFAULT
from .publish import load_published

__all__ = [
    "PreparedDataset",
    "builder_class",
    "prepare_dataset",
]

# short name -> (module of datasets_scripts, builder class)
BUILDERS = {
    "mni152": ("datasets_scripts.mni152", "MNI152"),
    "btcv": ("datasets_scripts.btcv", "BTCV"),
    "brats": ("datasets_scripts.brats", "BraTS"),
    "refuge": ("datasets_scripts.refuge", "REFUGE"),
    "isic": ("datasets_scripts.isic", "ISIC"),
    "thyroid": ("datasets_scripts.thyroid", "Thyroid"),
}
EVALUATION_SPLITS = ("test", "validation")


@dataclass
class PreparedDataset:
    """The train and held-out splits of a builder, with its classes and modality (the data contract)."""

    name: str
    config_name: str
    train: datasets.Dataset
    evaluation: datasets.Dataset
    evaluation_split: str
    classes: dict[str, tuple[int, ...]]
    modality: str
    axial_pictures: bool = False  # 2D pictures that are axial slices in canonical order (the builder config's flag)


def builder_class(name: str) -> type[datasets.DatasetBuilder]:
    """The builder class registered under `name` (see `BUILDERS`)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(BUILDERS)} or a local folder")
    module_name, class_name = BUILDERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def _is_hub_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def _is_published(name: str) -> bool:
    """Whether `name` is a parquet file, a folder holding a published data set, or else a Hub id."""
    path = Path(name).expanduser()
    if path.is_file():
        return True
    if path.is_dir():
        return any(path.iterdir()) and detect_layout(path) in PUBLISHED_LAYOUTS
    return _is_hub_id(name)


def prepare_dataset(
    name: str = EMBEDDED_DEFAULT,
    config_name: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    *,
    channel: int | str = 0,
    modality: str | None = None,
    classes: str | dict | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> PreparedDataset:
    """Prepare builder `name` (config `config_name`, manual data in `data_dir`), the local folder `name`
    (`datasets_scripts.folder`: its layout recognised), or the published data set `name` (a Hub id `user/name`,
    a parquet export or file, a `save_to_disk` folder: `medsa_peft.data.publish`), and return its splits.

    `modality` and `classes` ({"name": [values]}, a dict or a JSON string) override the builder's, folder's or
    dataset card's; `channel` (an index or a channel name) applies to folders of volumes; `validation_fraction`
    and `seed` to folders and published data sets without a held-out split of their own. The held-out split is
    "test" when the data has one, else "validation".
    """
    overrides = {}
    if name not in BUILDERS and _is_published(name):
        return _prepare_published(name, cache_dir, channel, modality, classes, validation_fraction, seed)
    if name in BUILDERS:
        if classes is not None:
            overrides["classes"] = parse_classes(classes)
        if modality is not None:
            overrides["modality"] = canonical_modality(modality)
        builder = builder_class(name)(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **overrides)
        display_name = name
    elif Path(name).expanduser().is_dir():
        builder = folder_builder(name, cache_dir, channel, modality, classes, validation_fraction, seed)
        display_name = Path(name).expanduser().resolve().name  # not the path: metrics and cards leave this machine
    else:
        raise ValueError(
            f"unknown data set {name!r}; choose one of {sorted(BUILDERS)}, a Hub data set id user/name, or a "
            "local folder or parquet file"
        )
    builder.download_and_prepare()
    splits = builder.as_dataset()
    held_out = next((split for split in EVALUATION_SPLITS if split in splits), None)
    if "train" not in splits or held_out is None:
        raise ValueError(f"data set {name!r} ({builder.config.name}) needs a train and a test or validation split")
    return PreparedDataset(
        name=display_name,
        config_name=builder.config.name,
        train=splits["train"],
        evaluation=splits[held_out],
        evaluation_split=held_out,
        classes={key: tuple(values) for key, values in builder.config.classes.items()},
        modality=builder.config.modality,
        axial_pictures=builder.config.axial_pictures,
    )


def _prepare_published(
    name: str,
    cache_dir: str | None,
    channel: int | str,
    modality: str | None,
    classes: str | dict | None,
    validation_fraction: float,
    seed: int,
) -> PreparedDataset:
    """A published data set's splits, with classes and modality from its card unless overridden."""
    if str(channel).strip() != "0":
        raise ValueError(f"--channel {channel}: {name} is a published data set of one image per example; "
                         "--channel applies to folders of volumes")
    published = load_published(name, cache_dir)
    if classes is None and not published.classes:
        raise ValueError(f"{published.name} has no dataset card naming its classes (README.md with a "
                         "'medsa_peft' section, as medsa-peft export-dataset writes); pass --classes and --modality")
    chosen = parse_classes(classes if classes is not None else published.classes,
                           "--classes" if classes is not None else f"{published.name} dataset card classes")
    if modality is None and not published.modality:
        raise ValueError(f"{published.name} has no dataset card naming its modality; pass --modality ct or mri")
    splits = published.splits
    if "train" not in splits:
        raise ValueError(f"data set {published.name!r} needs a train split; it has {', '.join(splits)}")
    held_out = next((split for split in EVALUATION_SPLITS if split in splits), None)
    train = splits["train"]
    if held_out is None:  # no split of its own: hold out whole cases, as for folders
        check_validation_fraction(validation_fraction)
        ids = [str(case) for case in train["id"]]
        held = held_out_ids(ids, validation_fraction, seed)
        evaluation = train.select([row for row, case in enumerate(ids) if case in held])
        train = train.select([row for row, case in enumerate(ids) if case not in held])
        held_out = "validation"
    else:
        evaluation = splits[held_out]
    return PreparedDataset(
        name=published.name,
        config_name=published.layout,
        train=train,
        evaluation=evaluation,
        evaluation_split=held_out,
        classes=chosen,
        modality=canonical_modality(modality) if modality is not None else canonical_modality(published.modality),
    )
