"""Tiny SAMs that run on a CPU: the one the package ships, and tiny configs to build others.

`default_model_path()` is a `SamModel.save_pretrained` folder: a 128 x 128 SAM (16 x 16 tokens) trained in full by
`scripts/pretrain_tiny_sam.py` to segment the object a box or clicks point at, on grey-level images of random
shapes. It gives the offline demo a real starting point; its README.md says how it was made and how well it does.

`tiny_sam_config` is the architecture family it was built from; `randomize_weights` gives a SAM built from a config
real weights, since `SamModel(config)` starts from near-zero ones (`SamVisionConfig.initializer_range` is 1e-10)
and computes almost nothing. Benchmarks and tests run on such models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

__all__ = ["default_model_path", "randomize_weights", "tiny_sam_config"]


def default_model_path() -> Path:
    """The folder of the shipped tiny SAM (config.json, model.safetensors, README.md)."""
    return Path(__file__).resolve().parent / "assets" / "sam-tiny-shapes"


def tiny_sam_config(
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    window_size: int = 4,
    global_attn_indexes: tuple[int, ...] = (1,),
    prompt_hidden_size: int = 32,
) -> SamConfig:
    """A SamConfig small enough for CPU tests: `image_size / patch_size` tokens per side.

    With the defaults the token grid is 8 x 8, layer 0 attends in 4 x 4 windows and layer 1 globally.
    """
    vision = SamVisionConfig(
        hidden_size=hidden_size,
        output_channels=prompt_hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        window_size=window_size,
        global_attn_indexes=list(global_attn_indexes),
        mlp_dim=hidden_size * 2,
        num_pos_feats=prompt_hidden_size // 2,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=prompt_hidden_size, image_size=image_size, patch_size=patch_size, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=prompt_hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=prompt_hidden_size * 2,
        iou_head_hidden_dim=prompt_hidden_size,
    )
    return SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )


@torch.no_grad()
def randomize_weights(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a real random value in place: normal(0, std), layer-norm weights near 1."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator) * std
        if "layer_norm" in name and name.endswith("weight"):
            noise = noise + 1.0
        param.copy_(noise.to(param.dtype))
    return model
