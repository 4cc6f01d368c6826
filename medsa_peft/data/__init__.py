"""Data layer: SAM framing, prompts, training samples and evaluation cases over `datasets` builders."""

from .evaluation import EvaluationCase, evaluation_cases
from .examples import DecodedExample, class_mask, decode_example, decode_image, decode_label, is_volume_dataset
from .preprocess import (
    SamFrame,
    covering_windows,
    decoder_targets,
    frame_coordinates,
    frame_images,
    frame_masks,
    intensity_range,
    normalize_intensity,
    resize_long_side,
    resized_shape,
    sam_logits_to_original,
    sam_pixel_values,
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
from .store import StoredExample, default_store_dir, prepare_examples

__all__ = [
    "DecodedExample",
    "EmptyMaskError",
    "EvaluationCase",
    "PromptSpec",
    "SamFrame",
    "SamTrainingSamples",
    "StoredExample",
    "bounding_box",
    "class_mask",
    "click_prompt",
    "collate_sam",
    "correction_click",
    "covering_windows",
    "decode_example",
    "decode_image",
    "decode_label",
    "decoder_targets",
    "default_store_dir",
    "evaluation_cases",
    "frame_coordinates",
    "frame_images",
    "frame_masks",
    "intensity_range",
    "is_volume_dataset",
    "jittered_box",
    "negative_clicks",
    "normalize_intensity",
    "positive_clicks",
    "prepare_examples",
    "resize_long_side",
    "resized_shape",
    "sam_logits_to_original",
    "sam_pixel_values",
]
