"""Conversion of the authors' Med-SA checkpoints into a transformers `SamModel` folder plus a MEDSA adapter.

The authors' code (Wu et al., github.com/KidsWithTokens/Medical-SAM-Adapter; the Medical-Adapter-Zoo adapters)
saves a `segment_anything`-style state dict: `image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, with
`image_encoder.blocks.N.{Space,MLP,Depth}_Adapter.D_fc{1,2}.{weight,bias}` in every ViT block, and trains the
whole mask decoder. `convert_official_checkpoint` writes

    OUT/sam       SamModel.save_pretrained: SAM with their (frozen) encoder and prompt encoder and their decoder
    OUT/adapter   a MEDSA adapter saved with `MedSAConfig.official(depth_adapter=...)`: the encoder adapters and,
                  through modules_to_save=["mask_decoder"], their trained decoder

so `PeftModel.from_pretrained(SamModel.from_pretrained(OUT/sam), OUT/adapter)` runs their model. The key
mapping is `SAM_KEY_MAPPING`; the ViT size and the image size the checkpoint was trained at come from the
tensor shapes.

Two generations of their code are told apart by the names of the two-way blocks' MLPs: `mlp.lin1` / `mlp.lin2`
(2023, SAM's decoder block) and `mlp.layers.0.0` / `mlp.fc` (since January 2024, a block whose self-attention
keeps its residual; `MedSAConfig.decoder_block="medsa-2024"`). Both pad attention windows before the first
layer norm (`MedSAConfig.pad_windows_before_norm`) and use layer-norm eps 1e-5 in the two-way blocks (written
into the converted SamConfig). With these the 2D forward is theirs to float rounding.

Their SD-Trans depth branch attends over depth inside the attention windows and re-applies the first layer
norm; this package's depth branch follows docs/design.md instead. A converted depth adapter therefore
carries their trained weights into that design: its 3D outputs are not the authors' numbers.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from .tuner.adapters import adapter_width
from .tuner.config import MedSAConfig

__all__ = [
    "CheckpointError",
    "ConversionResult",
    "authors_multimask_logits",
    "convert_official_checkpoint",
    "infer_sam_config",
    "is_medsa_2024_checkpoint",
    "load_official_state_dict",
    "official_to_sam_key",
]

# (pattern on the authors' key, replacement giving transformers' SamModel key); the first match wins.
SAM_KEY_MAPPING: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm([12])\.", r"vision_encoder.layers.\1.layer_norm\2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.rel_(?:pos_)?([hw])$", r"vision_encoder.layers.\1.attn.rel_pos_\2"),
    (r"^image_encoder\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.lin1|mlp\.lin2)\.", r"vision_encoder.layers.\1.\2."),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "shared_image_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.", r"prompt_encoder.point_embed.\1."),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"prompt_encoder.\1."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.", r"mask_decoder.\1."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    # since January 2024 their two-way blocks' MLP is MLPBlock(layers.0 = [Linear, act], fc): SAM's lin1, lin2
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.0\.0\.", r"mask_decoder.transformer.layers.\1.mlp.lin1."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.fc\.", r"mask_decoder.transformer.layers.\1.mlp.lin2."),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\."
        r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|mlp\.lin1|mlp\.lin2)\.",
        r"mask_decoder.transformer.layers.\1.\2.",
    ),
    (r"^mask_decoder\.transformer\.final_attn_token_to_image\.", "mask_decoder.transformer.final_attn_token_to_image."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
# segment_anything's MLP(layers.0 .. layers.n-1) is transformers' SamFeedForward(proj_in, layers.0 .. n-3, proj_out).
_DECODER_MLP_KEY = re.compile(
    r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(.+)$"
)
_ADAPTER_KEY = re.compile(
    r"^image_encoder\.blocks\.(\d+)\.(Space_Adapter|MLP_Adapter|Depth_Adapter)\.D_fc([12])\.(weight|bias)$"
)
OFFICIAL_ADAPTER_NAMES = {
    "Space_Adapter": "medsa_space_adapter",
    "MLP_Adapter": "medsa_mlp_adapter",
    "Depth_Adapter": "medsa_depth_adapter",
}
# Buffers some forks save with the model; SamModel takes SAM's pixel statistics from its processor instead.
_IGNORED_KEYS = ("pixel_mean", "pixel_std")
# The 2024 generation of their code names the two-way blocks' second MLP layer `mlp.fc`.
_MEDSA_2024_DECODER_KEY = re.compile(r"^mask_decoder\.transformer\.layers\.\d+\.mlp\.fc\.weight$")
# segment_anything's two-way blocks use nn.LayerNorm's default eps; transformers' SamMaskDecoderConfig says 1e-6.
AUTHORS_DECODER_LAYER_NORM_EPS = 1e-5
# Not recoverable from tensor shapes; every published SAM uses 8 heads in the mask decoder.
SAM_DECODER_ATTENTION_HEADS = 8


class CheckpointError(ValueError):
    """The checkpoint is not a Med-SA checkpoint of the authors' code, or is incomplete."""


