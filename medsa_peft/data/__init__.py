"""Data layer: decoding examples, SAM framing, prompts and training samples over `datasets` builders."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".examples": [
            "DecodedExample",
            "class_mask",
            "decode_example",
            "decode_image",
            "decode_label",
            "is_volume_dataset",
        ],
        ".preprocess": [
            "SamFrame",
            "covering_windows",
            "decoder_targets",
            "frame_coordinates",
            "frame_images",
            "frame_masks",
            "intensity_range",
            "normalize_intensity",
            "resize_long_side",
            "resized_shape",
            "sam_logits_to_original",
            "sam_pixel_values",
        ],
        ".prompts": [
            "EmptyMaskError",
            "PromptError",
            "PromptSpec",
            "SlicePrompt",
            "bounding_box",
            "click_prompt",
            "jittered_box",
            "negative_clicks",
            "positive_clicks",
            "prompt_tensors",
        ],
        ".samples": ["SamTrainingSamples", "collate_sam"],
        ".store": ["StoredExample", "default_store_dir", "prepare_examples"],
    },
)
