"""Data layer: SAM framing, prompts, training samples and evaluation cases over `datasets` builders."""

from .evaluation import EvaluationCase, evaluation_cases
from .examples import DecodedExample, decode_example, decode_label, is_volume_dataset
from .preprocess import (
    SamFrame,
    covering_windows,
    decoder_targets,
    frame_coordinates,
    frame_images,
    frame_masks,
    normalize_intensity,
    resized_shape,
    sam_logits_to_original,
)
from .prompt_spec import PromptSpec
from .prompts import (
    EmptyMaskError,
    bounding_box,
    click_prompt,
    correction_click,
    jittered_box,
    negative_clicks,
    positive_clicks,
)
from .samples import SamTrainingSamples, collate_sam

__all__ = [
    "DecodedExample",
    "EmptyMaskError",
    "EvaluationCase",
    "PromptSpec",
    "SamFrame",
    "SamTrainingSamples",
    "bounding_box",
    "click_prompt",
    "collate_sam",
    "correction_click",
    "covering_windows",
    "decode_example",
    "decode_label",
    "decoder_targets",
    "evaluation_cases",
    "frame_coordinates",
    "frame_images",
    "frame_masks",
    "is_volume_dataset",
    "jittered_box",
    "negative_clicks",
    "normalize_intensity",
    "positive_clicks",
    "resized_shape",
    "sam_logits_to_original",
]
