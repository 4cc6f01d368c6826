"""A naive eager Med-SA, written out from docs/design.md: the benchmarks' stand-in for the authors' code.

Every attention matrix is materialised in float32, SAM's decomposed relative-position bias included, the way the
authors' code (and SAM's original code) computes: scores (N, heads, HW, HW) = scale q k^T + rel_h + rel_w, softmax,
times v. The depth branch (SD-Trans) attends over the D slices of every spatial token with a materialised
(B * HW, heads, D, D) matrix. It reads every weight from a Med-SA model made with `MedSAConfig.official(...)`, so
both compute the same function on the same parameters and the benchmark can check that before it times them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medsa_peft.tuner.layer import MedSAVisionLayer


class NaiveMedSA(nn.Module):
    """Med-SA's image encoder computed naively, SAM's prompt encoder and mask decoder as they are.

    Args:
        medsa_model: a PeftModel of a SamModel with the encoder adapters of `MedSAConfig.official()` (the mask
            decoder trained in full, no decoder adapters). Its parameters are shared, not copied.
    """

    def __init__(self, medsa_model: nn.Module):
        super().__init__()
        self.medsa_model = medsa_model
        self.sam = medsa_model.get_base_model()
        self.layers = [layer for layer in self.sam.vision_encoder.layers if isinstance(layer, MedSAVisionLayer)]
        if len(self.layers) != len(self.sam.vision_encoder.layers):
            raise ValueError("NaiveMedSA needs a Med-SA adapter on every image-encoder layer.")
        (self.adapter_name,) = self.medsa_model.active_adapters

    def forward(
        self, pixel_values: torch.Tensor, input_boxes: torch.Tensor, depth: int | None = None, **kwargs
    ):
        """pixel_values (B * D, 3, S, S) volume by volume, boxes (B * D, 1, 4); returns SamModel's output."""
        embeddings = self.image_embeddings(pixel_values, depth)
        return self.sam(image_embeddings=embeddings, input_boxes=input_boxes, **kwargs)

    def image_embeddings(self, pixel_values: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """(N, 3, S, S) -> (N, C_out, S / patch, S / patch)."""
        encoder = self.sam.vision_encoder
        hidden = encoder.patch_embed(pixel_values)
        if encoder.pos_embed is not None:
            hidden = hidden + encoder.pos_embed
        for layer in self.layers:
            hidden = self._layer(layer, hidden, depth)
        return encoder.neck(hidden)

    def _layer(self, layer: MedSAVisionLayer, x: torch.Tensor, depth: int | None) -> torch.Tensor:
        """x + a + MLP(n) + s MLPAdapter(n), a = Attn(h) + Space(Attn(h)) [+ Depth(DepthAttn(h))], h = LN1(x)."""
        base, name = layer.base_layer, self.adapter_name
        h = base.layer_norm1(x)
        a = _windowed(h, base.window_size, lambda tokens: naive_attention(base.attn, tokens))
        a = a + layer.medsa_space_adapter[name](a)
        if depth is not None:
            a = a + layer.medsa_depth_adapter[name](naive_depth_attention(base.attn, h, depth))
        x = x + a
        n = base.layer_norm2(x)
        return x + base.mlp(n) + layer.mlp_adapter_scale[name] * layer.medsa_mlp_adapter[name](n)


def _windowed(h: torch.Tensor, window: int, attend) -> torch.Tensor:
    """Apply `attend` to zero-padded non-overlapping window x window tiles of h (N, H, W, C); 0 = whole image."""
    if window == 0:
        return attend(h)
    n, height, width, channels = h.shape
    padded = F.pad(h, (0, 0, 0, -width % window, 0, -height % window))
    rows, cols = padded.shape[1] // window, padded.shape[2] // window
    tiles = padded.view(n, rows, window, cols, window, channels).permute(0, 1, 3, 2, 4, 5)
    out = attend(tiles.reshape(n * rows * cols, window, window, channels))
    out = out.view(n, rows, cols, window, window, channels).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, rows * window, cols * window, channels)[:, :height, :width]


def _relative_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """table[i, j] = rel_pos[i - j + size - 1]: (size, size, head_dim). SAM's tables cover exactly 2 size - 1."""
    if rel_pos.shape[0] != 2 * size - 1:
        raise ValueError(f"relative-position table of {rel_pos.shape[0]} rows does not fit {size} tokens")
    index = torch.arange(size, device=rel_pos.device)
    return rel_pos[index[:, None] - index[None, :] + size - 1]


def _split_heads(projected: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M, L, 3 C) -> q, k, v of (M, heads, L, C / heads) in float32."""
    m, length, _ = projected.shape
    qkv = projected.float().view(m, length, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _fp32(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def naive_attention(attn: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """SAM's spatial attention with the (N, heads, HW, HW) score matrix in float32: (N, H, W, C) -> same."""
    n, height, width, channels = tokens.shape
    heads = attn.num_attention_heads
    q, k, v = _split_heads(attn.qkv(tokens).reshape(n, height * width, -1), heads)
    with _fp32(tokens.device):
        scores = (q * attn.scale) @ k.transpose(-1, -2)
        if attn.use_rel_pos:
            grid = q.view(n, heads, height, width, -1)
            rel_h = torch.einsum("nhyxd,ykd->nhyxk", grid, _relative_table(attn.rel_pos_h.float(), height))
            rel_w = torch.einsum("nhyxd,xkd->nhyxk", grid, _relative_table(attn.rel_pos_w.float(), width))
            bias = rel_h[..., :, None] + rel_w[..., None, :]
            scores = scores + bias.reshape(n, heads, height * width, height * width)
        out = torch.softmax(scores, dim=-1) @ v
    out = out.transpose(1, 2).reshape(n, height, width, channels)
    return attn.proj(out.to(tokens.dtype))


def naive_depth_attention(attn: nn.Module, h: torch.Tensor, depth: int) -> torch.Tensor:
    """SD-Trans with the (B * HW, heads, D, D) matrix in float32, SAM's frozen qkv / proj: (B * D, H, W, C) -> same."""
    batch_depth, height, width, channels = h.shape
    batch = batch_depth // depth
    sequences = h.view(batch, depth, height * width, channels).transpose(1, 2).reshape(-1, depth, channels)
    q, k, v = _split_heads(attn.qkv(sequences), attn.num_attention_heads)
    with _fp32(h.device):
        out = torch.softmax((q * attn.scale) @ k.transpose(-1, -2), dim=-1) @ v
    out = out.transpose(1, 2).reshape(batch, height * width, depth, channels)
    out = attn.proj(out.to(h.dtype))
    return out.transpose(1, 2).reshape(batch_depth, height, width, channels)
