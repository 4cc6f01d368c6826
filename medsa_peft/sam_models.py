"""The SAM family by checkpoint: which transformers class a folder or Hub id holds, loaded as that class.

    sam = load_sam("facebook/sam2.1-hiera-tiny")   # a Sam2Model: SAM 2's image predictor
    frame = SamFrame.from_config(sam.config)
    tracker = load_sam("facebook/sam2.1-hiera-tiny", video=True)   # a Sam2VideoModel, memory included

`examples/train.py --model_name_or_path`, `medsa-peft predict --model` and the predictor's base model of an adapter
all load their SAM here, so a SAM-HQ or SAM 2 checkpoint trains and predicts as its own class. A SAM 2 video
checkpoint (model_type "sam2_video", as the Hub's SAM 2.1 repos are) loads as `Sam2Model`, the image predictor
whose weights it holds; its memory modules are left out. `video=True` loads it as the `Sam2VideoModel` it is, for
propagating a mask from one prompted slice through a volume (`MedSAPredictor.propagate_file`).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, PreTrainedModel, Sam2Model, Sam2VideoModel, SamHQModel, SamModel

__all__ = ["SAM_CLASSES", "SAM_VIDEO_CLASSES", "load_sam", "sam_class"]

# config model_type -> the class that trains and predicts with it
SAM_CLASSES: dict[str, type[PreTrainedModel]] = {
    "sam": SamModel,
    "sam_hq": SamHQModel,
    "sam2": Sam2Model,
    "sam2_video": Sam2Model,
}
# config model_type -> the class that tracks a mask from slice to slice with it (`load_sam(..., video=True)`)
SAM_VIDEO_CLASSES: dict[str, type[PreTrainedModel]] = {"sam2_video": Sam2VideoModel}


def sam_class(source: str | os.PathLike, video: bool = False) -> type[PreTrainedModel]:
    """The class of `SAM_CLASSES` (`SAM_VIDEO_CLASSES` with `video`) for the checkpoint's config.json. Raises
    FileNotFoundError when there is no config to read, ValueError for a model_type outside the SAM family (with
    `video`: other than a SAM 2 video model's)."""
    try:
        model_type = AutoConfig.from_pretrained(str(source)).model_type
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"cannot load the SAM model {str(source)!r} ({reason})") from error
    except (KeyError, ValueError) as error:  # a model_type transformers does not know
        raise ValueError(f"{source}: its config.json names no model type transformers knows ({error})") from error
    if video and model_type not in SAM_VIDEO_CLASSES:
        raise ValueError(
            f"{source}: a {model_type!r} model, not a SAM 2 video model; propagating from one slice needs a "
            f"checkpoint of model type {', '.join(SAM_VIDEO_CLASSES)} (the Hub's SAM 2.1 repos are)"
        )
    if video:
        return SAM_VIDEO_CLASSES[model_type]
    if model_type not in SAM_CLASSES:
        raise ValueError(
            f"{source}: a {model_type!r} model; medsa-peft trains and runs the model types {', '.join(SAM_CLASSES)}"
        )
    return SAM_CLASSES[model_type]


def load_sam(source: str | os.PathLike, dtype: torch.dtype | None = None, video: bool = False) -> PreTrainedModel:
    """The SAM of a local folder or Hub id as its own class (`sam_class`), in `dtype` (default: float32). `video`: a
    SAM 2 video checkpoint as `Sam2VideoModel` (image encoder, decoder and memory), any other checkpoint refused."""
    model_class = sam_class(source, video)
    try:
        return model_class.from_pretrained(str(source), **({} if dtype is None else {"dtype": dtype}))
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"cannot load the SAM model {str(source)!r} ({reason})") from error
