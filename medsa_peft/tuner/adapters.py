"""The math of Med-SA's adapters (docs/design.md), as plain modules with no PEFT plumbing.

- `BottleneckAdapter`: Linear(C, r) -> act -> Linear(r, C), the Space, MLP, depth and decoder adapters.
- `HyperPromptAdapter` (HyP-Adpt): a k x k weight generated from the prompt embedding conditions the keys.
- `depth_attention`: SD-Trans, self-attention over the D slices of every spatial token with SAM's frozen weights.
- `rel_pos_attention`: SAM's frozen spatial attention with its relative-position bias folded into queries and keys,
  the fast path that `fast_paths.use_fused_attention` switches on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BottleneckAdapter",
    "HyperPromptAdapter",
    "adapter_width",
    "depth_attention",
    "fold_bias_into_query_key",
    "rel_pos_attention",
    "short_sequence_attention",
]

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
# Fused attention kernels want head widths in multiples of 8.
HEAD_ALIGNMENT = 8
# Compiled, depth attention over at most this many slices runs as products and sums (`short_sequence_attention`);
# on a CPU that is 4x faster than scaled_dot_product_attention at 8 slices, 1.5x at 32, 0.9x at 64.
SHORT_SEQUENCE_MAX = 32


def adapter_width(features: int, bottleneck_ratio: float) -> int:
    """Hidden width `r = round(C * bottleneck_ratio)`, at least 1."""
    return max(1, round(features * bottleneck_ratio))


class BottleneckAdapter(nn.Module):
    """`fc2(act(fc1(x)))` on the last axis: (..., C) -> (..., C). No skip connection; callers add it.

    With `zero_init` the last Linear starts at zero, so the adapter outputs zeros until it trains.
    """

    def __init__(self, features: int, hidden: int, activation: str = "gelu", zero_init: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, features)
        if zero_init:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class HyperPromptAdapter(nn.Module):
    """HyP-Adpt: `keys -> Up(ReLU(LN_k(Down(keys) @ W)))` with `W = reshape(HyperMLP(e), (k, k))`.

    `e` is the mean of the sparse prompt tokens of each prompt, so the image features the decoder reads are
    conditioned on the prompt. The returned delta is added to the keys by the caller.
    """

    def __init__(self, features: int, hyper_dim: int, zero_init: bool = True):
        super().__init__()
        self.hyper_dim = hyper_dim
        self.hyper_mlp = nn.Sequential(
            nn.Linear(features, features), nn.ReLU(), nn.Linear(features, hyper_dim * hyper_dim)
        )
        self.down = nn.Linear(features, hyper_dim)
        self.norm = nn.LayerNorm(hyper_dim)
        self.up = nn.Linear(hyper_dim, features)
        if zero_init:
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, keys: torch.Tensor, prompt_tokens: torch.Tensor) -> torch.Tensor:
        """
        Args:
            keys: image tokens, (B * P, 1, HW, C) as SAM's two-way transformer holds them.
            prompt_tokens: the sparse prompt tokens, (B, P, T, C) with T >= 1.

        Returns:
            the delta for the keys, (B * P, 1, HW, C).
        """
        prompt_embedding = prompt_tokens.mean(dim=2).reshape(-1, prompt_tokens.shape[-1])
        weight = self.hyper_mlp(prompt_embedding).view(-1, 1, self.hyper_dim, self.hyper_dim)
        hidden = self.down(keys)
        # under autocast `hidden` is already bf16/fp16: cast the small weight to it, never the keys up to fp32
        hidden = torch.matmul(hidden, weight.to(hidden.dtype))
        return self.up(F.relu(self.norm(hidden)))


def depth_attention(qkv_states: torch.Tensor, depth: int, proj: nn.Linear, num_heads: int) -> torch.Tensor:
    """SD-Trans: multi-head self-attention over the depth axis, for every spatial token.

    The D slices of each volume lie consecutively in the batch. For every spatial location (i, j) the
    sequence is the D tokens at (i, j), one per slice. Queries, keys and values come from the layer's frozen
    spatial `qkv` projection and the output goes through its frozen `proj` (shared weights); no
    relative-position terms. One attention call covers every token of every volume: scaled_dot_product_attention,
    or under torch.compile and for D <= SHORT_SEQUENCE_MAX `short_sequence_attention`.

    Args:
        qkv_states: (B * D, H, W, 3 C), `attn.qkv` of the layer-normed tokens, volume by volume.
        depth: D.

    Returns:
        (B * D, H, W, C), in the input's order.
    """
    batch_depth, height, width, three_channels = qkv_states.shape
    batch, channels = batch_depth // depth, three_channels // 3
    head_dim = channels // num_heads
    qkv = qkv_states.reshape(batch, depth, height * width, 3, num_heads, head_dim)
    # -> 3 x (B * HW, heads, D, head_dim): one sequence of D slices per spatial token and head
    query, key, value = qkv.permute(3, 0, 2, 4, 1, 5).reshape(3, batch * height * width, num_heads, depth, -1)
    if torch.compiler.is_compiling() and depth <= SHORT_SEQUENCE_MAX:
        attended = short_sequence_attention(query, key, value)
    else:
        attended = F.scaled_dot_product_attention(query, key, value)
    attended = attended.view(batch, height, width, num_heads, depth, head_dim).permute(0, 4, 1, 2, 3, 5)
    return proj(attended.reshape(batch_depth, height, width, channels))


def short_sequence_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written as broadcast products and sums, for sequences of a few tokens.

    Attention kernels fill tiles of 64 or 128 tokens, mostly padding when a sequence holds D = 8 slices; compiled,
    these products and sums fuse into a few memory-bound kernels instead (forward + backward 2.8 to 4x faster than
    scaled_dot_product_attention on a CPU, `benchmarks/attention.py`). Eager, they would materialise
    (..., D, D, d) products: for torch.compile only. Computed in float32 (compiled, that costs no memory: the
    products are never stored), returned in value's dtype, under autocast too.

    Args:
        query, key, value: (N, heads, D, d).

    Returns:
        (N, heads, D, d), in value's dtype.
    """
    scores = (query.unsqueeze(-2).float() * key.unsqueeze(-3)).sum(-1) * query.shape[-1] ** -0.5
    return (scores.softmax(-1).unsqueeze(-1) * value.unsqueeze(-3)).sum(-2).to(value.dtype)


