"""`MedSAModel`: the PEFT tuner that puts Med-SA layers into a transformers SAM-family model (SAM, SAM-HQ, SAM 2)."""

from __future__ import annotations

import numbers
import re
from typing import Any

import torch
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock

from ..compat import BaseTuner
from .config import MedSAConfig
from .layer import (
    NOT_MERGEABLE,
    TWO_WAY_BLOCKS,
    WRAPPED_BLOCKS,
    MedSALayer,
    MedSATwoWayLayer,
    MedSAVisionLayer,
    use_decoder_block,
)

__all__ = [
    "MedSAModel",
    "add_volume_hooks",
    "remove_volume_hooks",
    "resolve_depth",
]

# The attribute of a SamModel that holds the handles of its volume hooks (`add_volume_hooks`).
VOLUME_HOOKS = "_medsa_volume_hooks"
# The embeddings of the output tokens a SAM-family mask decoder puts before the sparse prompt tokens: the IoU and
# mask tokens, SAM-HQ's HQ token, the SAM 2 models' object-score token.
OUTPUT_TOKEN_EMBEDDINGS = ("obj_score_token", "iou_token", "mask_tokens", "hq_token")


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


def _enter_sam_call(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """SamModel forward pre-hook: take `depth` out of the call, give it to every Med-SA image-encoder layer, and
    turn 5-D pixel_values into (B * D, 3, H, W). Raises ValueError for a depth that the call cannot use."""
    pixel_values = kwargs.get("pixel_values", args[0] if args else None)
    if not isinstance(pixel_values, torch.Tensor):  # a SAM 2 video model's first argument is its inference session
        pixel_values = None
    depth = resolve_depth(pixel_values, kwargs.pop("depth", None))
    layers = [module for module in model.modules() if isinstance(module, MedSALayer)]
    vision_layers = [layer for layer in layers if isinstance(layer, MedSAVisionLayer)]
    if depth is not None:
        # Disabled or deleted adapters leave SAM, which takes the slices one by one: then any depth is fine.
        running = {layer._current_adapter() for layer in layers} - {None}
        if running and not any(layer.has_depth_adapter(name) for layer in vision_layers for name in running):
            raise ValueError(
                f"depth={depth} was given, but the active Med-SA adapter {sorted(running)} has no depth adapter; "
                "create it with MedSAConfig(depth_adapter=True) to segment volumes."
            )
    for layer in vision_layers:
        layer.volume_depth = depth
    if pixel_values is not None and pixel_values.dim() == 5:
        if "pixel_values" in kwargs:
            kwargs["pixel_values"] = pixel_values.flatten(0, 1)
        else:
            args = (pixel_values.flatten(0, 1), *args[1:])
    return args, kwargs


def _leave_sam_call(model: nn.Module, args: tuple, output: Any) -> None:
    """SamModel forward hook, run on errors too: the next call starts without a depth."""
    for module in model.modules():
        if isinstance(module, MedSAVisionLayer):
            module.volume_depth = None


def add_volume_hooks(model: nn.Module) -> None:
    """Let `model`, a SamModel with Med-SA layers, take `depth` and 5-D pixel_values in its own forward (idempotent).

    Hooks on the SamModel itself, not on the PeftModel, so that volumes work the same through
    `peft.inject_adapter_in_model`, through a PeftModel, and under `disable_adapter()`.
    """
    if hasattr(model, VOLUME_HOOKS):
        return
    setattr(
        model,
        VOLUME_HOOKS,
        (
            model.register_forward_pre_hook(_enter_sam_call, with_kwargs=True),
            model.register_forward_hook(_leave_sam_call, always_call=True),
        ),
    )


def remove_volume_hooks(model: nn.Module) -> None:
    """Undo `add_volume_hooks`: a plain SamModel again."""
    for handle in getattr(model, VOLUME_HOOKS, ()):
        handle.remove()
    if hasattr(model, VOLUME_HOOKS):
        delattr(model, VOLUME_HOOKS)


class MedSAModel(BaseTuner):
    """Med-SA on a transformers `SamModel`, `SamHQModel` or `Sam2Model` (docs/design.md); the SAM 2 models built
    from the same blocks (video, tracker) get adapters wherever their blocks are in `WRAPPED_BLOCKS`.

    Use it through PEFT: `get_peft_model(sam, MedSAConfig())` returns a PeftModel whose forward takes SamModel's
    arguments plus `depth`: `model(pixel_values=(B*D, 3, H, W), depth=D, input_boxes=(B*D, 1, 4))` or
    pixel_values (B, D, 3, H, W). Prompts come one set per slice. The SamModel itself takes them too
    (`add_volume_hooks`), so `peft.inject_adapter_in_model` and `disable_adapter()` see volumes as well.
    """

    prefix: str = "medsa_"
    tuner_layer_cls = MedSALayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: MedSAConfig, model_config: dict) -> MedSAConfig:
        return peft_config

    def _prepare_model(self, peft_config: MedSAConfig, model: nn.Module) -> None:
        """Apply the SAM variant the adapter was trained on (`decoder_block`; `pad_windows_before_norm` is read by
        the vision layers). It describes the base model, so every adapter of the model must agree on it."""
        variant = (peft_config.decoder_block, peft_config.pad_windows_before_norm)
        for name, other in self.peft_config.items():
            if other is not peft_config and (other.decoder_block, other.pad_windows_before_norm) != variant:
                raise ValueError(
                    f"adapter {name!r} runs SAM with decoder_block={other.decoder_block!r}, "
                    f"pad_windows_before_norm={other.pad_windows_before_norm}; the new adapter with "
                    f"decoder_block={variant[0]!r}, pad_windows_before_norm={variant[1]}. Adapters of one model "
                    "must agree on these: load it on its own SAM."
                )
        if peft_config.decoder_block != "sam":
            others = {
                type(module).__name__
                for module in model.modules()
                if isinstance(module, TWO_WAY_BLOCKS) and not isinstance(module, SamTwoWayAttentionBlock)
            }
            if others:
                raise ValueError(
                    f"decoder_block={peft_config.decoder_block!r} describes SAM checkpoints of the authors' code; "
                    f"this model's decoder is built from {sorted(others)}: use decoder_block='sam'."
                )
        use_decoder_block(model, peft_config.decoder_block)
        self._check_encoder_is_adaptable(peft_config, model)

    @staticmethod
    def _check_encoder_is_adaptable(peft_config: MedSAConfig, model: nn.Module) -> None:
        """Refuse, before PEFT's generic "no modules were targeted", a configuration whose encoder adapters are all it
        has, or whose depth adapter needs them, on a model whose image encoder Med-SA does not wrap (the SAM 3 tracker's
        ViT, EdgeTAM's RepViT): there only the decoder's two-way blocks can carry adapters."""
        if not peft_config.encoder_adapters or not isinstance(peft_config.target_modules, str):
            return  # nothing asked of the encoder, or target_modules listed by name (PEFT reports a missing one)
        encoder_blocks = [block for block, layer in WRAPPED_BLOCKS.items() if layer is not MedSATwoWayLayer]
        if any(isinstance(module, tuple(encoder_blocks)) for module in model.modules()):
            return
        if peft_config.depth_adapter or not peft_config.decoder_adapters:
            wanted = "a depth adapter (SD-Trans)" if peft_config.depth_adapter else "encoder adapters only"
            raise ValueError(
                f"this MedSAConfig asks for {wanted}, but {type(model).__name__}'s image encoder has none of the "
                f"layers Med-SA adapts ({', '.join(sorted(block.__name__ for block in encoder_blocks))}); on this "
                "model only the mask decoder's two-way blocks take adapters: use MedSAConfig(depth_adapter=False) "
                "with the decoder adapters (the default), or MedSAConfig(space_adapter=False, mlp_adapter=False)."
            )

    def _get_module_names_tied_with_embedding(self) -> list[str]:
        """None where the model declares no tied weights, as every SAM-family model does: PEFT's check would read
        `get_input_embeddings()`, which EdgeTamModel, unlike its siblings, does not implement."""
        if not getattr(self.model, "_tied_weights_keys", None):
            return []
        return super()._get_module_names_tied_with_embedding()

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
        layer_class = next((WRAPPED_BLOCKS[kind] for kind in type(target).__mro__ if kind in WRAPPED_BLOCKS), None)
        if layer_class is None:
            blocks = ", ".join(sorted(kind.__name__ for kind in WRAPPED_BLOCKS))
            raise ValueError(
                f"Med-SA wraps the image-encoder layers and two-way blocks of the SAM family ({blocks}); "
                f"target_modules matched '{current_key}', a {type(target).__name__}."
            )
        if layer_class is MedSATwoWayLayer:
            output_tokens = self._num_decoder_output_tokens(current_key)
            new_module = MedSATwoWayLayer(target, adapter_name, peft_config, output_tokens)
        else:
            new_module = layer_class(target, adapter_name, peft_config)
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

    def _num_decoder_output_tokens(self, block_key: str) -> int:
        """The output tokens that precede the sparse prompt tokens in the decoder that holds the two-way block
        `block_key` (`<decoder>.transformer.layers.<i>`): SAM 1 IoU + 4 mask tokens, SAM-HQ one HQ token more,
        SAM 2 one object-score token more."""
        decoder = self.model.get_submodule(block_key.rsplit(".transformer.", 1)[0])
        return sum(getattr(decoder, name).num_embeddings for name in OUTPUT_TOKEN_EMBEDDINGS if hasattr(decoder, name))

    def _check_merge_allowed(self) -> None:
        raise ValueError(NOT_MERGEABLE)

    def _post_injection_hook(self, model: nn.Module, config: MedSAConfig, adapter_name: str) -> None:
        add_volume_hooks(model)

    def _unload_and_optionally_merge(self, *args: Any, **kwargs: Any) -> nn.Module:
        model = super()._unload_and_optionally_merge(*args, **kwargs)
        remove_volume_hooks(model)
        use_decoder_block(model, "sam")
        return model
