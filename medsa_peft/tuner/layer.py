"""Med-SA tuner layers: the image-encoder layers and mask-decoder blocks of the SAM family, each wrapped whole.

transformers' `SamVisionLayer.forward`, `Sam2MultiScaleBlock.forward` and the two-way blocks' forwards are
monolithic, so each wrapper re-runs its block through the base block's own submodules (layer norms, attention,
MLP) and adds the adapters where docs/design.md puts them. SAM-HQ's blocks are SAM's, and every SAM 2 model
builds its decoder from the same two-way block, so three wrappers serve the family: `WRAPPED_BLOCKS` says which
wraps which block class. The adapter math lives in `adapters.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.models.edgetam.modeling_edgetam import EdgeTamTwoWayAttentionBlock
from transformers.models.edgetam_video.modeling_edgetam_video import EdgeTamVideoTwoWayAttentionBlock
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock, SamVisionLayer
from transformers.models.sam2.modeling_sam2 import Sam2MultiScaleBlock, Sam2TwoWayAttentionBlock
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoTwoWayAttentionBlock
from transformers.models.sam3_tracker.modeling_sam3_tracker import Sam3TrackerTwoWayAttentionBlock
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoTwoWayAttentionBlock
from transformers.models.sam_hq.modeling_sam_hq import SamHQTwoWayAttentionBlock, SamHQVisionLayer

from ..compat import (
    BaseTunerLayer,
    GradientCheckpointingLayer,
    forward_hooks,
    hiera_pool,
    hiera_window_partition,
    hiera_window_unpartition,
)
from .adapters import (
    BottleneckAdapter,
    HyperPromptAdapter,
    adapter_width,
    depth_attention,
    rel_pos_attention,
)
from .config import MedSAConfig

__all__ = [
    "MedSA2024TwoWayAttentionBlock",
    "MedSAHieraLayer",
    "MedSALayer",
    "MedSATwoWayLayer",
    "MedSAVisionLayer",
    "TWO_WAY_BLOCKS",
    "WRAPPED_BLOCKS",
    "two_way_block_forward",
    "use_decoder_block",
]


NOT_MERGEABLE = (
    "Med-SA adapters are non-linear (GELU/ReLU bottlenecks, depth attention, prompt-generated weights) "
    "and cannot be merged into SAM's weights. Keep the PeftModel, or call unload() for plain SAM."
)


def _pass_volume_depth(layer: MedSAVisionLayer, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: hand the slices per volume of the current SamModel call to the layer as its `depth`
    argument, so activation checkpointing, which re-runs `forward` with the arguments it saved, sees it too."""
    if layer.volume_depth is not None and "depth" not in kwargs:
        kwargs = {**kwargs, "depth": layer.volume_depth}
    return args, kwargs


def _run_base_layer_hooks(layer: MedSALayer, args: tuple, kwargs: dict, output: Any) -> Any:
    """Forward hook: run the forward hooks registered on the wrapped SAM block, whose own forward never runs.

    transformers records `output_hidden_states` and `mask_decoder_attentions` through hooks on SamVisionLayer and
    SamTwoWayAttentionBlock modules (`_can_record_outputs`), installed on the blocks before or after wrapping.
    """
    base = layer.base_layer
    for hook, with_kwargs in forward_hooks(base):
        result = hook(base, args, kwargs, output) if with_kwargs else hook(base, args, output)
        if result is not None:
            output = result
    return output