def rel_pos_attention(attention: nn.Module, qkv_states: torch.Tensor) -> torch.Tensor:
    """SAM's vision attention from its qkv projection, the relative-position bias folded into q and k.

    SAM adds a decomposed relative-position bias to every score, score(q, k) = scale q.k + <q, Rh[row(q) - row(k)]>
    + <q, Rw[col(q) - col(k)]>, and transformers materialises it as an (N, heads, HW, HW) tensor: then no flash
    kernel runs, and the bias and its gradient are held in memory (400 MB per image and global layer of ViT-B at
    1024 px). `fold_bias_into_query_key` turns the same scores into a plain dot product, so attention runs with no
    bias and nothing of size (HW)^2 is stored. Same function as `attention(tokens)[0]`, up to rounding.

    Args:
        attention: the `attn` (SamVisionAttention, eager or sdpa) of a SamVisionLayer.
        qkv_states: (N, H, W, 3 C), `attention.qkv(tokens)` of whole images (global layers) or of windows.

    Returns:
        (N, H, W, C).
    """
    batch, height, width, three_channels = qkv_states.shape
    heads = attention.num_attention_heads
    qkv = qkv_states.reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    query, key, value = qkv.unbind(0)  # (N, heads, HW, head_dim)
    head_dim = value.shape[-1]
    scale = attention.scale
    if attention.use_rel_pos:
        row_table = attention.get_rel_pos(height, height, attention.rel_pos_h)  # (H query rows, H key rows, d)
        col_table = attention.get_rel_pos(width, width, attention.rel_pos_w)
        grid = query.reshape(batch, heads, height, width, head_dim)
        rel_rows = torch.einsum("nhyxd,ykd->nhyxk", grid, row_table).reshape(batch, heads, height * width, height)
        rel_cols = torch.einsum("nhyxd,xkd->nhyxk", grid, col_table).reshape(batch, heads, height * width, width)
        query, key = fold_bias_into_query_key(query, key, rel_rows, rel_cols, scale)
        scale = 1.0
    # v gets the width of q' and k' too, with zero columns that add nothing: flash kernels take equal widths only
    value = F.pad(value, (0, query.shape[-1] - head_dim))
    dropout = attention.dropout if attention.training else 0.0
    attended = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale)[..., :head_dim]
    return attention.proj(attended.transpose(1, 2).reshape(batch, height, width, three_channels // 3))


def fold_bias_into_query_key(
    query: torch.Tensor, key: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q' = [scale q, rel_rows, rel_cols], k' = [k, onehot(row(k)), onehot(col(k))], zero-padded to a multiple of 8.

    Args:
        query, key: (N, heads, HW, d), the tokens of an H x W grid in row-major order.
        rel_rows: (N, heads, HW, H), each query's bias towards each key row; rel_cols: (N, heads, HW, W).

    Returns:
        q', k' of (N, heads, HW, d'), d' >= d + H + W, with q'.k' = scale q.k + rel_rows[row(k)] + rel_cols[col(k)].
    """
    batch, heads, tokens, _ = query.shape
    height, width = rel_rows.shape[-1], rel_cols.shape[-1]
    positions = torch.arange(tokens, device=key.device)
    key_rows = F.one_hot(positions // width, height).to(key.dtype).expand(batch, heads, -1, -1)
    key_cols = F.one_hot(positions % width, width).to(key.dtype).expand(batch, heads, -1, -1)
    query = torch.cat([query * scale, rel_rows.to(query.dtype), rel_cols.to(query.dtype)], dim=-1)
    key = torch.cat([key, key_rows, key_cols], dim=-1)
    padding = -query.shape[-1] % HEAD_ALIGNMENT
    return F.pad(query, (0, padding)), F.pad(key, (0, padding))
