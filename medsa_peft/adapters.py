"""The math of Med-SA's adapters (DESIGN.md section 3), as plain modules with no PEFT plumbing.

- `BottleneckAdapter`: Linear(C, r) -> act -> Linear(r, C), the Space, MLP, depth and decoder adapters.
- `HyperPromptAdapter` (HyP-Adpt): a k x k weight generated from the prompt embedding conditions the keys.
- `depth_attention`: SD-Trans, self-attention over the D slices of every spatial token with SAM's frozen weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


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
        hidden = torch.matmul(self.down(keys), weight.to(keys.dtype))
        return self.up(F.relu(self.norm(hidden)))


def depth_attention(hidden_states: torch.Tensor, depth: int, qkv: nn.Linear, proj: nn.Linear, num_heads: int):
    """SD-Trans: multi-head self-attention over the depth axis, for every spatial token.

    The D slices of each volume lie consecutively in the batch. For every spatial location (i, j) the
    sequence is the D tokens at (i, j), one per slice; `qkv` and `proj` are the layer's frozen spatial
    attention weights, shared, and no relative-position terms are used.

    Args:
        hidden_states: (B * D, H, W, C), volume by volume.
        depth: D.

    Returns:
        (B * D, H, W, C), in the input's order.
    """
    batch_depth, height, width, channels = hidden_states.shape
    batch = batch_depth // depth
    head_dim = channels // num_heads
    tokens = hidden_states.view(batch, depth, height * width, channels).transpose(1, 2)
    tokens = tokens.reshape(batch * height * width, depth, channels)
    query, key, value = qkv(tokens).view(-1, depth, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(query, key, value)
    attended = proj(attended.transpose(1, 2).reshape(-1, depth, channels))
    attended = attended.view(batch, height * width, depth, channels).transpose(1, 2)
    return attended.reshape(batch_depth, height, width, channels)
