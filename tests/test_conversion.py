"""Conversion of the authors' Med-SA checkpoints, checked against a plain-torch reimplementation of their 2D
forward written here from the raw state dict (segment_anything's ViT with AdapterBlocks, prompt encoder and
mask decoder), independent of transformers' SAM and of this package's layers."""

import argparse
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from transformers import SamModel

from medsa_peft.conversion import CheckpointError, convert_official_checkpoint
from medsa_peft.inference import MedSAPredictor
from medsa_peft.testing import randomize_weights, tiny_sam_config

SIZE, PATCH, WINDOW, GLOBAL_BLOCKS, HEADS, DECODER_HEADS, MASK_TOKENS = 64, 8, 4, (1,), 2, 8, 4

# transformers' SamModel names -> segment_anything names, applied in order to every key
TO_AUTHORS_NAMES = (
    (r"^vision_encoder\.layers\.", "image_encoder.blocks."),
    (r"^vision_encoder\.", "image_encoder."),
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."),
    (r"\.neck\.conv1\.", ".neck.0."),
    (r"\.neck\.layer_norm1\.", ".neck.1."),
    (r"\.neck\.conv2\.", ".neck.2."),
    (r"\.neck\.layer_norm2\.", ".neck.3."),
    (r"\.mask_embed\.conv1\.", ".mask_downscaling.0."),
    (r"\.mask_embed\.layer_norm1\.", ".mask_downscaling.1."),
    (r"\.mask_embed\.conv2\.", ".mask_downscaling.3."),
    (r"\.mask_embed\.layer_norm2\.", ".mask_downscaling.4."),
    (r"\.mask_embed\.conv3\.", ".mask_downscaling.6."),
    (r"\.layer_norm([1-4])\.", r".norm\1."),
    (r"\.layer_norm_final_attn\.", ".norm_final_attn."),
    (r"^shared_image_embedding\.positional_embedding$", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"\.point_embed\.", ".point_embeddings."),
    (r"\.upscale_conv1\.", ".output_upscaling.0."),
    (r"\.upscale_layer_norm\.", ".output_upscaling.1."),
    (r"\.upscale_conv2\.", ".output_upscaling.3."),
    (r"\.layers\.0\.(weight|bias)$", r".layers.1.\1"),  # the MLPs of the decoder head: proj_in, layers.0, proj_out
    (r"\.proj_in\.", ".layers.0."),
    (r"\.proj_out\.", ".layers.2."),
)


def tiny_sam() -> SamModel:
    config = tiny_sam_config()
    config.mask_decoder_config.num_attention_heads = DECODER_HEADS  # SAM's decoder head count, assumed by conversion
    return randomize_weights(SamModel(config), seed=3).eval()