class MedSALayer(BaseTunerLayer):
    """What both Med-SA layers share: per-adapter containers and the choice of the one active adapter."""

    other_param_names = ("mlp_adapter_scale",)

    def _init_medsa_layer(self, base_layer: nn.Module, features: int) -> None:
        """Hold the SAM block, its width and the per-adapter containers; relay the block's forward hooks."""
        self.base_layer = base_layer
        # PEFT's helpers read a tuner layer's width from these; a SAM block maps C features to C features.
        self.in_features = self.out_features = features
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict())
        self.mlp_adapter_scale: dict[str, float] = {}
        self.register_forward_hook(_run_base_layer_hooks, with_kwargs=True)

    def _new_adapter(self, features: int, config: MedSAConfig) -> BottleneckAdapter:
        return BottleneckAdapter(
            features,
            adapter_width(features, config.bottleneck_ratio),
            activation=config.activation,
            zero_init=config.init == "zero",
        )

    def _get_base_layer_device_and_dtype(self, base_layer: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
        """Those of the SAM block's first floating parameter: PEFT's version reads a `.weight`, which whole blocks
        don't have. PEFT's `_move_adapter_to_device_of_base_layer` then moves new adapters there, leaving adapters
        created on the meta device (`low_cpu_mem_usage=True`) for the state dict to fill."""
        for param in base_layer.parameters():
            if param.is_floating_point():
                return param.device, param.dtype
        return None, None

    def _finish_update(self, adapter_name: str, config: MedSAConfig) -> None:
        self.mlp_adapter_scale[adapter_name] = config.mlp_adapter_scale
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def _adapt(self, adapter: nn.Module, hidden_states: torch.Tensor, *context: torch.Tensor) -> torch.Tensor:
        """`adapter(hidden_states, *context)` in the adapter's dtype, returned in the dtype of `hidden_states`.

        PEFT keeps adapters in float32 on a bf16 or fp16 SAM (`autocast_adapter_dtype=True`). Under torch.autocast
        the adapter's ops already run in the autocast dtype, so nothing is cast (a cast would only copy activations).
        """
        device_type = hidden_states.device.type
        if device_type != "meta" and torch.is_autocast_enabled(device_type):  # meta: no autocast (op counting)
            return adapter(hidden_states, *context)
        dtype = next(adapter.parameters()).dtype
        inputs = (self._cast_input_dtype(tensor, dtype) for tensor in (hidden_states, *context))
        return adapter(*inputs).to(hidden_states.dtype)

    def _current_adapter(self) -> str | None:
        """The adapter that runs now, or None when adapters are disabled or none is on this layer."""
        if self.disable_adapters:
            return None
        active = [name for name in self.active_adapters if name in self._get_available_adapters()]
        if len(active) > 1:
            raise ValueError(
                f"Med-SA adapters are non-linear and run one at a time; active adapters: {active}. "
                "Call set_adapter with a single name."
            )
        return active[0] if active else None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(NOT_MERGEABLE)

    def unmerge(self) -> None:
        """Nothing is ever merged."""


class MedSAVisionLayer(GradientCheckpointingLayer, MedSALayer):
    """A `SamVisionLayer` (or SAM-HQ's, the same block) with Space, MLP and SD-Trans depth adapters.

    Input and output: (N, H, W, C) tokens, N = B * D images ordered volume by volume when `depth` = D.
    """

    adapter_layer_names = ("medsa_space_adapter", "medsa_mlp_adapter", "medsa_depth_adapter")

    def __init__(self, base_layer: SamVisionLayer, adapter_name: str, config: MedSAConfig):
        super().__init__()
        self._init_medsa_layer(base_layer, self.block_width(base_layer))
        # Slices per volume of the SamModel call in progress, set by MedSAModel's hooks; None: 2D.
        self.volume_depth: int | None = None
        self.register_forward_pre_hook(_pass_volume_depth, with_kwargs=True)
        # False: SAM's own attention module runs. `fast_paths.use_fused_attention` switches to `rel_pos_attention`,
        # the same function with no (HW x HW) bias, whose qkv projection the depth branch then reuses.
        self.fused_attention = False
        # The authors' code pads windows before layer_norm1 (MedSAConfig.pad_windows_before_norm); model-wide.
        self.pad_windows_before_norm = False
        self.update_layer(adapter_name, config)

    @staticmethod
    def block_width(block: nn.Module) -> int:
        """The width the block's attention and MLP output, C, at which the adapters work."""
        return block.layer_norm1.normalized_shape[0]

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        features = self.out_features
        switches = zip(self.adapter_layer_names, (config.space_adapter, config.mlp_adapter, config.depth_adapter))
        for container_name, enabled in switches:
            if enabled:
                getattr(self, container_name)[adapter_name] = self._new_adapter(features, config)
        self.pad_windows_before_norm = config.pad_windows_before_norm
        self._finish_update(adapter_name, config)

    def has_depth_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.medsa_depth_adapter

    @property
    def window_size(self) -> int:
        """The wrapped block's attention window, 0 for global attention: SAM-HQ's encoder reads it from its layers
        to collect the outputs of the global ones for its HQ features."""
        return self.base_layer.window_size

    def _normed_windows(self, hidden_states: torch.Tensor, normed: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The layer-normed tokens cut into windows, and the padded grid size.

        SAM pads the normed grid with zeros. With `pad_windows_before_norm` the raw grid is padded and normed
        after, so padding tokens enter attention as layer_norm1's bias, as in the authors' code.
        """
        base = self.base_layer
        if self.pad_windows_before_norm:
            windows, padding_shape = base.window_partition(hidden_states, base.window_size)
            return base.layer_norm1(windows), padding_shape
        return base.window_partition(normed, base.window_size)

    def _sam_attention(self, hidden_states: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """SAM's frozen windowed or global attention module on the normed tokens, relative positions included."""
        base = self.base_layer
        if base.window_size > 0:
            height, width = normed.shape[1:3]
            windows, padding_shape = self._normed_windows(hidden_states, normed)
            attended = base.attn(windows)[0]
            return base.window_unpartition(attended, base.window_size, padding_shape, (height, width))
        return base.attn(normed)[0]

    def _fused_attention(
        self, hidden_states: torch.Tensor, normed: torch.Tensor, keep_qkv: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same attention through `rel_pos_attention`, and with `keep_qkv` the qkv projection of the
        un-windowed tokens, (N, H, W, 3 C), for the depth branch."""
        base = self.base_layer
        window = base.window_size
        if window == 0:
            qkv_states = base.attn.qkv(normed)
            return rel_pos_attention(base.attn, qkv_states), qkv_states
        height, width = normed.shape[1:3]
        windows, padding_shape = self._normed_windows(hidden_states, normed)
        qkv_windows = base.attn.qkv(windows)
        attended = rel_pos_attention(base.attn, qkv_windows)
        attended = base.window_unpartition(attended, window, padding_shape, (height, width))
        if not keep_qkv:
            return attended, None
        return attended, base.window_unpartition(qkv_windows, window, padding_shape, (height, width))

    def _attention(
        self, hidden_states: torch.Tensor, normed: torch.Tensor, keep_qkv: bool, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's frozen attention on the normed tokens, (N, H, W, C), and, where the fused path computed it
        anyway, the qkv projection of the whole grid for the depth branch (else None)."""
        if self.fused_attention:
            return self._fused_attention(hidden_states, normed, keep_qkv=keep_qkv)
        return self._sam_attention(hidden_states, normed), None

    def _residual(self, hidden_states: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """What the attention output is added to: the layer input."""
        return hidden_states

    def _depth_qkv(self, normed: torch.Tensor) -> torch.Tensor:
        """The frozen qkv projection of the whole token grid, (N, H, W, 3 C), that the depth branch attends with."""
        return self.base_layer.attn.qkv(normed)

    def forward(self, hidden_states: torch.Tensor, depth: int = 1, **kwargs) -> torch.Tensor:
        base = self.base_layer
        adapter = self._current_adapter()
        with_depth = adapter in self.medsa_depth_adapter
        normed = base.layer_norm1(hidden_states)
        residual = self._residual(hidden_states, normed)
        attended, qkv_states = self._attention(hidden_states, normed, keep_qkv=with_depth, **kwargs)
        if adapter in self.medsa_space_adapter:
            attended = attended + self._adapt(self.medsa_space_adapter[adapter], attended)
        if with_depth:
            if qkv_states is None:
                qkv_states = self._depth_qkv(normed)
            across_slices = depth_attention(qkv_states, depth, base.attn.proj, base.attn.num_attention_heads)
            attended = attended + self._adapt(self.medsa_depth_adapter[adapter], across_slices)
        hidden_states = residual + attended
        normed = base.layer_norm2(hidden_states)
        update = base.mlp(normed)
        if adapter in self.medsa_mlp_adapter:
            update = update + self.mlp_adapter_scale[adapter] * self._adapt(self.medsa_mlp_adapter[adapter], normed)
        return hidden_states + update


class MedSAHieraLayer(MedSAVisionLayer):
    """A SAM 2 Hiera `Sam2MultiScaleBlock` with the Space, MLP and SD-Trans depth adapters of `MedSAVisionLayer`.

    The adapters work at the block's output width `dim_out` and on its output grid: a block that starts a stage
    projects its input from the previous stage's width and pools its queries (`query_stride`), so its output grid
    is smaller than its input grid. The depth branch attends over the slices of each output token, with q, k and v
    pooled as the block pools its queries. Input (N, H, W, dim), output (N, H', W', dim_out), N = B * D.
    """

    def __init__(self, base_layer: Sam2MultiScaleBlock, adapter_name: str, config: MedSAConfig):
        super().__init__(base_layer, adapter_name, config)
        self.in_features = base_layer.dim

    @staticmethod
    def block_width(block: Sam2MultiScaleBlock) -> int:
        return block.dim_out

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        if config.pad_windows_before_norm:
            raise ValueError(
                "pad_windows_before_norm describes the SAM ViT of the authors' converted checkpoints; SAM 2's Hiera "
                "encoder has no such variant."
            )
        super().update_layer(adapter_name, config)

    def _residual(self, hidden_states: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """As `Sam2MultiScaleBlock`: where the width changes, the normed input projected and pooled."""
        base = self.base_layer
        if base.dim != base.dim_out:
            return hiera_pool(base.proj(normed), base.query_stride)
        return hidden_states

    def _attention(
        self, hidden_states: torch.Tensor, normed: torch.Tensor, keep_qkv: bool, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's windowed or global attention with query pooling, as `Sam2MultiScaleBlock.forward` runs it."""
        base = self.base_layer
        window = base.window_size
        if window == 0:
            return base.attn(normed, **kwargs), None
        height, width = normed.shape[1:3]
        windows, padded_size = hiera_window_partition(normed, window)
        attended = base.attn(windows, **kwargs)
        if base.query_stride:
            # pooled queries: each window now holds window / stride tokens a side, on the pooled grid
            window = window // base.query_stride[0]
            height, width = height // base.query_stride[0], width // base.query_stride[1]
            padded_size = (height + (-height) % window, width + (-width) % window)
        return hiera_window_unpartition(attended, window, padded_size, (height, width)), None

    def _depth_qkv(self, normed: torch.Tensor) -> torch.Tensor:
        """The frozen qkv projection, (N, H', W', 3 dim_out): in a block that pools, q, k and v are each pooled as
        the block pools its queries, so the depth branch runs on the block's output grid."""
        base = self.base_layer
        return hiera_pool(base.attn.qkv(normed), base.query_stride)


class MedSATwoWayLayer(nn.Module, MedSALayer):
    """A two-way block of a SAM-family mask decoder (`TWO_WAY_BLOCKS`) with HyP-Adpt, a query MLP adapter and a
    key adapter. The blocks of SAM, SAM-HQ and the SAM 2 models have the same submodules and computation.

    queries: (B, P, T_out + T_prompt, C) output tokens then sparse prompt tokens; keys: (B * P, 1, HW, C).
    """

    adapter_layer_names = ("medsa_hyper_adapter", "medsa_query_adapter", "medsa_key_adapter")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MedSAConfig, num_output_tokens: int):
        super().__init__()
        self._init_medsa_layer(base_layer, base_layer.layer_norm1.normalized_shape[0])
        # The decoder puts its output tokens (IoU, mask, SAM-HQ's HQ, SAM 2's object score) before the sparse prompt
        # tokens (SamMaskDecoder.forward and its copies); MedSAModel counts them.
        self.num_output_tokens = num_output_tokens
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        features = self.in_features
        if config.hyper_adapter:
            self.medsa_hyper_adapter[adapter_name] = HyperPromptAdapter(
                features, config.hyper_dim, zero_init=config.init == "zero"
            )
        if config.decoder_mlp_adapter:
            self.medsa_query_adapter[adapter_name] = self._new_adapter(features, config)
        if config.decoder_key_adapter:
            self.medsa_key_adapter[adapter_name] = self._new_adapter(features, config)
        self._finish_update(adapter_name, config)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_point_embedding: torch.Tensor,
        key_point_embedding: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        adapter = self._current_adapter()
        prompt_tokens = query_point_embedding[:, :, self.num_output_tokens :, :]
        if adapter in self.medsa_hyper_adapter and prompt_tokens.shape[2] > 0:
            keys = keys + self._adapt(self.medsa_hyper_adapter[adapter], keys, prompt_tokens)
        query_update = key_update = None
        if adapter in self.medsa_query_adapter:
            scale = self.mlp_adapter_scale[adapter]
            query_update = lambda normed: scale * self._adapt(self.medsa_query_adapter[adapter], normed)  # noqa: E731
        if adapter in self.medsa_key_adapter:
            key_update = lambda updated: self._adapt(self.medsa_key_adapter[adapter], updated)  # noqa: E731
        return two_way_block_forward(
            self.base_layer,
            queries,
            keys,
            query_point_embedding,
            key_point_embedding,
            attention_similarity,
            query_update=query_update,
            key_update=key_update,
        )


def two_way_block_forward(
    block: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_point_embedding: torch.Tensor,
    key_point_embedding: torch.Tensor,
    attention_similarity: torch.Tensor | None = None,
    query_update: Callable[[torch.Tensor], torch.Tensor] | None = None,
    key_update: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A SAM-family two-way block through the block's own submodules, with two places for adapters.

    `query_update(queries)` is added to the MLP's update of the queries, `key_update(keys)` to the keys after the
    image-to-token attention. A block of class `MedSA2024TwoWayAttentionBlock` runs the authors' self-attention.

    Returns:
        queries, keys, and the image-to-token attention output, as SamTwoWayAttentionBlock.
    """
    if getattr(block, "residual_self_attention", False):
        if not block.skip_first_layer_pe:
            queries = queries + query_point_embedding
        queries = queries + block.self_attn(query=queries, key=queries, value=queries)[0]
    elif block.skip_first_layer_pe:
        queries = block.self_attn(query=queries, key=queries, value=queries)[0]
    else:
        query = queries + query_point_embedding
        queries = queries + block.self_attn(query=query, key=query, value=queries)[0]
    queries = block.layer_norm1(queries)

    query = queries + query_point_embedding
    key = keys + key_point_embedding
    attended = block.cross_attn_token_to_image(
        query=query, key=key, value=keys, attention_similarity=attention_similarity
    )[0]
    queries = block.layer_norm2(queries + attended)

    update = block.mlp(queries)
    if query_update is not None:
        update = update + query_update(queries)
    queries = block.layer_norm3(queries + update)

    query = queries + query_point_embedding
    key = keys + key_point_embedding
    attended = block.cross_attn_image_to_token(query=key, key=query, value=queries)[0]
    keys = keys + attended
    if key_update is not None:
        keys = keys + key_update(keys)
    keys = block.layer_norm4(keys)
    return queries, keys, attended  # as SAM's block: the image-to-token attention output (callers drop it)


class MedSA2024TwoWayAttentionBlock(SamTwoWayAttentionBlock):
    """SAM's two-way block as the authors' code has computed it since January 2024 (`decoder_block="medsa-2024"`).

    Its self-attention keeps the residual in the first block, `queries = norm1(queries + self_attn(queries))`, and
    later blocks first add the prompt positional embedding to the running queries, so it enters q, k, v and the
    residual. Same submodules and weights as SamTwoWayAttentionBlock; `use_decoder_block` switches a block's class.
    """

    residual_self_attention = True

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_point_embedding: torch.Tensor,
        key_point_embedding: torch.Tensor,
        attention_similarity: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return two_way_block_forward(
            self, queries, keys, query_point_embedding, key_point_embedding, attention_similarity
        )


DECODER_BLOCKS = {"sam": SamTwoWayAttentionBlock, "medsa-2024": MedSA2024TwoWayAttentionBlock}


def use_decoder_block(model: nn.Module, variant: str) -> None:
    """Make every two-way block of `model` compute as `variant` ("sam" or "medsa-2024"), in place.

    The class of each block is switched (same submodules and weights). A tuner layer cannot carry the variant:
    PEFT never wraps modules inside `modules_to_save`, and the authors' checkpoints train the whole mask decoder
    that way, so the variant has to live in the decoder's own blocks, and in the copy PEFT trains.
    """
    block_class = DECODER_BLOCKS[variant]
    for module in model.modules():
        if type(module) in DECODER_BLOCKS.values():
            module.__class__ = block_class



# The two-way blocks of the SAM family's mask decoders: one computation, a class per model (transformers copies it).
TWO_WAY_BLOCKS = (
    SamTwoWayAttentionBlock,
    SamHQTwoWayAttentionBlock,
    Sam2TwoWayAttentionBlock,
    Sam2VideoTwoWayAttentionBlock,
    Sam3TrackerTwoWayAttentionBlock,
    Sam3TrackerVideoTwoWayAttentionBlock,
    EdgeTamTwoWayAttentionBlock,
    EdgeTamVideoTwoWayAttentionBlock,
)
# Which Med-SA layer wraps which block of the SAM family (MedSAModel._create_and_replace).
WRAPPED_BLOCKS: dict[type[nn.Module], type[MedSALayer]] = {
    SamVisionLayer: MedSAVisionLayer,
    SamHQVisionLayer: MedSAVisionLayer,
    Sam2MultiScaleBlock: MedSAHieraLayer,
    **{block: MedSATwoWayLayer for block in TWO_WAY_BLOCKS},
}