@dataclass
class ConversionResult:
    """Where the converted model went and what the conversion decided."""

    sam_dir: Path
    adapter_dir: Path
    config: MedSAConfig
    sam_config: SamConfig
    ignored_keys: list[str] = field(default_factory=list)


def load_official_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an authors' checkpoint: bare, or under "state_dict" or "model" (as their train.py saves
    it), `module.` prefixes of DataParallel removed. `.safetensors` files are read too.

    Other files are read with `torch.load(weights_only=True)`; `allow_pickle=True` lifts that restriction for
    checkpoints holding other Python objects (only for files you trust: unpickling runs code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        checkpoint = load_file(path)
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except pickle.UnpicklingError as error:
            lines = str(error).splitlines()  # torch's message is long; its "Unsupported global" line names the object
            detail = next((line.strip() for line in lines if "Unsupported global" in line), lines[0] if lines else "")
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refuses this file ({detail}). If you trust its source, "
                "pass allow_pickle=True (CLI: --allow-pickle)."
            ) from error
        except (RuntimeError, EOFError) as error:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got a {type(checkpoint).__name__}")
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {key.removeprefix("module."): value for key, value in checkpoint.items()}
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors or "image_encoder.pos_embed" not in state:
        raise CheckpointError(
            f"{path}: not a segment_anything-style state dict (no 'image_encoder.pos_embed'"
            + (f"; non-tensor entries {not_tensors[:5]}" if not_tensors else "")
            + ")"
        )
    return state


def _block_indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    found = {int(match.group(1)) for key in state if (match := re.match(pattern, key))}
    return sorted(found)


def _rel_pos_table(state: Mapping[str, torch.Tensor], block: int, axis: str) -> torch.Tensor:
    for name in (f"image_encoder.blocks.{block}.attn.rel_pos_{axis}", f"image_encoder.blocks.{block}.attn.rel_{axis}"):
        if name in state:
            return state[name]
    raise CheckpointError(f"block {block} has no relative-position table (attn.rel_pos_{axis} or attn.rel_{axis})")


def _attention_layout(lengths: list[int]) -> tuple[int, list[int], int]:
    """(window_size, global_attn_indexes, token grid) from the lengths 2 * size - 1 of every block's tables.

    Their blocks size the tables when they are built: windowed blocks for the window, global blocks for the token
    grid of the image size they trained at. Block 0 attends in windows in every SAM, so the blocks whose tables
    differ from block 0's are the global ones. When all lengths agree, one window spans the whole grid, which is
    global attention.
    """
    if any(length % 2 == 0 for length in lengths):
        raise CheckpointError(f"unexpected relative-position table lengths {sorted(set(lengths))}: expected 2 * size - 1")
    window = (lengths[0] + 1) // 2
    global_indexes = [index for index, length in enumerate(lengths) if length != lengths[0]]
    global_lengths = {lengths[index] for index in global_indexes}
    if len(global_lengths) > 1:
        raise CheckpointError(
            f"the global-attention blocks {global_indexes} have relative-position tables of different lengths "
            f"{sorted(global_lengths)}: expected one token grid"
        )
    grid = (global_lengths.pop() + 1) // 2 if global_lengths else window
    return window, global_indexes, grid


def _first_present(state: Mapping[str, torch.Tensor], *names: str) -> torch.Tensor:
    for name in names:
        if name in state:
            return state[name]
    raise KeyError(names[0])


