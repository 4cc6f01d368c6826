"""A data set published the Hugging Face way, and read back: parquet shards with every file embedded, and a
dataset card whose YAML carries the classes and the modality.

`export_dataset` writes a prepared data set (any builder or folder) as

    README.md                                the dataset card: classes, modality, spacing, source, license
    data/train-00000-of-00001.parquet        one or more shards per split, NIfTI / image files as bytes
    data/test-00000-of-00001.parquet         the held-out split, under its own name (test or validation)

`push_dataset` uploads that folder as one commit; `load_published` reads it back, from the Hub, from a local
copy, from a lone parquet file or from a `save_to_disk` folder.

Classes and modality live in the card's YAML, under `medsa_peft:`, because the card is the one piece of a data
set's metadata that the Hub shows, that `datasets.load_dataset` reads (its `configs`), that
`DatasetDict.push_to_hub` keeps when it updates a card (it rewrites its own keys only), and that is read offline
from the Hub cache like any file. `DatasetInfo.description` is not kept in the YAML that `push_to_hub` writes,
and custom parquet schema metadata is dropped when `load_dataset` converts the files to Arrow.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow.compute as pc
from huggingface_hub import DatasetCard, DatasetCardData, HfApi, snapshot_download

from datasets_scripts._common import CorruptDataError, MissingDataError, export_parquet
from datasets_scripts.folder import detect_layout

if TYPE_CHECKING:
    from .builders import PreparedDataset

__all__ = [
    "CARD_SECTION",
    "PublishedDataset",
    "card_metadata",
    "dataset_card",
    "export_dataset",
    "load_published",
    "push_dataset",
]

logger = logging.getLogger(__name__)

CARD_SECTION = "medsa_peft"  # the card's YAML key holding classes and modality
DATA_FOLDER = "data"
MAX_SHARD_BYTES = 500 * 2**20  # the Hub's advice: parquet files of a few hundred MB
ROWS_PER_GROUP = {"volume": 1, "picture": 16}  # a row group is read whole: one volume, or a handful of pictures
REQUIRED_COLUMNS = ("id", "image", "label")


@dataclass
class PublishedDataset:
    """A published data set as loaded: its splits, and the classes ({name: values}) and modality of its card
    (None where it has no card). `name` is the Hub id, or the file's or folder's name (never its path)."""

    name: str
    layout: str
    splits: datasets.DatasetDict
    classes: dict | None
    modality: str | None


# ----------------------------------------------------------------------------------------------------------
# Export


def _stored_bytes(split: datasets.Dataset) -> int:
    """Bytes the image and label files of `split` take once embedded, from the Arrow storage, decoding nothing."""
    total = 0
    raw = split.select_columns(["image", "label"]).with_format("arrow")
    for batch in raw.iter(batch_size=256):
        for name in ("image", "label"):
            column = batch.column(name).combine_chunks()
            sizes = pc.binary_length(column.field("bytes")).to_pylist()
            paths = column.field("path").to_pylist()
            total += sum(size if size is not None else os.path.getsize(path) for size, path in zip(sizes, paths))
    return total


def _kind(split: datasets.Dataset) -> str:
    return "volume" if isinstance(split.features["image"], datasets.Nifti) else "picture"


def _spacing_text(splits: list[datasets.Dataset]) -> str:
    """"2 x 2 x 2 mm", or each axis' range when examples differ."""
    spacings = np.array([list(spacing) for split in splits for spacing in split["spacing"]], dtype=np.float64)
    axes = []
    for low, high in zip(spacings.min(axis=0), spacings.max(axis=0)):
        axes.append(f"{low:g}" if math.isclose(low, high, rel_tol=1e-4) else f"{low:g}-{high:g}")
    return " x ".join(axes) + " mm"


