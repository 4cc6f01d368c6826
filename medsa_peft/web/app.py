"""The web demo's state and work, apart from HTTP: uploaded images, their clicks and masks, the pictures the page
shows.

An upload opens a `DemoSession` around the predictor's `InteractiveSession` (click, look, correct: each click
segments its slice again from all the slice's clicks, fed the slice's previous mask, and the image embedding is
computed once per slice). The page shows the image as a stack of slices (rows, columns, slices) in the file's
voxel order, the order prompts are given in (`inference.prompts`): a picture is one slice, a volume's slice z is
`array[:, :, z]`, a single non-axial slice is the picture it is stored as. The download is the mask of every slice
in the input's geometry, written by `Prediction.save`.

Messages of errors name the uploaded file by its own name, never by where the demo keeps it (`public_message`).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..constants import DEFAULT_MAX_IMAGE_BYTES, MODALITIES
from ..files import atomic_path
from ..inference.predictor import InteractiveSession, MedSAPredictor, Prediction
from ..io import MedicalImage, Reorientation, file_suffix, read_image
from ..overlay import class_colour, overlay

__all__ = ["DemoApp", "DemoError", "DemoSession", "SessionNotFoundError", "load_demo_predictor"]

logger = logging.getLogger(__name__)

MAX_SESSIONS = 8  # images kept at once; the oldest is dropped (with its files) when a new one is uploaded
SERIES_FOLDER = "series"  # where the files of a several-file upload (a DICOM series) are put together
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._ -]")


class DemoError(ValueError):
    """A request the demo cannot serve: its message is shown in the page."""


class SessionNotFoundError(KeyError):
    """No uploaded image has this session id (never uploaded, or dropped for newer ones)."""


def load_demo_predictor(
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> MedSAPredictor:
    """The demo's predictor: SAM + a Med-SA adapter, or SAM alone without `adapter`.

    model: a SamModel folder or Hub id; default: the adapter's base model, or the shipped tiny SAM
    (`tiny_sam.default_model_path`) when there is no adapter or the adapter names no base model (as the offline
    demo's adapter, trained on that SAM, does), so that the demo runs offline.
    """
    from ..tiny_sam import default_model_path

    if model is None and (adapter is None or not _names_base_model(adapter)):
        model = default_model_path()
    return MedSAPredictor.from_pretrained(adapter, model, device=device, dtype=dtype, progress=False)


def _names_base_model(adapter: str | os.PathLike) -> bool:
    """Whether the adapter's config names its base model (True too when there is no config to read: loading the
    adapter then says what is wrong)."""
    from peft import PeftConfig

    try:
        return bool(PeftConfig.from_pretrained(str(adapter)).base_model_name_or_path)
    except (OSError, ValueError, KeyError):
        return True


def _slice_stack(array: np.ndarray, image: MedicalImage) -> np.ndarray:
    """A view of `array` (in the file's voxel order: `image.array` or a mask) as (rows, columns, slices[, 3])."""
    if not image.is_volume:
        return array[:, :, None]
    axes = Reorientation(image.affine, image.spatial_shape).slice_axes
    return np.transpose(array, (*axes, *range(3, array.ndim)))


class DemoSession:
    """One uploaded image, its clicks and its mask.

    name: the upload's file name (a several-file upload: `SERIES_FOLDER`). `prediction` is the mask of every slice
    so far, `history` the slice of every click not undone, oldest first. `click` is the demo's only model call,
    through the predictor's `InteractiveSession`.
    """

    def __init__(
        self, id: str, folder: Path, name: str, image: MedicalImage, modality: str | None, predictor: MedSAPredictor
    ):
        self.id, self.folder, self.name, self.image, self.modality = id, folder, name, image, modality
        self.predictor = predictor
        self.lock = threading.Lock()
        self.start_over()

    def start_over(self) -> None:
        """Forget every click."""
        self.interactive: InteractiveSession = self.predictor.session(self.image, self.modality)
        self.prediction: Prediction = self.interactive.prediction()
        self.history: list[int] = []

    def click(self, z: int, x: float, y: float, label: int) -> None:
        """Add the click (x, y) with `label` (1 object, 0 background) to slice z and segment that slice again."""
        self.prediction = self.interactive.click(x, y, label, z)
        self.history.append(z)

    def undo(self) -> int:
        """Take the last click back; the slice it was on."""
        if not self.history:
            raise DemoError(f"{self.name}: no click to undo")
        self.prediction = self.interactive.undo()
        return self.history.pop()

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, columns, slices) of the slice stack."""
        return _slice_stack(self.prediction.mask, self.image).shape

    @property
    def mask_name(self) -> str:
        """The download's file name: `<stem>_mask.nii.gz` for volumes, `<stem>_mask.png` for pictures."""
        suffix = file_suffix(Path(self.name))
        stem = self.name[: -len(suffix)] if suffix else self.name
        return f"{stem}_mask{'.nii.gz' if self.image.is_volume else '.png'}"

    def describe(self) -> dict:
        """What the page needs to know about the image (JSON)."""
        rows, columns, slices = self.shape
        return {
            "session": self.id,
            "name": self.name,
            "volume": self.image.is_volume,
            "width": columns,
            "height": rows,
            "slices": slices,
            "mask_name": self.mask_name,
        }

    def state(self, z: int | None) -> dict:
        """The clicks of every slice, and the mask pixels and SAM's predicted IoU of slice z (JSON)."""
        clicks = {
            str(index): [[float(x), float(y), int(label)] for (x, y), label in zip(prompt.points, prompt.labels)]
            for index, prompt in self.interactive.prompts.items()
        }
        if z is None:
            return {"slice": None, "pixels": 0, "iou": None, "clicks": clicks}
        pixels = int(np.count_nonzero(_slice_stack(self.prediction.mask, self.image)[:, :, z]))
        scores = self.prediction.iou_scores
        iou = float(scores[z, 0]) if scores is not None and z < len(scores) else math.nan
        return {"slice": z, "pixels": pixels, "iou": iou if math.isfinite(iou) else None, "clicks": clicks}


