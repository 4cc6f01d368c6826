"""Switches that make SAM with Med-SA fast or small: the fused relative-position attention, compiled layers, and
activation checkpointing for every model of the family.

    model = get_peft_model(sam, MedSAConfig(...))
    use_fused_attention(model)     # SAM's attention without its (HW x HW) bias; the depth branch shares its qkv
    compile_sam_layers(model)      # torch.compile every image-encoder layer, the prompt encoder and the mask decoder
    enable_activation_checkpointing(model)   # also on Sam2Model, which transformers' own switch refuses

All three keep the function the model computes (up to rounding) and its parameter names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn
from transformers.models.sam.modeling_sam import (
    SamMaskDecoder,
    SamPromptEncoder,
    SamTwoWayAttentionBlock,
    SamVisionLayer,
)

from ..compat import checkpoint_layers
from .layer import MedSAHieraLayer, MedSALayer, MedSAVisionLayer

__all__ = [
    "compile_sam_layers",
    "enable_activation_checkpointing",
    "use_fused_attention",
]


def use_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run the frozen spatial attention of every Med-SA image-encoder layer through `adapters.rel_pos_attention`.

    Same function as SAM's attention up to rounding; no (HW x HW) bias is built or stored, so fused attention
    kernels run and memory drops; in 3D the depth branch reuses the layer's qkv projection. `enabled=False` switches
    back to SAM's own attention module. Returns `model`. SAM 2's Hiera blocks have no relative-position bias and run
    transformers' attention kernels already; they are left as they are.
    """
    layers = [
        module
        for module in model.modules()
        if isinstance(module, MedSAVisionLayer) and not isinstance(module, MedSAHieraLayer)
    ]
    if not layers:
        raise ValueError("use_fused_attention found no Med-SA image-encoder layer of a SAM ViT in the model.")
    for layer in layers:
        layer.fused_attention = enabled
    return model


def compile_sam_layers(model: nn.Module, whole_decoder: bool = True, **compile_kwargs) -> nn.Module:
    """`torch.compile`, in place, the forward of every image-encoder layer of a SamModel, and of its prompt encoder
    and mask decoder as two whole graphs.

    Works with and without adapters (Med-SA, LoRA, none; copies that PEFT's `modules_to_save` keeps included): a
    Med-SA layer is compiled whole, its SAM block inside it is not compiled again. The image encoder is compiled
    layer by layer, so Med-SA's `depth` argument, which forward pre-hooks hand to each layer, stays outside the
    graphs and one graph per layer kind serves every call; activation checkpointing wraps the compiled layers as
    it wraps eager ones. The decoder side runs once per step on few tokens, so its cost is kernel launches: one
    graph for all of it (its two-way blocks, final attention, upscaling, hypernetwork MLPs and IoU head) launches
    a few fused kernels where eager mode launches hundreds. `whole_decoder=False` compiles only the decoder's
    two-way blocks instead, one graph each. `compile_kwargs` go to `torch.compile` (e.g. `mode="reduce-overhead"`
    for CUDA graphs). Returns `model`.
    """
    whole = (SamPromptEncoder, SamMaskDecoder) if whole_decoder else ()
    kinds = (MedSALayer, SamVisionLayer, SamTwoWayAttentionBlock) + whole
    covered = {id(module.base_layer) for module in model.modules() if isinstance(module, MedSALayer)}
    for module in model.modules():
        if isinstance(module, whole):
            covered.update(id(inner) for inner in module.modules() if inner is not module)
    layers = [module for module in model.modules() if isinstance(module, kinds) and id(module) not in covered]
    if not any(isinstance(layer, (MedSAVisionLayer, SamVisionLayer)) for layer in layers):
        raise ValueError("compile_sam_layers found no SAM image-encoder layer in the model.")
    for layer in layers:
        layer.forward = torch.compile(layer.forward, **compile_kwargs)
    return model


def enable_activation_checkpointing(model: nn.Module, use_reentrant: bool = False) -> nn.Module:
    """Activation checkpointing of every image-encoder layer and two-way block (transformers'
    `GradientCheckpointingLayer`s, Med-SA's vision layers among them) of a SAM-family model or of the PeftModel
    around it: what `gradient_checkpointing_enable()` does on a SamModel, also on a `Sam2Model`, whose class does
    not declare the support although its blocks have it. `depth` reaches the re-run layers as in docs/design.md.
    With `use_reentrant=True` the patch embeddings' output is made to require gradients, so that the adapters inside
    the checkpointed layers get theirs, and tensors a layer takes by keyword are differentiated too. Returns `model`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if use_reentrant:
        checkpoint_layers(base, _reentrant_checkpoint)
        base.enable_input_require_grads()
    else:
        checkpoint_layers(base, functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False))
    return model


def _reentrant_checkpoint(function: Callable[..., Any], *args: Any) -> Any:
    """torch's reentrant checkpoint, given a transformers layer's `partial(forward, layer, **kwargs)`, with the
    tensors among `kwargs` passed as positional arguments.

    Reentrant checkpointing differentiates through its positional tensors only: a tensor bound in the partial gets
    no gradient. SAM 2's mask decoder calls its two-way blocks with `queries=` and `keys=` (the image embedding), so
    the trained decoder and every encoder adapter above the last feature map would get none.
    """
    if not isinstance(function, functools.partial):
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=True)
    names = [name for name, value in function.keywords.items() if isinstance(value, torch.Tensor)]
    others = {name: value for name, value in function.keywords.items() if name not in names}

    def forward(*values: Any) -> Any:
        tensors = dict(zip(names, values[len(args) :]))
        return function.func(*function.args, *values[: len(args)], **others, **tensors)

    keyword_tensors = [function.keywords[name] for name in names]
    return torch.utils.checkpoint.checkpoint(forward, *args, *keyword_tensors, use_reentrant=True)