def is_medsa_2024_checkpoint(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether the checkpoint comes from the authors' code since January 2024 (two-way block MLPs named
    `mlp.layers.0.0` / `mlp.fc`, self-attention with a residual) rather than the 2023 code (SAM's block)."""
    return any(_MEDSA_2024_DECODER_KEY.match(key) for key in state)


def infer_sam_config(
    state: Mapping[str, torch.Tensor], decoder_attention_heads: int = SAM_DECODER_ATTENTION_HEADS
) -> SamConfig:
    """The SamConfig of an authors' checkpoint, read off its tensor shapes: hidden size, depth, heads, MLP width,
    window size and global-attention blocks of the ViT; the image size it was trained at from the global blocks'
    relative-position tables (their `pos_embed` is always stored for 1024 px); prompt encoder and decoder sizes.
    The decoder's head count cannot be read off shapes (`decoder_attention_heads`, SAM's 8); its block layer norms
    get segment_anything's eps 1e-5."""
    try:
        hidden_size = state["image_encoder.pos_embed"].shape[-1]
        patch_size = state["image_encoder.patch_embed.proj.weight"].shape[-1]
        blocks = _block_indices(state, r"^image_encoder\.blocks\.(\d+)\.")
        tables = [_rel_pos_table(state, block, "h") for block in blocks]
        head_dim = tables[0].shape[1]
        window_size, global_indexes, grid = _attention_layout([table.shape[0] for table in tables])
        output_channels = state["image_encoder.neck.0.weight"].shape[0]
        gaussian = state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
        decoder_layers = _block_indices(state, r"^mask_decoder\.transformer\.layers\.(\d+)\.")
        iou_layers = _block_indices(state, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
        vision = SamVisionConfig(
            hidden_size=hidden_size,
            output_channels=output_channels,
            num_hidden_layers=len(blocks),
            num_attention_heads=hidden_size // head_dim,
            image_size=grid * patch_size,
            patch_size=patch_size,
            window_size=window_size,
            global_attn_indexes=global_indexes,
            mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
            num_pos_feats=gaussian.shape[1],
        )
        prompt = SamPromptEncoderConfig(
            hidden_size=output_channels,
            image_size=grid * patch_size,
            patch_size=patch_size,
            mask_input_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        )
        cross_attention_width = state[
            "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"
        ].shape[0]
        decoder_mlp = _first_present(
            state,
            "mask_decoder.transformer.layers.0.mlp.lin1.weight",
            "mask_decoder.transformer.layers.0.mlp.layers.0.0.weight",
        )
        decoder = SamMaskDecoderConfig(
            hidden_size=output_channels,
            num_hidden_layers=len(decoder_layers),
            num_attention_heads=decoder_attention_heads,
            mlp_dim=decoder_mlp.shape[0],
            attention_downsample_rate=output_channels // cross_attention_width,
            num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
            iou_head_depth=len(iou_layers),
            iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
            layer_norm_eps=AUTHORS_DECODER_LAYER_NORM_EPS,
        )
    except KeyError as error:
        raise CheckpointError(f"the checkpoint lacks {error.args[0]!r}, which every SAM checkpoint holds") from error
    return SamConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(), mask_decoder_config=decoder.to_dict()
    )


def _decoder_mlp_key(match: re.Match, num_layers: int) -> str:
    owner, index, rest = match.group(1), int(match.group(2)), match.group(3)
    if index == 0:
        layer = "proj_in"
    elif index == num_layers - 1:
        layer = "proj_out"
    else:
        layer = f"layers.{index - 1}"
    return f"mask_decoder.{owner}.{layer}.{rest}"


def official_to_sam_key(key: str, mlp_depths: Mapping[str, int]) -> str | None:
    """transformers' SamModel name of an authors' SAM key, or None when the key is not part of SAM.

    mlp_depths: number of Linear layers of each decoder MLP ("iou_prediction_head", "output_hypernetworks_mlps.N").
    """
    match = _DECODER_MLP_KEY.match(key)
    if match:
        return _decoder_mlp_key(match, mlp_depths[match.group(1)])
    for pattern, replacement in SAM_KEY_MAPPING:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _pos_embed_for_grid(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Their (1, G, G, C) `pos_embed`, stored for 1024 px, as their encoder resizes it at run time for a grid x grid
    token map (bicubic, align_corners=False); unchanged when G == grid."""
    if pos_embed.shape[1:3] == (grid, grid):
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1).contiguous().to(pos_embed.dtype)


def _sam_state_dict(state: Mapping[str, torch.Tensor], config: SamConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """SamModel's state dict from the authors' SAM keys, and the keys that were neither SAM nor adapter keys."""
    mlp_depths: dict[str, int] = {}
    for key in state:
        if match := _DECODER_MLP_KEY.match(key):
            mlp_depths[match.group(1)] = max(mlp_depths.get(match.group(1), 0), int(match.group(2)) + 1)
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    sam_state, unknown = {}, []
    for key, tensor in state.items():
        if _ADAPTER_KEY.match(key) or key in _IGNORED_KEYS:
            continue
        name = official_to_sam_key(key, mlp_depths)
        if name is None:
            unknown.append(key)
            continue
        if name == "vision_encoder.pos_embed":
            tensor = _pos_embed_for_grid(tensor, grid)
        sam_state[name] = tensor
    tied = "prompt_encoder.shared_embedding.positional_embedding"
    if "shared_image_embedding.positional_embedding" in sam_state:
        sam_state[tied] = sam_state["shared_image_embedding.positional_embedding"]
    return sam_state, unknown


def _build_sam(state: dict[str, torch.Tensor], config: SamConfig) -> SamModel:
    model = SamModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            "the checkpoint does not map onto transformers' SamModel: "
            + (f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[:8]}" if unexpected else "")
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"tensor shapes do not fit the inferred SamConfig: {error}") from error
    return model.eval()


def _adapter_tensors(
    state: Mapping[str, torch.Tensor], num_layers: int, depth_adapter: bool
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PEFT parameter names (adapter "default") of the encoder adapters, and the depth keys left out in 2D."""
    wanted = ("Space_Adapter", "MLP_Adapter") + (("Depth_Adapter",) if depth_adapter else ())
    tensors, left_out = {}, []
    for key, tensor in state.items():
        match = _ADAPTER_KEY.match(key)
        if not match:
            continue
        block, kind, layer, leaf = match.groups()
        if kind not in wanted:
            left_out.append(key)
            continue
        name = f"base_model.model.vision_encoder.layers.{block}.{OFFICIAL_ADAPTER_NAMES[kind]}.default.fc{layer}.{leaf}"
        tensors[name] = tensor
    for block in range(num_layers):
        for kind in wanted:
            if f"image_encoder.blocks.{block}.{kind}.D_fc1.weight" not in state:
                hint = " (convert without --depth for a 2D adapter)" if kind == "Depth_Adapter" else ""
                raise CheckpointError(
                    f"block {block} has no {kind}: not a Med-SA checkpoint of the authors' code{hint}"
                )
    return tensors, left_out


def _bottleneck_ratio(state: Mapping[str, torch.Tensor], hidden_size: int) -> float:
    widths = {
        tensor.shape[0] for key, tensor in state.items() if key.endswith(".D_fc1.weight") and _ADAPTER_KEY.match(key)
    }
    if len(widths) != 1:
        raise CheckpointError(f"the adapters have different widths {sorted(widths)}; MedSAConfig uses one width")
    width = widths.pop()
    ratio = width / hidden_size
    if adapter_width(hidden_size, ratio) != width:
        raise CheckpointError(f"adapter width {width} is not reachable as round({hidden_size} * ratio)")
    return ratio


def convert_official_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    depth_adapter: bool = False,
    allow_pickle: bool = False,
    decoder_attention_heads: int = SAM_DECODER_ATTENTION_HEADS,
) -> ConversionResult:
    """Convert an authors' Med-SA checkpoint into `out_dir/sam` (SamModel) and `out_dir/adapter` (MEDSA).

    The image size comes from the checkpoint (`result.sam_config.vision_config.image_size`): feed images of that
    size, as their code was trained on. depth_adapter: also convert the Depth_Adapter weights (3D, SD-Trans). Without it, Depth_Adapter keys are
    left out (their 2D training never runs that branch) and listed in the result's `ignored_keys`.
    Nothing is written unless the whole conversion succeeds; existing `sam` / `adapter` folders are not replaced.
    """
    out_dir = Path(out_dir)
    targets = {name: out_dir / name for name in ("sam", "adapter")}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist; remove them or choose another --out")
    state = load_official_state_dict(checkpoint, allow_pickle=allow_pickle)
    sam_config = infer_sam_config(state, decoder_attention_heads)
    vision = sam_config.vision_config
    sam_state, unknown = _sam_state_dict(state, sam_config)
    if unknown:
        raise CheckpointError(f"{checkpoint}: keys that are neither SAM nor Med-SA adapter weights: {unknown[:8]}")
    adapter_state, left_out = _adapter_tensors(state, vision.num_hidden_layers, depth_adapter)
    if not adapter_state:
        raise CheckpointError(f"{checkpoint}: no Med-SA adapter weights (image_encoder.blocks.N.Space_Adapter...)")
    config = MedSAConfig.official(
        depth_adapter=depth_adapter,
        bottleneck_ratio=_bottleneck_ratio(state, vision.hidden_size),
        pad_windows_before_norm=True,
        decoder_block="medsa-2024" if is_medsa_2024_checkpoint(state) else "sam",
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".convert-"))
    try:
        _build_sam(sam_state, sam_config).save_pretrained(staging / "sam")
        model = get_peft_model(SamModel.from_pretrained(staging / "sam"), config)
        _load_adapter_tensors(model, adapter_state, sam_state)
        config.base_model_name_or_path = f"../{targets['sam'].name}"  # beside the adapter; no path of this machine
        model.save_pretrained(staging / "adapter", save_embedding_layers=False)  # SAM has no vocabulary
        for name, target in targets.items():
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConversionResult(targets["sam"], targets["adapter"], config, sam_config, ignored_keys=left_out)


