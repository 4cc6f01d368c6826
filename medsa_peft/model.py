"""`MedSAModel`: the PEFT tuner that puts Med-SA layers into a transformers `SamModel`."""

from __future__ import annotations

import numbers
import re
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock, SamVisionLayer

from .config import MedSAConfig
from .layer import NOT_MERGEABLE, MedSALayer, MedSATwoWayLayer, MedSAVisionLayer


def resolve_depth(pixel_values: torch.Tensor | None, depth: Any) -> int | None:
    """The number of slices per volume in a forward call, or None for a 2D call.

    `pixel_values` is (B * D, 3, H, W) with `depth=D`, or (B, D, 3, H, W). Raises ValueError when the two
    disagree, when D < 1, or when the batch does not split into volumes of D slices.
    """
    five_d = pixel_values is not None and pixel_values.dim() == 5
    if depth is None:
        return pixel_values.shape[1] if five_d else None
    if isinstance(depth, torch.Tensor) and depth.numel() == 1:
        depth = depth.item()
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise ValueError(f"depth must be a positive int (slices per volume), got {depth!r}.")
    depth = int(depth)
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}.")
    if pixel_values is None:
        return depth
    if five_d:
        if pixel_values.shape[1] != depth:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} hold {pixel_values.shape[1]} slices per volume, "
                f"but depth={depth}."
            )
    elif pixel_values.shape[0] % depth != 0:
        raise ValueError(
            f"A batch of {pixel_values.shape[0]} slices does not split into volumes of depth={depth}; pass "
            "pixel_values as (B * D, 3, H, W) ordered volume by volume, or as (B, D, 3, H, W)."
        )
    return depth


def _flatten_volumes(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """SamModel forward pre-hook: drop `depth` and turn 5-D pixel_values into (B * D, 3, H, W)."""
    kwargs.pop("depth", None)
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 5:
        args = (args[0].flatten(0, 1),) + tuple(args[1:])
    pixel_values = kwargs.get("pixel_values")
    if pixel_values is not None and pixel_values.dim() == 5:
        kwargs["pixel_values"] = pixel_values.flatten(0, 1)
    return args, kwargs


class MedSAModel(BaseTuner):
    """Med-SA on a transformers `SamModel` (DESIGN.md section 3).

    Use it through PEFT: `get_peft_model(sam, MedSAConfig())` returns a PeftModel whose forward takes SamModel's
    arguments plus `depth`: `model(pixel_values=(B*D, 3, H, W), depth=D, input_boxes=(B*D, 1, 4))` or
    pixel_values (B, D, 3, H, W). Prompts come one set per slice.
    """

    prefix: str = "medsa_"
    tuner_layer_cls = MedSALayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: MedSAConfig, model_config: dict) -> MedSAConfig:
        return peft_config

    def _create_and_replace(
        self,
        peft_config: MedSAConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if isinstance(target, MedSALayer):
            target.update_layer(adapter_name, peft_config)
            return
        if isinstance(target, SamVisionLayer):
            new_module = MedSAVisionLayer(target, adapter_name, peft_config)
        elif isinstance(target, SamTwoWayAttentionBlock):
            new_module = MedSATwoWayLayer(target, adapter_name, peft_config, self._num_decoder_output_tokens())
        else:
            raise ValueError(
                f"Med-SA wraps SamVisionLayer and SamTwoWayAttentionBlock modules; target_modules matched "
                f"'{current_key}', a {type(target).__name__}."
            )
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        if isinstance(new_module, MedSALayer):
            super()._replace_module(parent, child_name, new_module, child)
        else:  # unloading: put SAM's own block back; PEFT's version expects a layer with a `.weight`
            setattr(parent, child_name, new_module)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """`...medsa_space_adapter.<name>.fc1.weight` -> `...medsa_space_adapter.fc1.weight` in saved files.

        PEFT's default only strips a name that stands second to last, as in `lora_A.<name>.weight`; Med-SA's
        adapters are small modules, so the name stands deeper.
        """
        return re.sub(rf"(\.{cls.prefix}[a-z_]+)\.{re.escape(adapter_name)}\.", r"\1.", key)

    def _num_decoder_output_tokens(self) -> int:
        """The IoU token plus the mask tokens that precede the sparse prompt tokens in the decoder."""
        return 1 + self.model.config.mask_decoder_config.num_multimask_outputs + 1

    def _check_merge_allowed(self) -> None:
        raise ValueError(NOT_MERGEABLE)

    def _vision_layers(self) -> list[MedSAVisionLayer]:
        return [module for module in self.model.modules() if isinstance(module, MedSAVisionLayer)]

    def _active_adapter_has_depth(self) -> bool:
        return any(
            layer.has_depth_adapter(name) for layer in self._vision_layers() for name in layer.active_adapters
        )

    @contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any):
        """Carry `depth` from the forward call to every image-encoder layer as a forward argument.

        The layer pre-hooks put `depth` into the layers' own call arguments, so activation checkpointing, which
        re-runs a layer's forward during backward with the arguments it saved, sees the same depth.
        """
        pixel_values = kwargs.get("pixel_values", args[0] if args else None)
        depth = resolve_depth(pixel_values, kwargs.get("depth"))
        if depth is not None and not self._active_adapter_has_depth():
            raise ValueError(
                f"depth={depth} was given, but the active Med-SA adapter {self.active_adapters} has no depth "
                "adapter; create it with MedSAConfig(depth_adapter=True) to segment volumes."
            )
        handles = [self.model.register_forward_pre_hook(_flatten_volumes, with_kwargs=True)]
        if depth is not None:
            for layer in self._vision_layers():
                handles.append(
                    layer.register_forward_pre_hook(
                        lambda module, layer_args, layer_kwargs: (layer_args, {**layer_kwargs, "depth": depth}),
                        with_kwargs=True,
                    )
                )
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, *args: Any, **kwargs: Any):
        with self._enable_peft_forward_hooks(*args, **kwargs):
            return self.model(*args, **kwargs)