class DemoApp:
    """The demo's sessions over one predictor; thread-safe, model calls one at a time.

    workdir: where uploads and masks are kept (a new temporary folder by default, removed by `close`).
    max_image_bytes: refuse uploads larger than this once decoded (`read_image`).
    """

    def __init__(
        self,
        predictor: MedSAPredictor,
        workdir: str | os.PathLike | None = None,
        max_image_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES,
    ):
        self.predictor, self.max_image_bytes = predictor, max_image_bytes
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="medsa-demo-") if workdir is None else workdir)
        self._sessions: OrderedDict[str, DemoSession] = OrderedDict()
        self._sessions_lock, self._model_lock = threading.Lock(), threading.Lock()

    def __enter__(self) -> DemoApp:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Drop every session and its files (and the working folder the app made)."""
        with self._sessions_lock:
            for session in self._sessions.values():
                shutil.rmtree(session.folder, ignore_errors=True)
            self._sessions.clear()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def upload(self, files: Sequence[tuple[str, bytes]], modality: str | None = None) -> DemoSession:
        """Open a session on uploaded files: one NIfTI, DICOM or PNG / JPEG file, or the files of a DICOM series.

        files: (file name, content) pairs. modality: the intensity rule (`MODALITIES`); None: the file's (DICOM
        Modality tag, "photo" for pictures; NIfTI must say).
        """
        if not files:
            raise DemoError("no file was uploaded; choose a NIfTI, DICOM, PNG or JPEG file")
        if modality is not None and modality not in MODALITIES:
            raise DemoError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        session_id = secrets.token_urlsafe(9)
        folder = self.workdir / session_id
        try:
            source = _store(folder, files)
            image = read_image(source, max_bytes=self.max_image_bytes)
            session = DemoSession(session_id, folder, source.name, image, modality, self.predictor)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._sessions_lock:
            self._sessions[session_id] = session
            while len(self._sessions) > MAX_SESSIONS:
                _, dropped = self._sessions.popitem(last=False)
                shutil.rmtree(dropped.folder, ignore_errors=True)
                logger.info("session %s dropped for newer ones", dropped.id)
        logger.info("session %s: %s, %s of shape %s", session_id, session.name, image.kind, image.array.shape)
        return session

    def session(self, session_id: str) -> DemoSession:
        with self._sessions_lock:
            if session_id not in self._sessions:
                raise SessionNotFoundError(
                    f"no image has session {session_id!r} (the server keeps the {MAX_SESSIONS} latest uploads); "
                    "upload the image again"
                )
            return self._sessions[session_id]

    def click(self, session_id: str, z: int, x: float, y: float, label: int) -> dict:
        """Add a click to slice z (x: column, y: row, label 1: object, 0: background) and segment the slice again;
        the session's `state`."""
        session = self.session(session_id)
        _check_slice(session, z)
        numbers = isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x + y)
        if not numbers or isinstance(x, bool) or isinstance(y, bool):
            raise DemoError(f"a click's x and y are finite numbers, got {x!r}, {y!r}")
        if isinstance(label, bool) or label not in (0, 1):
            raise DemoError(f"a click's label is 1 (object) or 0 (background), got {label!r}")
        with session.lock, self._model_lock:
            session.click(z, x, y, label)
            return session.state(z)

    def undo(self, session_id: str) -> dict:
        """Take the session's last click back; its `state` at the slice of that click."""
        session = self.session(session_id)
        with session.lock:
            return session.state(session.undo())

    def start_over(self, session_id: str) -> dict:
        """Forget every click of the session; its `state`."""
        session = self.session(session_id)
        with session.lock:
            session.start_over()
            return session.state(None)

    def slice_png(self, session_id: str, z: int) -> bytes:
        """PNG of slice z with its mask tinted and outlined (`overlay.overlay`)."""
        session = self.session(session_id)
        _check_slice(session, z)
        with session.lock:
            prediction = session.prediction
        picture = _slice_stack(prediction.normalized, session.image)[:, :, z]
        mask = _slice_stack(prediction.mask, session.image)[:, :, z]
        buffer = io.BytesIO()
        overlay(picture, [(mask, class_colour(0))]).save(buffer, format="PNG")
        return buffer.getvalue()

    def mask_file(self, session_id: str) -> Path:
        """Write the session's mask in its input's geometry and format (`Prediction.save`); its path."""
        session = self.session(session_id)
        with session.lock:
            prediction = session.prediction
        return prediction.save(session.folder / "mask" / session.mask_name)

    def public_message(self, error: BaseException) -> str:
        """`error` as one line for the page; an uploaded file is named by its own name, not by where it is kept."""
        text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return re.sub(re.escape(f"{self.workdir}{os.sep}") + r"[\w-]+" + re.escape(os.sep), "", first)


def _store(folder: Path, files: Sequence[tuple[str, bytes]]) -> Path:
    """Write the uploaded files into `folder`; the path to read: the file, or the series folder."""
    target = folder if len(files) == 1 else folder / SERIES_FOLDER
    target.mkdir(parents=True)
    names = set()
    for name, content in files:
        safe = _UNSAFE_NAME_CHARACTERS.sub("_", Path(name.replace("\\", "/")).name).strip(" .")
        if not safe:
            raise DemoError(f"the uploaded file name {name!r} is empty once cleaned; rename the file")
        if safe in names:
            raise DemoError(f"two uploaded files are named {safe}")
        names.add(safe)
        with atomic_path(target / safe) as temporary:
            temporary.write_bytes(content)
    return target / safe if len(files) == 1 else target


def _check_slice(session: DemoSession, z: int) -> None:
    slices = session.shape[2]
    if isinstance(z, bool) or not isinstance(z, int) or not 0 <= z < slices:
        raise DemoError(f"slice {z!r} does not exist; {session.name} has slices 0 to {slices - 1}")
