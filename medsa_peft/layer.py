"""Med-SA tuner layers: SAM's image-encoder layer and mask-decoder block, each wrapped whole.

transformers' `SamVisionLayer.forward` and `SamTwoWayAttentionBlock.forward` are monolithic, so each wrapper
re-runs its block through the base block's own submodules (layer norms, attention, MLP) and adds the
adapters where DESIGN.md section 3 puts them. The adapter math lives in `adapters.py`.
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock, SamVisionLayer

from .adapters import (
    BottleneckAdapter,
    HyperPromptAdapter,
    adapter_width,
    depth_attention,
    rel_pos_attention,
)
from .config import MedSAConfig


NOT_MERGEABLE = (
    "Med-SA adapters are non-linear (GELU/ReLU bottlenecks, depth attention, prompt-generated weights) "
    "and cannot be merged into SAM's weights. Keep the PeftModel, or call unload() for plain SAM."
)


class MedSALayer(BaseTunerLayer):
    """What both Med-SA layers share: per-adapter containers and the choice of the one active adapter."""

    def _init_adapter_containers(self, base_layer: nn.Module) -> None:
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ModuleDict())
        self.mlp_adapter_scale: dict[str, float] = {}

    def _new_adapter(self, features: int, config: MedSAConfig) -> BottleneckAdapter:
        return BottleneckAdapter(
            features,
            adapter_width(features, config.bottleneck_ratio),
            activation=config.activation,
            zero_init=config.init == "zero",
        )

    def _finish_update(self, adapter_name: str, config: MedSAConfig) -> None:
        self.mlp_adapter_scale[adapter_name] = config.mlp_adapter_scale
        # PEFT's own helper looks for a `.weight` on the base layer, which whole SAM blocks don't have.
        reference = next(self.base_layer.parameters())
        for container_name in self.adapter_layer_names:
            container = getattr(self, container_name)
            if adapter_name in container:
                container[adapter_name].to(device=reference.device, dtype=reference.dtype)
        self.set_adapter(self.active_adapters)

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
    """A `SamVisionLayer` with Space, MLP and SD-Trans depth adapters.

    Input and output: (N, H, W, C) tokens, N = B * D images ordered volume by volume when `depth` = D.
    """

    adapter_layer_names = ("medsa_space_adapter", "medsa_mlp_adapter", "medsa_depth_adapter")

    def __init__(self, base_layer: SamVisionLayer, adapter_name: str, config: MedSAConfig):
        super().__init__()
        self._init_adapter_containers(base_layer)
        # False: SAM's own attention module runs. `performance.use_fused_attention` switches to `rel_pos_attention`,
        # the same function with no (HW x HW) bias, whose qkv projection the depth branch then reuses.
        self.fused_attention = False
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        features = self.base_layer.layer_norm1.normalized_shape[0]
        switches = zip(self.adapter_layer_names, (config.space_adapter, config.mlp_adapter, config.depth_adapter))
        for container_name, enabled in switches:
            if enabled:
                getattr(self, container_name)[adapter_name] = self._new_adapter(features, config)
        self._finish_update(adapter_name, config)

    def has_depth_adapter(self, adapter_name: str) -> bool:
        return adapter_name in self.medsa_depth_adapter

    def _sam_attention(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """SAM's frozen windowed or global attention module, relative positions included."""
        base = self.base_layer
        if base.window_size > 0:
            height, width = hidden_states.shape[1:3]
            windows, padding_shape = base.window_partition(hidden_states, base.window_size)
            attended = base.attn(windows)[0]
            return base.window_unpartition(attended, base.window_size, padding_shape, (height, width))
        return base.attn(hidden_states)[0]

    def _fused_attention(
        self, hidden_states: torch.Tensor, keep_qkv: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The same attention through `rel_pos_attention`, and with `keep_qkv` the qkv projection of the
        un-windowed tokens, (N, H, W, 3 C), for the depth branch."""
        base = self.base_layer
        window = base.window_size
        if window == 0:
            qkv_states = base.attn.qkv(hidden_states)
            return rel_pos_attention(base.attn, qkv_states), qkv_states
        height, width = hidden_states.shape[1:3]
        windows, padding_shape = base.window_partition(hidden_states, window)
        qkv_windows = base.attn.qkv(windows)  # padding tokens get qkv's bias, as in SAM
        attended = rel_pos_attention(base.attn, qkv_windows)
        attended = base.window_unpartition(attended, window, padding_shape, (height, width))
        if not keep_qkv:
            return attended, None
        return attended, base.window_unpartition(qkv_windows, window, padding_shape, (height, width))

    def forward(self, hidden_states: torch.Tensor, depth: int = 1) -> torch.Tensor:
        base = self.base_layer
        adapter = self._current_adapter()
        with_depth = adapter in self.medsa_depth_adapter
        normed = base.layer_norm1(hidden_states)
        if self.fused_attention:
            attended, qkv_states = self._fused_attention(normed, keep_qkv=with_depth)
        else:
            attended, qkv_states = self._sam_attention(normed), None
        if adapter in self.medsa_space_adapter:
            attended = attended + self.medsa_space_adapter[adapter](attended)
        if with_depth:
            if qkv_states is None:
                qkv_states = base.attn.qkv(normed)
            across_slices = depth_attention(qkv_states, depth, base.attn.proj, base.attn.num_attention_heads)
            attended = attended + self.medsa_depth_adapter[adapter](across_slices)
        hidden_states = hidden_states + attended
        normed = base.layer_norm2(hidden_states)
        update = base.mlp(normed)
        if adapter in self.medsa_mlp_adapter:
            update = update + self.mlp_adapter_scale[adapter] * self.medsa_mlp_adapter[adapter](normed)
        return hidden_states + update


class MedSATwoWayLayer(nn.Module, MedSALayer):
    """A `SamTwoWayAttentionBlock` of the mask decoder with HyP-Adpt, a query MLP adapter and a key adapter.

    queries: (B, P, T_out + T_prompt, C) output tokens then sparse prompt tokens; keys: (B * P, 1, HW, C).
    """

    adapter_layer_names = ("medsa_hyper_adapter", "medsa_query_adapter", "medsa_key_adapter")

    def __init__(
        self, base_layer: SamTwoWayAttentionBlock, adapter_name: str, config: MedSAConfig, num_output_tokens: int
    ):
        super().__init__()
        self._init_adapter_containers(base_layer)
        # The decoder puts its IoU and mask tokens before the sparse prompt tokens (SamMaskDecoder.forward).
        self.num_output_tokens = num_output_tokens
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: MedSAConfig) -> None:
        features = self.base_layer.hidden_size
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
        base = self.base_layer
        adapter = self._current_adapter()
        prompt_tokens = query_point_embedding[:, :, self.num_output_tokens :, :]
        if adapter in self.medsa_hyper_adapter and prompt_tokens.shape[2] > 0:
            keys = keys + self.medsa_hyper_adapter[adapter](keys, prompt_tokens)

        if base.skip_first_layer_pe:
            queries = base.self_attn(query=queries, key=queries, value=queries)[0]
        else:
            query = queries + query_point_embedding
            queries = queries + base.self_attn(query=query, key=query, value=queries)[0]
        queries = base.layer_norm1(queries)

        query = queries + query_point_embedding
        key = keys + key_point_embedding
        attended = base.cross_attn_token_to_image(
            query=query, key=key, value=keys, attention_similarity=attention_similarity
        )[0]
        queries = base.layer_norm2(queries + attended)

        update = base.mlp(queries)
        if adapter in self.medsa_query_adapter:
            update = update + self.mlp_adapter_scale[adapter] * self.medsa_query_adapter[adapter](queries)
        queries = base.layer_norm3(queries + update)

        query = queries + query_point_embedding
        key = keys + key_point_embedding
        attended = base.cross_attn_image_to_token(query=key, key=query, value=queries)[0]
        keys = keys + attended
        if adapter in self.medsa_key_adapter:
            keys = keys + self.medsa_key_adapter[adapter](keys)
        keys = base.layer_norm4(keys)
        return queries, keys, attended  # as SAM's block: the image-to-token attention output (callers drop it)
