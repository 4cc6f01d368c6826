"""Every private or undocumented symbol of torch, peft, transformers, accelerate and datasets that medsa_peft uses,
in one place, each with the reason. Nothing else in the package reaches into these libraries' internals.

setup.cfg bounds the versions these were checked against; `tests/test_compat.py` checks that each one still
exists and has the shape we rely on, so an upgrade that moves one fails there, by name, first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

# peft: `register_peft_method` accepts only names of its closed `PeftType` enum, so a new method is written into
# these three lookup tables directly (tuner/registration.py).
from peft.mapping import (  # noqa: F401
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)

# peft: the base classes of a tuner and its layers; peft documents subclassing them for custom methods, but the
# methods below are private hooks that MedSAModel / MedSALayer override or call.
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer  # noqa: F401

# transformers: the base class that gives SAM's vision layers activation checkpointing; MedSAVisionLayer keeps it
# so `gradient_checkpointing_enable()` reaches the re-run layers.
from transformers.modeling_layers import GradientCheckpointingLayer  # noqa: F401

# transformers: the module-level helpers of SAM 2's Hiera block (`Sam2MultiScaleBlock.forward` calls them; not in
# the module's __all__); MedSAHieraLayer re-runs the block with them, so its windows and pooling are SAM 2's own.
from transformers.models.sam2.modeling_sam2 import do_pool as hiera_pool  # noqa: F401
from transformers.models.sam2.modeling_sam2 import window_partition as hiera_window_partition  # noqa: F401
from transformers.models.sam2.modeling_sam2 import window_unpartition as hiera_window_unpartition  # noqa: F401

if TYPE_CHECKING:
    import pyarrow
    from accelerate import Accelerator

__all__ = [
    "BASE_TUNER_HOOKS",
    "BASE_TUNER_LAYER_HOOKS",
    "BaseTuner",
    "BaseTunerLayer",
    "GradientCheckpointingLayer",
    "HIERA_ATTENTION_PARTS",
    "HIERA_BLOCK_PARTS",
    "PEFT_TYPE_TO_CONFIG_MAPPING",
    "PEFT_TYPE_TO_PREFIX_MAPPING",
    "PEFT_TYPE_TO_TUNER_MAPPING",
    "SAM2_VIDEO_SESSION_PARTS",
    "SAM_TWO_WAY_BLOCK_PARTS",
    "SAM_VISION_ATTENTION_PARTS",
    "SAM_VISION_LAYER_PARTS",
    "checkpoint_layers",
    "embed_table_storage",
    "forward_hooks",
    "hiera_pool",
    "hiera_window_partition",
    "hiera_window_unpartition",
    "prepared_models",
    "tensor_version",
]

BASE_TUNER_HOOKS = (
    "_create_and_replace",  # wraps a matched SAM block
    "_prepare_adapter_config",  # no target_modules mapping to fill in
    "_prepare_model",  # applies the SAM variant of converted checkpoints (decoder_block)
    "_post_injection_hook",  # installs the volume hooks on the SamModel
    "_unload_and_optionally_merge",  # removes them again
    "_replace_module",  # puts SAM's own block back on unload
    "_remove_adapter_name_from_key",  # adapter names stand deeper than in LoRA's keys
    "_check_merge_allowed",  # Med-SA cannot be merged
    "_get_module_names_tied_with_embedding",  # skipped without tied weights (EdgeTamModel has no input embeddings)
)
BASE_TUNER_LAYER_HOOKS = (
    "_get_base_layer_device_and_dtype",  # whole SAM blocks have no `.weight`
    "_move_adapter_to_device_of_base_layer",  # leaves meta-device adapters (low_cpu_mem_usage) alone
    "_cast_input_dtype",  # fp32 adapters on a half-precision SAM
)
# transformers: the submodules and helpers of SAM's blocks that the Med-SA layers re-run (tuner/layer.py); the
# blocks' own forwards are monolithic, with no place for an adapter.
SAM_VISION_LAYER_PARTS = ("layer_norm1", "attn", "layer_norm2", "mlp", "window_size", "window_partition", "window_unpartition")
SAM_VISION_ATTENTION_PARTS = ("qkv", "proj", "num_attention_heads", "scale", "use_rel_pos", "get_rel_pos", "rel_pos_h")
# The same for SAM 2's Hiera block (MedSAHieraLayer); `proj` exists in the blocks that change width.
HIERA_BLOCK_PARTS = ("layer_norm1", "attn", "layer_norm2", "mlp", "window_size", "query_stride", "dim", "dim_out")
HIERA_ATTENTION_PARTS = ("qkv", "proj", "num_attention_heads")
SAM_TWO_WAY_BLOCK_PARTS = (
    "self_attn",
    "layer_norm1",
    "cross_attn_token_to_image",
    "layer_norm2",
    "mlp",
    "layer_norm3",
    "cross_attn_image_to_token",
    "layer_norm4",
    "skip_first_layer_pe",
)
# transformers: the methods and attribute of `Sam2VideoInferenceSession` through which Sam2VideoProcessor's
# `add_inputs_to_inference_session` files a frame and a prompt (the session class is public, these members are not
# documented). The predictor frames slices itself (the processor's video processor needs torchvision), so it files
# them the same way (`MedSAPredictor.propagate_masks`).
SAM2_VIDEO_SESSION_PARTS = ("add_new_frame", "obj_id_to_idx", "add_point_inputs", "obj_with_new_inputs")


def forward_hooks(module: torch.nn.Module) -> Iterator[tuple[Callable[..., Any], bool]]:
    """The forward hooks registered on `module`, each with whether it takes keyword arguments.

    torch keeps them in `_forward_hooks` / `_forward_hooks_with_kwargs`. A Med-SA layer runs the hooks of the SAM
    block it wraps, whose own forward never runs: transformers records `output_hidden_states` and attentions
    through such hooks.
    """
    for hook_id, hook in list(module._forward_hooks.items()):
        yield hook, hook_id in module._forward_hooks_with_kwargs


def checkpoint_layers(model: torch.nn.Module, checkpoint: Callable[..., Any]) -> None:
    """Switch on activation checkpointing with `checkpoint` in every transformers `GradientCheckpointingLayer` of
    `model`, a PreTrainedModel, through `PreTrainedModel._set_gradient_checkpointing`: the public
    `activation_checkpointing_enable` refuses models whose class does not declare `supports_gradient_checkpointing`,
    as `Sam2Model` does not, although its Hiera and two-way blocks are such layers."""
    model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=checkpoint)


def tensor_version(tensor: torch.Tensor) -> int:
    """The in-place version counter of `tensor` (`Tensor._version`), which every in-place write bumps: optimiser
    steps, `copy_`, `load_state_dict`. The predictor's image-embedding cache compares it to notice changed weights."""
    return tensor._version


def prepared_models(accelerator: Accelerator) -> list[torch.nn.Module]:
    """The models `accelerator.prepare` has wrapped, in order (`Accelerator._models`; no public accessor)."""
    return accelerator._models


def embed_table_storage(table: pyarrow.Table) -> pyarrow.Table:
    """`datasets.table.embed_table_storage`: the file references of Image / Nifti columns turned into embedded bytes,
    before a parquet export (datasets_scripts/_common.py); datasets uses it in its own `push_to_hub`, with no public
    alias. Imported on use: datasets is slow to import."""
    from datasets.table import embed_table_storage as embed

    return embed(table)
