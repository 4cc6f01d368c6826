"""Find and prepare the `datasets` builders of `datasets_scripts/` by a short name, or a local folder by its
layout, as the examples take them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import datasets

from datasets_scripts.folder import canonical_modality, folder_builder, parse_classes

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
EMBEDDED_DEFAULT = "mni152"
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


def builder_class(name: str) -> type[datasets.DatasetBuilder]:
    """The builder class registered under `name` (see `BUILDERS`)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(BUILDERS)} or a local folder")
    module_name, class_name = BUILDERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def prepare_dataset(
    name: str = EMBEDDED_DEFAULT,
    config_name: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    *,
    channel: int = 0,
    modality: str | None = None,
    classes: str | dict | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> PreparedDataset:
    """Prepare builder `name` (config `config_name`, manual data in `data_dir`), or the local folder `name`
    (`datasets_scripts.folder`: its layout recognised), and return its splits.

    `modality` and `classes` ({"name": [values]}, a dict or a JSON string) override the builder's or folder's;
    `channel`, `validation_fraction` and `seed` apply to folders. The held-out split is "test" when the builder
    has one, else "validation".
    """
    overrides = {}
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
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(BUILDERS)} or a local folder")
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
    )