def authors_checkpoint(seed: int = 0, depth_adapter: bool = True) -> dict[str, torch.Tensor]:
    """A state dict in the authors' layout: a tiny SAM's weights under segment_anything names, random adapters,
    and the global block's relative-position tables sized for their hard-coded 64 x 64 grid."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in tiny_sam().state_dict().items():
        if name == "prompt_encoder.shared_embedding.positional_embedding":
            continue  # tied to shared_image_embedding
        for pattern, replacement in TO_AUTHORS_NAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor.clone()
    head_dim = 32 // HEADS
    for block in range(2):
        prefix = f"image_encoder.blocks.{block}"
        if block in GLOBAL_BLOCKS:
            for axis in "hw":
                state[f"{prefix}.attn.rel_pos_{axis}"] = torch.randn(127, head_dim, generator=generator) * 0.1
        else:  # accepted too: the names rel_h / rel_w
            state[f"{prefix}.attn.rel_h"] = state.pop(f"{prefix}.attn.rel_pos_h")
            state[f"{prefix}.attn.rel_w"] = state.pop(f"{prefix}.attn.rel_pos_w")
        for adapter in ("Space_Adapter", "MLP_Adapter") + (("Depth_Adapter",) if depth_adapter else ()):
            state[f"{prefix}.{adapter}.D_fc1.weight"] = torch.randn(8, 32, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc1.bias"] = torch.randn(8, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc2.weight"] = torch.randn(32, 8, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc2.bias"] = torch.randn(32, generator=generator) * 0.1
    return state


def save_as_their_train_py(state: dict, path, **extra) -> None:
    """Their train.py saves {"epoch", "model" (the net's name), "state_dict", ...}, DataParallel-prefixed."""
    torch.save({"epoch": 3, "model": "sam", "state_dict": {f"module.{k}": v for k, v in state.items()}, **extra}, path)


class AuthorsForward:
    """The authors' 2D forward (`args.thd` off) from their raw state dict, in plain torch."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.w = state

    def linear(self, x, prefix):
        return F.linear(x, self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"])

    def layer_norm(self, x, prefix, eps):
        return F.layer_norm(x, x.shape[-1:], self.w[f"{prefix}.weight"], self.w[f"{prefix}.bias"], eps)

    def layer_norm_2d(self, x, prefix):
        mean = x.mean(1, keepdim=True)
        normed = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(1, keepdim=True) + 1e-6)
        return self.w[f"{prefix}.weight"][:, None, None] * normed + self.w[f"{prefix}.bias"][:, None, None]

    def adapter(self, x, prefix):
        return self.linear(F.gelu(self.linear(x, f"{prefix}.D_fc1")), f"{prefix}.D_fc2")

    def rel_table(self, prefix, axis, size):
        table = self.w.get(f"{prefix}.rel_pos_{axis}", self.w.get(f"{prefix}.rel_{axis}"))
        if table.shape[0] != 2 * size - 1:  # linear resize at run time, as their get_rel_pos
            table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T
        offsets = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
        return table[offsets]  # (size, size, head_dim)

    def vit_attention(self, x, prefix):
        batch, height, width, channels = x.shape
        head_dim = channels // HEADS
        qkv = self.linear(x, f"{prefix}.qkv").reshape(batch, height * width, 3, HEADS, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * HEADS, height * width, head_dim)
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)
        grid_q = q.reshape(-1, height, width, head_dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, self.rel_table(prefix, "h", height))
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, self.rel_table(prefix, "w", width))
        scores = scores.view(-1, height, width, height, width) + rel_h[..., None] + rel_w[..., None, :]
        attended = scores.view(-1, height * width, height * width).softmax(-1) @ v
        attended = attended.view(batch, HEADS, height, width, head_dim).permute(0, 2, 3, 1, 4)
        return self.linear(attended.reshape(batch, height, width, channels), f"{prefix}.proj")

    def block(self, x, index):
        prefix = f"image_encoder.blocks.{index}"
        batch, height, width, channels = x.shape
        h = self.layer_norm(x, f"{prefix}.norm1", 1e-6)
        windowed = index not in GLOBAL_BLOCKS
        if windowed:  # the tiny grid divides into windows, no padding
            h = h.view(batch, height // WINDOW, WINDOW, width // WINDOW, WINDOW, channels)
            h = h.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW, WINDOW, channels)
        a = self.vit_attention(h, f"{prefix}.attn")
        a = a + self.adapter(a, f"{prefix}.Space_Adapter")
        if windowed:
            a = a.view(batch, height // WINDOW, width // WINDOW, WINDOW, WINDOW, channels)
            a = a.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)
        x = x + a
        n = self.layer_norm(x, f"{prefix}.norm2", 1e-6)
        mlp = self.linear(F.gelu(self.linear(n, f"{prefix}.mlp.lin1")), f"{prefix}.mlp.lin2")
        return x + mlp + 0.5 * self.adapter(n, f"{prefix}.MLP_Adapter")

    def image_embeddings(self, pixel_values):
        w = self.w
        x = F.conv2d(
            pixel_values,
            w["image_encoder.patch_embed.proj.weight"],
            w["image_encoder.patch_embed.proj.bias"],
            stride=PATCH,
        )
        x = x.permute(0, 2, 3, 1) + w["image_encoder.pos_embed"]
        for index in range(2):
            x = self.block(x, index)
        x = self.layer_norm_2d(
            F.conv2d(x.permute(0, 3, 1, 2), w["image_encoder.neck.0.weight"]), "image_encoder.neck.1"
        )
        return self.layer_norm_2d(F.conv2d(x, w["image_encoder.neck.2.weight"], padding=1), "image_encoder.neck.3")

    def fourier(self, coordinates):
        projected = (
            2
            * math.pi
            * ((2 * coordinates - 1) @ self.w["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
        )
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def decoder_attention(self, q, k, v, prefix):
        q, k, v = (self.linear(t, f"{prefix}.{name}") for t, name in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj")))
        batch, tokens, width = q.shape
        head_dim = width // DECODER_HEADS
        q, k, v = (t.reshape(batch, -1, DECODER_HEADS, head_dim).transpose(1, 2) for t in (q, k, v))
        attended = ((q @ k.transpose(-2, -1)) / math.sqrt(head_dim)).softmax(-1) @ v
        return self.linear(attended.transpose(1, 2).reshape(batch, tokens, width), f"{prefix}.out_proj")

    def mlp(self, x, prefix, layers):
        for index in range(layers):
            x = self.linear(x, f"{prefix}.layers.{index}")
            x = F.relu(x) if index < layers - 1 else x
        return x

    def masks(self, pixel_values, boxes):
        """Single-mask logits (B, 1, 4g, 4g) and IoU predictions (B, 1) for one box (x0, y0, x1, y1) per image."""
        w, grid = self.w, SIZE // PATCH
        embeddings = self.image_embeddings(pixel_values)
        batch, channels = embeddings.shape[:2]
        corners = self.fourier((boxes.reshape(-1, 2, 2) + 0.5) / SIZE)
        corners = corners + torch.stack(
            [w["prompt_encoder.point_embeddings.2.weight"][0], w["prompt_encoder.point_embeddings.3.weight"][0]]
        )
        dense = w["prompt_encoder.no_mask_embed.weight"].reshape(1, -1, 1, 1)
        centres = (torch.arange(grid) + 0.5) / grid
        image_pe = self.fourier(torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1))  # (g, g, C)

        tokens = torch.cat([w["mask_decoder.iou_token.weight"], w["mask_decoder.mask_tokens.weight"]])
        tokens = torch.cat([tokens.expand(batch, -1, -1), corners], dim=1)
        keys = (embeddings + dense).flatten(2).transpose(1, 2)
        key_pe = image_pe.reshape(1, grid * grid, channels)
        queries = tokens
        for index in range(2):
            prefix = f"mask_decoder.transformer.layers.{index}"
            if index == 0:
                queries = self.decoder_attention(queries, queries, queries, f"{prefix}.self_attn")
            else:
                queries = queries + self.decoder_attention(
                    queries + tokens, queries + tokens, queries, f"{prefix}.self_attn"
                )
            queries = self.layer_norm(queries, f"{prefix}.norm1", 1e-5)
            attended = self.decoder_attention(
                queries + tokens, keys + key_pe, keys, f"{prefix}.cross_attn_token_to_image"
            )
            queries = self.layer_norm(queries + attended, f"{prefix}.norm2", 1e-5)
            update = self.linear(F.relu(self.linear(queries, f"{prefix}.mlp.lin1")), f"{prefix}.mlp.lin2")
            queries = self.layer_norm(queries + update, f"{prefix}.norm3", 1e-5)
            attended = self.decoder_attention(
                keys + key_pe, queries + tokens, queries, f"{prefix}.cross_attn_image_to_token"
            )
            keys = self.layer_norm(keys + attended, f"{prefix}.norm4", 1e-5)
        attended = self.decoder_attention(
            queries + tokens, keys + key_pe, keys, "mask_decoder.transformer.final_attn_token_to_image"
        )
        queries = self.layer_norm(queries + attended, "mask_decoder.transformer.norm_final_attn", 1e-5)

        image = keys.transpose(1, 2).reshape(batch, channels, grid, grid)
        image = F.conv_transpose2d(
            image, w["mask_decoder.output_upscaling.0.weight"], w["mask_decoder.output_upscaling.0.bias"], stride=2
        )
        image = F.gelu(self.layer_norm_2d(image, "mask_decoder.output_upscaling.1"))
        image = F.gelu(
            F.conv_transpose2d(
                image, w["mask_decoder.output_upscaling.3.weight"], w["mask_decoder.output_upscaling.3.bias"], stride=2
            )
        )
        hyper = torch.stack(
            [self.mlp(queries[:, 1 + i], f"mask_decoder.output_hypernetworks_mlps.{i}", 3) for i in range(MASK_TOKENS)],
            dim=1,
        )
        masks = (hyper @ image.flatten(2)).reshape(batch, MASK_TOKENS, 4 * grid, 4 * grid)
        iou = self.mlp(queries[:, 0], "mask_decoder.iou_prediction_head", 3)
        return masks[:, :1], iou[:, :1]


def test_converted_checkpoint_reproduces_the_authors_2d_forward(tmp_path):
    state = authors_checkpoint()
    save_as_their_train_py(state, tmp_path / "checkpoint.pth", best_tol=0.42, path_helper={"ckpt_path": "logs"})
    result = convert_official_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "converted")

    assert result.ignored_keys and all("Depth_Adapter" in key for key in result.ignored_keys)
    saved = json.loads((tmp_path / "converted" / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MEDSA" and saved["modules_to_save"] == ["mask_decoder"]
    assert saved["depth_adapter"] is False and saved["init"] == "official" and saved["bottleneck_ratio"] == 0.25
    assert saved["base_model_name_or_path"] == str((tmp_path / "converted" / "sam").resolve())

    model = PeftModel.from_pretrained(
        SamModel.from_pretrained(tmp_path / "converted" / "sam"), tmp_path / "converted" / "adapter"
    )
    model.eval()
    pixel_values = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[6.0, 8.0, 40.0, 44.0], [20.0, 2.0, 60.0, 30.0]])
    reference = AuthorsForward(state)
    with torch.no_grad():
        expected_embeddings = reference.image_embeddings(pixel_values)
        expected_masks, expected_iou = reference.masks(pixel_values, boxes)
        embeddings = model.get_base_model().get_image_embeddings(pixel_values)
        out = model(pixel_values=pixel_values, input_boxes=boxes[:, None], multimask_output=False)

    assert expected_embeddings.abs().mean() > 0.1  # a real signal, not near-zero weights
    torch.testing.assert_close(embeddings, expected_embeddings, rtol=1e-4, atol=1e-5)
    # transformers' decoder layer norms use eps 1e-6 where segment_anything's use 1e-5
    torch.testing.assert_close(out.pred_masks[:, 0], expected_masks, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(out.iou_scores[:, 0], expected_iou, rtol=1e-3, atol=1e-4)

    with torch.no_grad():  # the adapters matter: without them the encoder output differs
        with model.disable_adapter():
            plain = model.get_base_model().get_image_embeddings(pixel_values)
    assert not torch.allclose(plain, expected_embeddings, atol=1e-3)


def test_depth_adapter_conversion_keeps_the_depth_weights(tmp_path):
    state = authors_checkpoint()
    torch.save(state, tmp_path / "bare.pth")
    result = convert_official_checkpoint(tmp_path / "bare.pth", tmp_path / "out", depth_adapter=True)
    assert result.config.depth_adapter and not result.ignored_keys
    saved = load_file(tmp_path / "out" / "adapter" / "adapter_model.safetensors")
    torch.testing.assert_close(
        saved["base_model.model.vision_encoder.layers.1.medsa_depth_adapter.fc2.weight"],
        state["image_encoder.blocks.1.Depth_Adapter.D_fc2.weight"],
    )
    predictor = MedSAPredictor.from_pretrained(
        tmp_path / "out" / "adapter", progress=False
    )  # base model from the config
    assert predictor.has_depth


def test_bad_checkpoints_fail_clearly(tmp_path):
    state = authors_checkpoint(depth_adapter=False)
    torch.save({"model": state}, tmp_path / "two_d.pth")
    with pytest.raises(CheckpointError, match="block 0 has no Depth_Adapter.*without --depth"):
        convert_official_checkpoint(tmp_path / "two_d.pth", tmp_path / "a", depth_adapter=True)

    plain_sam = {key: value for key, value in state.items() if "_Adapter" not in key}
    torch.save(plain_sam, tmp_path / "sam.pth")
    with pytest.raises(CheckpointError, match="no Space_Adapter: not a Med-SA checkpoint"):
        convert_official_checkpoint(tmp_path / "sam.pth", tmp_path / "b")

    torch.save({**state, "image_encoder.prompt_generator.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="neither SAM nor Med-SA adapter weights.*prompt_generator"):
        convert_official_checkpoint(tmp_path / "extra.pth", tmp_path / "c")

    save_as_their_train_py(state, tmp_path / "args.pth", args=argparse.Namespace(thd=False))
    with pytest.raises(CheckpointError, match="weights_only=True.*allow_pickle=True"):
        convert_official_checkpoint(tmp_path / "args.pth", tmp_path / "d")
    convert_official_checkpoint(tmp_path / "args.pth", tmp_path / "d", allow_pickle=True)
    with pytest.raises(FileExistsError, match="already exist"):
        convert_official_checkpoint(tmp_path / "args.pth", tmp_path / "d", allow_pickle=True)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_official_checkpoint(tmp_path / "missing.pth", tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abce")  # nothing half-written
