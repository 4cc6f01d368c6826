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

from medsa_peft.conversion import CheckpointError, authors_multimask_logits, convert_official_checkpoint
from medsa_peft.inference import MedSAPredictor
from medsa_peft.tuner.fast_paths import use_fused_attention
from medsa_peft.tiny_sam import randomize_weights, tiny_sam_config

PATCH, WINDOW, GLOBAL_BLOCKS, HEADS, DECODER_HEADS, MASK_TOKENS, HIDDEN = 16, 14, (1,), 2, 8, 4, 32
# Their encoder stores pos_embed for 1024 px whatever the image size (1024 // 16 = 64 tokens a side).
STORED_GRID = 1024 // PATCH
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


def tiny_sam(image_size: int) -> SamModel:
    """A tiny SAM laid out like theirs: patch 16, windows of 14, block 1 global."""
    config = tiny_sam_config(
        image_size=image_size, patch_size=PATCH, hidden_size=HIDDEN, window_size=WINDOW, global_attn_indexes=GLOBAL_BLOCKS
    )
    config.mask_decoder_config.num_attention_heads = DECODER_HEADS  # SAM's decoder head count, assumed by conversion
    return randomize_weights(SamModel(config), seed=3).eval()


def authors_checkpoint(
    seed: int = 0, depth_adapter: bool = True, image_size: int = 256, generation: str = "2023"
) -> dict[str, torch.Tensor]:
    """A state dict in the layout their code saves after training at `image_size`: a tiny SAM's weights under
    segment_anything names, random adapters, pos_embed stored for 1024 px, the global block's relative-position
    tables for the token grid of `image_size`, and for generation "2024" the two-way blocks' MLPs named
    `mlp.layers.0.0` / `mlp.fc`."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in tiny_sam(image_size).state_dict().items():
        if name == "prompt_encoder.shared_embedding.positional_embedding":
            continue  # tied to shared_image_embedding
        for pattern, replacement in TO_AUTHORS_NAMES:
            name = re.sub(pattern, replacement, name)
        if generation == "2024":
            name = re.sub(r"(transformer\.layers\.\d+\.mlp)\.lin1\.", r"\1.layers.0.0.", name)
            name = re.sub(r"(transformer\.layers\.\d+\.mlp)\.lin2\.", r"\1.fc.", name)
        state[name] = tensor.clone()
    state["image_encoder.pos_embed"] = torch.randn(1, STORED_GRID, STORED_GRID, HIDDEN, generator=generator) * 0.5
    head_dim = HIDDEN // HEADS
    for block in range(2):
        prefix = f"image_encoder.blocks.{block}"
        size = image_size // PATCH if block in GLOBAL_BLOCKS else WINDOW
        for axis in "hw":  # their 2024 code names the tables rel_h / rel_w, the 2023 code rel_pos_h / rel_pos_w
            name = f"{prefix}.attn.rel_{axis}" if generation == "2024" else f"{prefix}.attn.rel_pos_{axis}"
            state.pop(f"{prefix}.attn.rel_pos_{axis}")
            state[name] = torch.randn(2 * size - 1, head_dim, generator=generator) * 0.3
        for adapter in ("Space_Adapter", "MLP_Adapter") + (("Depth_Adapter",) if depth_adapter else ()):
            state[f"{prefix}.{adapter}.D_fc1.weight"] = torch.randn(8, HIDDEN, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc1.bias"] = torch.randn(8, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc2.weight"] = torch.randn(HIDDEN, 8, generator=generator) * 0.1
            state[f"{prefix}.{adapter}.D_fc2.bias"] = torch.randn(HIDDEN, generator=generator) * 0.1
    return state


def save_as_their_train_py(state: dict, path, **extra) -> None:
    """Their train.py saves {"epoch", "model" (the net's name), "state_dict", ...}, DataParallel-prefixed."""
    torch.save({"epoch": 3, "model": "sam", "state_dict": {f"module.{k}": v for k, v in state.items()}, **extra}, path)


class AuthorsForward:
    """The authors' 2D forward (`args.thd` off) from their raw state dict, in plain torch: their ImageEncoderViT with
    AdapterBlocks (pos_embed resized bicubically to the token grid, windows padded before norm1), SAM's prompt
    encoder, and the mask decoder of the generation that saved the state dict."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.w = state
        self.generation = "2024" if any(".mlp.fc." in key for key in state) else "2023"

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
        shortcut = x
        batch, height, width, channels = x.shape
        windowed = index not in GLOBAL_BLOCKS
        if windowed:  # their window_partition runs before norm1: zero padding tokens become norm1's bias
            padded_h, padded_w = height + -height % WINDOW, width + -width % WINDOW
            x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
            x = x.view(batch, padded_h // WINDOW, WINDOW, padded_w // WINDOW, WINDOW, channels)
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW, WINDOW, channels)
        a = self.vit_attention(self.layer_norm(x, f"{prefix}.norm1", 1e-6), f"{prefix}.attn")
        a = a + self.adapter(a, f"{prefix}.Space_Adapter")
        if windowed:
            a = a.view(batch, padded_h // WINDOW, padded_w // WINDOW, WINDOW, WINDOW, channels)
            a = a.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)[:, :height, :width]
        x = shortcut + a
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
        pos_embed = F.interpolate(
            w["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=x.shape[-2:], mode="bicubic", align_corners=False
        )
        x = (x + pos_embed).permute(0, 2, 3, 1)
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

    def self_attention(self, queries, tokens, index):
        """The first sub-block of two-way block `index`: SAM's (2023 code) or with a residual (2024 code)."""
        prefix = f"mask_decoder.transformer.layers.{index}"
        if self.generation == "2024":
            if index > 0:
                queries = queries + tokens
            queries = queries + self.decoder_attention(queries, queries, queries, f"{prefix}.self_attn")
        elif index == 0:
            queries = self.decoder_attention(queries, queries, queries, f"{prefix}.self_attn")
        else:
            queries = queries + self.decoder_attention(queries + tokens, queries + tokens, queries, f"{prefix}.self_attn")
        return self.layer_norm(queries, f"{prefix}.norm1", 1e-5)

    def block_mlp(self, queries, index):
        prefix = f"mask_decoder.transformer.layers.{index}.mlp"
        if self.generation == "2024":
            return self.linear(F.relu(self.linear(queries, f"{prefix}.layers.0.0")), f"{prefix}.fc")
        return self.linear(F.relu(self.linear(queries, f"{prefix}.lin1")), f"{prefix}.lin2")

    def masks(self, pixel_values, boxes):
        """Logits of all mask tokens (B, 4, 4g, 4g) and IoU predictions (B, 4) for one box (x0, y0, x1, y1) per
        image; their decoder returns the first n for `multimask_output = n`."""
        w, size = self.w, pixel_values.shape[-1]
        grid = size // PATCH
        embeddings = self.image_embeddings(pixel_values)
        batch, channels = embeddings.shape[:2]
        corners = self.fourier((boxes.reshape(-1, 2, 2) + 0.5) / size)
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
            queries = self.self_attention(queries, tokens, index)
            attended = self.decoder_attention(
                queries + tokens, keys + key_pe, keys, f"{prefix}.cross_attn_token_to_image"
            )
            queries = self.layer_norm(queries + attended, f"{prefix}.norm2", 1e-5)
            queries = self.layer_norm(queries + self.block_mlp(queries, index), f"{prefix}.norm3", 1e-5)
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
        return masks, self.mlp(queries[:, 0], "mask_decoder.iou_prediction_head", 3)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).norm() / expected.norm()).item()


