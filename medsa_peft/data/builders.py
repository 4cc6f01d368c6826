"""Find and prepare the `datasets` builders of `datasets_scripts/` by a short name, as the examples take them."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import datasets

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
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(BUILDERS)}")
    module_name, class_name = BUILDERS[name]
    return getattr(importlib.import_module(module_name), class_name)


def prepare_dataset(
    name: str = EMBEDDED_DEFAULT,
    config_name: str | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> PreparedDataset:
    """Prepare builder `name` (config `config_name`, manual data in `data_dir`) and return its splits.

    The held-out split is "test" when the builder has one, else "validation".
    """
    builder = builder_class(name)(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir)
    builder.download_and_prepare()
    splits = builder.as_dataset()
    held_out = next((split for split in EVALUATION_SPLITS if split in splits), None)
    if "train" not in splits or held_out is None:
        raise ValueError(f"data set {name!r} ({builder.config.name}) needs a train and a test or validation split")
    return PreparedDataset(
        name=name,
        config_name=builder.config.name,
        train=splits["train"],
        evaluation=splits[held_out],
        evaluation_split=held_out,
        classes={key: tuple(values) for key, values in builder.config.classes.items()},
        modality=builder.config.modality,
    )
