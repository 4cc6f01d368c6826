"""Switches that make SAM with Med-SA fast: the fused relative-position attention, and compiled layers.

    model = get_peft_model(sam, MedSAConfig(...))
    use_fused_attention(model)     # SAM's attention without its (HW x HW) bias; the depth branch shares its qkv
    compile_sam_layers(model)      # torch.compile every image-encoder layer and two-way block, one graph each

Both keep the function the model computes (up to rounding) and its parameter names.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock, SamVisionLayer

from .layer import MedSALayer, MedSAVisionLayer


def use_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run the frozen spatial attention of every Med-SA image-encoder layer through `adapters.rel_pos_attention`.

    Same function as SAM's attention up to rounding; no (HW x HW) bias is built or stored, so fused attention
    kernels run and memory drops; in 3D the depth branch reuses the layer's qkv projection. `enabled=False` switches
    back to SAM's own attention module. Returns `model`.
    """
    layers = [module for module in model.modules() if isinstance(module, MedSAVisionLayer)]
    if not layers:
        raise ValueError("use_fused_attention found no Med-SA image-encoder layer in the model.")
    for layer in layers:
        layer.fused_attention = enabled
    return model


def compile_sam_layers(model: nn.Module, **compile_kwargs) -> nn.Module:
    """`torch.compile` the forward of every image-encoder layer and two-way block of a SamModel, in place.

    Works with and without adapters (Med-SA, LoRA, none): a Med-SA layer is compiled whole, its SAM block inside it
    is not compiled again. Compiling the layers rather than the model keeps Med-SA's `depth` argument, which forward
    pre-hooks hand to each layer, outside the graphs, so one graph per layer kind serves every call; activation
    checkpointing wraps the compiled layers as it wraps eager ones. `compile_kwargs` go to `torch.compile`.
    Returns `model`.
    """
    wrapped = {id(module.base_layer) for module in model.modules() if isinstance(module, MedSALayer)}
    layers = [
        module
        for module in model.modules()
        if isinstance(module, (MedSALayer, SamVisionLayer, SamTwoWayAttentionBlock)) and id(module) not in wrapped
    ]
    if not layers:
        raise ValueError("compile_sam_layers found no SAM image-encoder layer or two-way block in the model.")
    for layer in layers:
        layer.forward = torch.compile(layer.forward, **compile_kwargs)
    return model