def load_converted(folder) -> PeftModel:
    return PeftModel.from_pretrained(SamModel.from_pretrained(folder / "sam"), folder / "adapter").eval()


def box_inputs(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images and one box each, in pixels of the size their model was trained at."""
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    boxes = torch.tensor([[0.1, 0.12, 0.62, 0.7], [0.3, 0.03, 0.94, 0.47]]) * size
    return pixel_values, boxes


@pytest.mark.parametrize("generation", ["2023", "2024"])
@pytest.mark.parametrize("image_size", [256, 512, 896, 1024])
def test_converted_checkpoint_reproduces_the_authors_2d_forward(tmp_path, generation, image_size):
    state = authors_checkpoint(image_size=image_size, generation=generation)
    save_as_their_train_py(state, tmp_path / "checkpoint.pth", best_tol=0.42, path_helper={"ckpt_path": "logs"})
    result = convert_official_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "converted")

    assert result.sam_config.vision_config.image_size == image_size
    assert result.ignored_keys and all("Depth_Adapter" in key for key in result.ignored_keys)
    saved = json.loads((tmp_path / "converted" / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "MEDSA" and saved["modules_to_save"] == ["mask_decoder"]
    assert saved["depth_adapter"] is False and saved["init"] == "official" and saved["bottleneck_ratio"] == 0.25
    assert saved["pad_windows_before_norm"] is True
    assert saved["decoder_block"] == ("medsa-2024" if generation == "2024" else "sam")
    assert saved["base_model_name_or_path"] == "../sam"  # resolved against the adapter folder, not the machine

    model = load_converted(tmp_path / "converted")
    pixel_values, boxes = box_inputs(image_size)
    reference = AuthorsForward(state)
    with torch.no_grad():
        expected_embeddings = reference.image_embeddings(pixel_values)
        expected_masks, expected_iou = reference.masks(pixel_values, boxes)
        embeddings = model.get_image_embeddings(pixel_values)
        out = model(pixel_values=pixel_values, input_boxes=boxes[:, None], multimask_output=False)
        two_masks, two_ious = authors_multimask_logits(model, 2, pixel_values=pixel_values, input_boxes=boxes[:, None])

    assert expected_embeddings.abs().mean() > 0.1  # a real signal, not near-zero weights
    assert relative_error(embeddings, expected_embeddings) < 1e-4
    assert relative_error(out.pred_masks[:, 0], expected_masks[:, :1]) < 1e-4
    assert relative_error(out.iou_scores[:, 0], expected_iou[:, :1]) < 1e-4
    # their multimask_output = 2 (REFUGE): masks 0 and 1
    assert relative_error(two_masks[:, 0], expected_masks[:, :2]) < 1e-4
    assert relative_error(two_ious[:, 0], expected_iou[:, :2]) < 1e-4

    with torch.no_grad():  # the adapters matter: without them the encoder output differs
        with model.disable_adapter():
            plain = model.get_image_embeddings(pixel_values)
        fused = use_fused_attention(model).get_image_embeddings(pixel_values)  # the fast path pads the same way
    assert relative_error(plain, expected_embeddings) > 1e-2
    assert relative_error(fused, expected_embeddings) < 1e-4


@pytest.mark.parametrize(
    "field, value, image_size, matters",
    [
        ("pad_windows_before_norm", False, 1024, True),  # 64 tokens a side, windows of 14: padded
        ("pad_windows_before_norm", False, 896, False),  # 56 = 4 x 14: no padding, SAM's windows are the same
        ("decoder_block", "sam", 256, True),
    ],
)
def test_each_quirk_of_the_authors_code_is_needed_exactly_where_it_applies(tmp_path, field, value, image_size, matters):
    state = authors_checkpoint(image_size=image_size, generation="2024")
    torch.save(state, tmp_path / "checkpoint.pth")
    convert_official_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "converted")
    config_file = tmp_path / "converted" / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), field: value}))

    model = load_converted(tmp_path / "converted")
    pixel_values, boxes = box_inputs(image_size)
    with torch.no_grad():
        expected_masks, _ = AuthorsForward(state).masks(pixel_values, boxes)
        out = model(pixel_values=pixel_values, input_boxes=boxes[:, None], multimask_output=False)
    error = relative_error(out.pred_masks[:, 0], expected_masks[:, :1])
    assert (error > 1e-4) if matters else (error < 1e-5)  # measured: 6e-4 (padding at 1024 px), 0.12 (block)


def test_authors_multimask_logits_checks_the_number_of_masks(tmp_path):
    torch.save(authors_checkpoint(), tmp_path / "checkpoint.pth")
    convert_official_checkpoint(tmp_path / "checkpoint.pth", tmp_path / "converted")
    pixel_values, boxes = box_inputs(256)
    with pytest.raises(ValueError, match=r"num_masks must be in 1\.\.4"):
        authors_multimask_logits(load_converted(tmp_path / "converted"), 5, pixel_values=pixel_values, input_boxes=boxes)


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
