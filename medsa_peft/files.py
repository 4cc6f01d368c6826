"""Writing files atomically: nothing half-written is ever left under the final name. Every file the package
writes goes through `atomic_path` (JSON, PNG, NIfTI, parquet, arrays); folders are staged and renamed whole."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

# mkstemp creates files readable by their owner only; the files written here are a user's outputs, so they get
# the permissions any new file of theirs gets (read once: os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = [
    "atomic_path",
    "write_json",
    "write_png",
]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed.

    `suffix` keeps writers that choose the format from the file name (".nii.gz", ".png") working.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(data, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    return Path(path)


def write_png(picture: np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Write a picture, a PIL image or a uint8 (H, W) / (H, W, 3) array, to `path` as PNG, atomically."""
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"{path}: this writes PNG files; give a path ending in .png")
    if not isinstance(picture, Image.Image):
        picture = Image.fromarray(np.asarray(picture, np.uint8))
    with atomic_path(path, suffix=".png") as temporary:
        picture.save(temporary, format="PNG")
    return Path(path)