@torch.no_grad()
def _load_adapter_tensors(
    model, adapter_state: Mapping[str, torch.Tensor], sam_state: Mapping[str, torch.Tensor]
) -> None:
    """Copy the adapter weights and the trained decoder (modules_to_save) into the PEFT model; every trainable
    parameter must receive a value."""
    decoder_prefix = "base_model.model.mask_decoder.modules_to_save.default."
    parameters = dict(model.named_parameters())
    values = dict(adapter_state)
    for name, tensor in sam_state.items():
        if name.startswith("mask_decoder."):
            values[decoder_prefix + name.removeprefix("mask_decoder.")] = tensor
    trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
    if set(values) != trainable:
        raise CheckpointError(
            f"adapter weights do not match MedSAConfig.official: unfilled {sorted(trainable - set(values))[:5]}, "
            f"unused {sorted(set(values) - trainable)[:5]}"
        )
    for name, tensor in values.items():
        if parameters[name].shape != tensor.shape:
            raise CheckpointError(
                f"{name}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(parameters[name].shape)} expected"
            )
        parameters[name].copy_(tensor)


def authors_multimask_logits(model: torch.nn.Module, num_masks: int, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks 0 .. num_masks - 1 of the decoder and their IoU predictions, as the authors' decoder returns them for
    `multimask_output = num_masks` (their REFUGE runs use 2).

    transformers' SAM returns mask 0 (`multimask_output=False`) or masks 1.. (`True`); this runs the image encoder
    once and the decoder both ways. `inputs` are SamModel's prompt arguments (`input_boxes`, `input_points`, ...)
    plus `pixel_values` (B, 3, H, W).

    Returns:
        pred_masks (B, P, num_masks, h, w) low-resolution logits, iou_scores (B, P, num_masks).
    """
    available = model.config.mask_decoder_config.num_multimask_outputs + 1
    if not 1 <= num_masks <= available:
        raise ValueError(f"num_masks must be in 1..{available} (the decoder's mask tokens), got {num_masks}")
    image_embeddings = model.get_image_embeddings(inputs.pop("pixel_values"))
    single = model(image_embeddings=image_embeddings, multimask_output=False, **inputs)
    rest = model(image_embeddings=image_embeddings, multimask_output=True, **inputs)
    pred_masks = torch.cat([single.pred_masks, rest.pred_masks], dim=2)[:, :, :num_masks]
    return pred_masks, torch.cat([single.iou_scores, rest.iou_scores], dim=2)[:, :, :num_masks]