def dataset_card(
    data: PreparedDataset, data_files: dict[str, list[str]], license: str = "unknown", repo_id: str | None = None
) -> DatasetCard:
    """The card of an exported data set: YAML with the license, the `configs` that `load_dataset` reads (the
    exact shard files of each split) and the `medsa_peft` section (classes, modality, source), and a body
    with the same facts for people. `repo_id`: the Hub id the commands of the body name."""
    splits = {"train": data.train, data.evaluation_split: data.evaluation}
    where = repo_id or "user/name"
    kind = _kind(data.train)
    source = f"{data.name} ({data.config_name})"
    card_data = DatasetCardData(
        license=license,
        pretty_name=data.name,
        task_categories=["image-segmentation"],
        tags=["medical", "medsa-peft", data.modality, "3d" if kind == "volume" else "2d"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": files} for split, files in data_files.items()],
            }
        ],
        **{
            CARD_SECTION: {
                "classes": {name: list(values) for name, values in data.classes.items()},
                "modality": data.modality,
                "source": data.name,
                "source_config": data.config_name,
            }
        },
    )
    class_rows = "\n".join(f"| {name} | {', '.join(map(str, values))} |" for name, values in data.classes.items())
    split_rows = "\n".join(f"| {split} | {len(rows)} |" for split, rows in splits.items())
    body = f"""
# {data.name}

Medical image segmentation, exported by `medsa-peft export-dataset` from {source}: one example per
{"3D volume (NIfTI)" if kind == "volume" else "2D picture"}, with its integer label map.

| | |
|---|---|
| modality (intensity rule) | {data.modality} |
| spacing | {_spacing_text(list(splits.values()))} |
| source layout | {source} |
| license | {license} |

| class | label values |
|---|---|
{class_rows}

| split | examples |
|---|---|
{split_rows}

Columns: `id`, `image` and `label` ({"`datasets.Nifti`" if kind == "volume" else "`datasets.Image`"}), `spacing`
(mm). The mask of a class is `numpy.isin(label, values)`. Classes and modality are also in this card's YAML,
under `{CARD_SECTION}`, where `medsa-peft` reads them.

```python
from datasets import load_dataset

splits = load_dataset("{where}")
```

```bash
accelerate launch examples/train.py --dataset {where}
```

The license above is the one given when the data set was exported; the terms of the source data set apply.
"""
    return DatasetCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def export_dataset(
    data: PreparedDataset,
    out_dir: str | os.PathLike,
    license: str = "unknown",
    repo_id: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write `data` (from `prepare_dataset`) to `out_dir` as parquet shards of at most about `max_shard_bytes`
    each, plus its dataset card (`repo_id`: the Hub id it will be pushed to, named in the card's commands).
    `out_dir` must be absent or empty; the folder is staged beside it and renamed whole, so it is never left
    half-written. `--dataset out_dir` and `datasets.load_dataset(out_dir)` read it."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; export into a new folder")
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left by an export of this process id that was killed
    staging.mkdir(parents=True)  # not mkdtemp: the folder gets the user's usual permissions
    try:
        data_files = {}
        for split, rows in (("train", data.train), (data.evaluation_split, data.evaluation)):
            count = max(1, min(len(rows), math.ceil(_stored_bytes(rows) / max_shard_bytes)))
            names = [f"{DATA_FOLDER}/{split}-{index:05d}-of-{count:05d}.parquet" for index in range(count)]
            for index, name in enumerate(names):
                shard = rows.shard(num_shards=count, index=index, contiguous=True)
                export_parquet(shard, staging / name, rows_per_group=ROWS_PER_GROUP[_kind(rows)])
            data_files[split] = names
            logger.info(f"{split}: {len(rows)} examples in {count} parquet file(s)")
        dataset_card(data, data_files, license, repo_id).save(staging / "README.md")
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def push_dataset(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload an exported folder to the Hub data set `repo_id`; returns the commit's URL.

    The card lists the exact shard files of this export, so shards left in the repository by an earlier,
    larger export are not read."""
    folder = Path(folder)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    commit = api.upload_folder(
        repo_id=repo_id, repo_type="dataset", folder_path=folder, commit_message="Upload data set (medsa-peft)"
    )
    logger.info(f"pushed {folder.name} to the Hub as the data set {repo_id}")
    return commit.commit_url


# ----------------------------------------------------------------------------------------------------------
# Read back


def card_metadata(readme: Path) -> dict:
    """The `medsa_peft` section of a dataset card ({} when the card or the section is absent)."""
    if not readme.is_file():
        return {}
    try:
        section = DatasetCard.load(readme).data.to_dict().get(CARD_SECTION) or {}
    except ValueError as error:  # huggingface_hub's error for YAML it cannot parse
        raise CorruptDataError(f"{readme}: not a readable dataset card ({error})") from error
    if not isinstance(section, dict):
        raise CorruptDataError(f"{readme}: '{CARD_SECTION}' must be a mapping with 'classes' and 'modality'")
    return section


def _hub_snapshot(repo_id: str) -> Path:
    """The local copy of Hub data set `repo_id`: downloaded, or read from the Hub cache when offline."""
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["README.md", "*.parquet"]))
    except OSError as error:  # not found, no network and not cached, no access
        raise MissingDataError(f"data set {repo_id!r}: no builder, file or folder of that name, and the Hub data "
                               f"set cannot be read ({error})") from error


def load_published(source: str, cache_dir: str | None = None) -> PublishedDataset:
    """Load a published data set: a Hub id (`user/name`), a folder of parquet files (an export), one parquet
    file, or a `save_to_disk` folder. Its card (README.md at its root) gives classes and modality."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{path}: --dataset takes a .parquet file, a folder, a builder name or a Hub id")
        root, name, layout = None, path.stem, "parquet"
        splits = datasets.load_dataset("parquet", data_files={"train": str(path.resolve())}, cache_dir=cache_dir)
    else:
        root, name = (path.resolve(), path.resolve().name) if path.is_dir() else (_hub_snapshot(source), source)
        layout = detect_layout(root)
        if layout == "save_to_disk":
            loaded = datasets.load_from_disk(str(root))
            splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
        elif layout == "parquet":
            splits = datasets.load_dataset(str(root), cache_dir=cache_dir)
        else:
            raise ValueError(f"{root}: a {layout} folder, not a published data set")
    for split, rows in splits.items():
        missing = [column for column in REQUIRED_COLUMNS if column not in rows.column_names]
        if missing or not isinstance(rows.features["image"], (datasets.Nifti, datasets.Image)):
            found = ", ".join(f"{column}: {type(feature).__name__}" for column, feature in rows.features.items())
            raise CorruptDataError(
                f"{name} ({split}): needs columns id, image and label (NIfTI or image features) as medsa-peft "
                f"export-dataset writes them; found {found}"
            )
    metadata = card_metadata(root / "README.md") if root is not None else {}
    return PublishedDataset(name, layout, splits, metadata.get("classes"), metadata.get("modality"))
