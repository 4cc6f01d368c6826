"""What the tests share: tiny SAMs with real random weights and adapters, and a local stand-in for the Hub."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
from huggingface_hub import HfApi
from transformers import SamModel

from medsa_peft.tiny_sam import randomize_weights, tiny_sam_config

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`code` run by a fresh interpreter (in the repository root unless env["CWD"] says), with `env` added to this
    process's environment; fails the test on a non-zero exit."""
    env = env or {}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        cwd=env.get("CWD", REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def tiny_sam_model(seed: int = 0, **config_kwargs) -> SamModel:
    """A tiny `SamModel` in eval mode with real random weights (see `tiny_sam_config`)."""
    model = SamModel(tiny_sam_config(**config_kwargs))
    return randomize_weights(model, seed=seed).eval()


class LocalHub:
    """A stand-in for the Hugging Face Hub at the `HfApi` boundary, backed by a local Hub cache.

    Repositories live in `$HF_HOME/hub/models--org--name/` (data sets: `datasets--org--name/`) with `refs/main`
    and `snapshots/<hash>/`, the layout `huggingface_hub` reads with `HF_HUB_OFFLINE=1`. `install()` routes
    `HfApi.create_repo`, `HfApi.create_commit` and `HfApi.upload_folder` here, so `push_to_hub` "uploads" into the cache and loading by
    repo id then works offline.
    """

    def __init__(self, hf_home: str | os.PathLike):
        self.cache = Path(hf_home) / "hub"
        self.commits: list[dict] = []
        self.uploaded_folders: list[str] = []  # repositories that `HfApi.upload_folder` wrote

    def _repo_dir(self, repo_id: str, repo_type: str | None) -> Path:
        return self.cache / f"{repo_type or 'model'}s--{repo_id.replace('/', '--')}"

    def snapshot_dir(self, repo_id: str, repo_type: str | None = None) -> Path:
        repo_dir = self._repo_dir(repo_id, repo_type)
        return repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text()

    def publish_folder(self, repo_id: str, folder: str | os.PathLike, repo_type: str | None = None) -> Path:
        """Put every file of `folder` into a new commit of `repo_id`; returns the snapshot folder."""
        folder = Path(folder)
        files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        return self._commit(repo_id, files, repo_type)

    def _commit(self, repo_id: str, files: dict[str, bytes], repo_type: str | None = None) -> Path:
        repo_dir = self._repo_dir(repo_id, repo_type)
        refs = repo_dir / "refs" / "main"
        previous = repo_dir / "snapshots" / refs.read_text() if refs.exists() else None
        commit = hashlib.sha1(repr((repo_id, len(self.commits), sorted(files))).encode()).hexdigest()
        snapshot = repo_dir / "snapshots" / commit
        if previous is not None:
            shutil.copytree(previous, snapshot)
        for name, data in files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(data)
        refs.parent.mkdir(parents=True, exist_ok=True)
        refs.write_text(commit)
        self.commits.append({"repo_id": repo_id, "files": sorted(files), "commit": commit})
        return snapshot

    def create_repo(self, repo_id: str, **kwargs) -> SimpleNamespace:
        return SimpleNamespace(repo_id=repo_id, url=f"local-hub://{repo_id}")

    def create_commit(self, repo_id: str, operations, **kwargs) -> SimpleNamespace:
        files = {}
        for operation in operations:
            source = operation.path_or_fileobj
            files[operation.path_in_repo] = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        snapshot = self._commit(repo_id, files, kwargs.get("repo_type"))
        return SimpleNamespace(commit_url=f"local-hub://{repo_id}/commit/{snapshot.name}", oid=snapshot.name)

    def upload_folder(self, repo_id: str, folder_path: str | os.PathLike, **kwargs) -> SimpleNamespace:
        self.uploaded_folders.append(repo_id)
        snapshot = self.publish_folder(repo_id, folder_path, kwargs.get("repo_type"))
        return SimpleNamespace(commit_url=f"local-hub://{repo_id}/commit/{snapshot.name}", oid=snapshot.name)

    def install(self, set_attribute=setattr) -> None:
        """Route `HfApi.create_repo` / `create_commit` / `upload_folder` of every HfApi instance to this stand-in.

        In pytest pass `monkeypatch.setattr` so the patch is undone after the test.
        """
        set_attribute(HfApi, "create_repo", lambda api, repo_id, **kwargs: self.create_repo(repo_id, **kwargs))
        set_attribute(
            HfApi,
            "create_commit",
            lambda api, repo_id, operations, **kwargs: self.create_commit(repo_id, operations, **kwargs),
        )
        set_attribute(
            HfApi,
            "upload_folder",
            lambda api, *, repo_id, folder_path, **kwargs: self.upload_folder(repo_id, folder_path, **kwargs),
        )


@torch.no_grad()
def randomize_adapters(model: torch.nn.Module, std: float = 0.05, seed: int = 1) -> torch.nn.Module:
    """Give every Med-SA adapter parameter a random value in place (a fresh zero-init adapter computes exactly
    SAM, so tests of save / load / inference need adapters that change the output); returns `model.eval()`."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".medsa_" in name:
            param.copy_((torch.randn(param.shape, generator=generator) * std).to(param.dtype))
    return model.eval()


@torch.no_grad()
def perturb_adapter(
    model: torch.nn.Module, adapter_name: str = "default", seed: int = 1, std: float = 0.05
) -> torch.nn.Module:
    """Move one adapter's weights, its modules_to_save copies included, away from their initialisation by noise of
    `std`, as training would: a fresh zero-initialised Med-SA adapter computes exactly SAM. Returns `model.eval()`."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if f".{adapter_name}." in name and (".medsa_" in name or ".modules_to_save." in name):
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def tiny_sam_hq_model(seed: int = 0) -> torch.nn.Module:
    """A tiny `SamHQModel` in eval mode with real random weights: `tiny_sam_config`'s sizes (64 px, 8 x 8 tokens,
    layer 0 in 4 x 4 windows, layer 1 global), plus SAM-HQ's HQ token and its feature layers."""
    from transformers import SamHQConfig, SamHQModel

    sam = tiny_sam_config().to_dict()
    vision_size = sam["vision_config"]["hidden_size"]
    config = SamHQConfig(
        vision_config=sam["vision_config"],
        prompt_encoder_config=sam["prompt_encoder_config"],
        mask_decoder_config={**sam["mask_decoder_config"], "vit_dim": vision_size},
    )
    return randomize_weights(SamHQModel(config), seed=seed).eval()


def tiny_sam2_config(**backbone_kwargs):
    """A Sam2Config small enough for CPU tests: 64 px images, a Hiera of four stages on 16 x 16, 8 x 8, 4 x 4 and
    2 x 2 tokens (widths 8, 16, 32, 64), with 1, 2, 2, 1 blocks.

    Blocks 1, 3 and 5 start a stage: each doubles the width and pools its queries 2 x 2 inside the windows of the
    stage before (4 x 4, 4 x 4, 6 x 6). Block 2 attends globally; block 4 attends in 6 x 6 windows on its 4 x 4 grid,
    padded, as SAM 2's 14 x 14 windows pad its 64 x 64 grid.
    """
    from transformers import Sam2Config

    widths = [8, 16, 32, 64]
    backbone = dict(
        model_type="sam2_hiera_det_model",
        hidden_size=widths[0],
        num_attention_heads=1,
        image_size=[64, 64],
        blocks_per_stage=[1, 2, 2, 1],
        embed_dim_per_stage=widths,
        num_attention_heads_per_stage=[1, 2, 2, 4],
        window_size_per_stage=[4, 4, 6, 2],
        global_attention_blocks=[2],
        window_positional_embedding_background_size=[4, 4],
        **backbone_kwargs,
    )
    vision = dict(
        backbone_config=backbone,
        backbone_channel_list=widths[::-1],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=32,
    )
    prompt = dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4)
    decoder = dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


def tiny_sam2_model(seed: int = 0) -> torch.nn.Module:
    """A tiny `Sam2Model` (SAM 2's image predictor) in eval mode with real random weights (`tiny_sam2_config`).

    Its prompt encoder's random positional table is a buffer, drawn at construction: seeded too, so two calls give
    the same model."""
    from transformers import Sam2Model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Sam2Model(tiny_sam2_config())
    return randomize_weights(model, seed=seed).eval()


def quick_training(tiny_sam_dir: str, dataset_cache: str, output_dir, **overrides):
    """In-process training options of the tests: the tiny SAM, a shared data set cache, no evaluation stops."""
    from medsa_peft.training import MedSATrainingArguments

    options = dict(
        model_name_or_path=tiny_sam_dir,
        cache_dir=dataset_cache,
        output_dir=str(output_dir),
        eval_every=0,
        checkpointing_steps=0,
        max_eval_cases=1,
        report_to="none",
    )
    return MedSATrainingArguments(**{**options, **overrides})


# The memory of the tiny video models (SAM 2's, SAM 3's tracker, EdgeTAM): SAM 2's prompt encoder and two-way decoder,
# behind the image encoder of each.
TRACKER_MEMORY = dict(
    image_size=64,
    num_maskmem=3,
    max_object_pointers_in_encoder=4,
    memory_attention_hidden_size=128,
    memory_attention_num_layers=1,
    memory_attention_rope_feat_sizes=[4, 4],
    memory_encoder_hidden_size=128,
    memory_encoder_output_channels=64,
    mask_downsampler_embed_dim=128,
    memory_fuser_embed_dim=128,
    memory_fuser_intermediate_dim=64,
)


def _tracker_heads(width: int, patch_size: int) -> dict:
    """Prompt encoder and mask decoder configs at `width` on 64 px images whose embeddings are 64 / patch_size wide."""
    return dict(
        prompt_encoder_config=dict(hidden_size=width, image_size=64, patch_size=patch_size, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=width, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )


def _seeded_eval_model(build, seed: int, video: bool) -> torch.nn.Module:
    """`build()` under `seed` (positional tables are drawn at construction), with random weights, in eval mode. A
    video model's object-score head is biased to see the object, so its masks are not emptied."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = randomize_weights(build(), seed=seed).eval()
    if video:
        with torch.no_grad():
            model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(10.0)
    return model


def tiny_sam2_video_model(seed: int = 0) -> torch.nn.Module:
    """A tiny `Sam2VideoModel` (SAM 2's tracker) in eval mode with real random weights: `tiny_sam2_config`'s image
    encoder and decoder at a width of 128, one memory-attention layer, a memory of 3 frames (`TRACKER_MEMORY`).

    The memory is 64 channels wide, as in SAM 2 (transformers' memory attention reads 64-channel memories), and the
    decoder wider than it, as SAM 2's object pointers are split into memory-wide tokens. The object-score head is
    biased to see the object on every slice: random weights would otherwise empty most masks (SAM 2's occlusion
    gate), leaving nothing to compare."""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    parts = tiny_sam2_config().to_dict()
    parts["vision_config"]["fpn_hidden_size"] = 128
    parts["prompt_encoder_config"]["hidden_size"] = 128
    parts["mask_decoder_config"]["hidden_size"] = 128
    config = Sam2VideoConfig(
        vision_config=parts["vision_config"],
        prompt_encoder_config=parts["prompt_encoder_config"],
        mask_decoder_config=parts["mask_decoder_config"],
        memory_attention_feed_forward_hidden_size=64,
        **TRACKER_MEMORY,
    )
    return _seeded_eval_model(lambda: Sam2VideoModel(config), seed, video=True)


def tiny_sam3_tracker_model(seed: int = 0, video: bool = False) -> torch.nn.Module:
    """A tiny `Sam3TrackerModel` (or `Sam3TrackerVideoModel`) in eval mode with real random weights: SAM 3's ViT
    (two `Sam3ViTLayer`s of width 32 on 8 x 8 patches of a 64 px image, the first in 4 x 4 windows) and its FPN to
    32 x 32, 16 x 16 and 8 x 8 maps, then SAM 2's prompt encoder and two-way decoder at width 32 (128 for the video
    model, whose memory is `tiny_sam2_video_model`'s)."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel, Sam3TrackerVideoConfig, Sam3TrackerVideoModel

    width = 128 if video else 32
    vit = dict(
        model_type="sam3_vit_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=32,
    )
    vision = dict(
        model_type="sam3_vision_model",
        backbone_config=vit,
        fpn_hidden_size=width,
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
    )
    parts = dict(vision_config=vision, **_tracker_heads(width, patch_size=8))
    if video:
        config = Sam3TrackerVideoConfig(**parts, memory_attention_feed_forward_hidden_size=64, **TRACKER_MEMORY)
        return _seeded_eval_model(lambda: Sam3TrackerVideoModel(config), seed, video)
    config = Sam3TrackerConfig(**parts)
    return _seeded_eval_model(lambda: Sam3TrackerModel(config), seed, video)


class TinyRepViTStandIn(torch.nn.Module):
    """Four strided convolutions in place of EdgeTAM's RepViT, which transformers builds through timm (not a test
    dependency). They give what EdgeTAM's neck reads from timm's `features_only` model: `last_hidden_state`, a list
    of (B, C, H, W) maps at strides 4, 8, 16 and 32, here 8, 16, 32 and 64 channels wide."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)):
        super().__init__()
        channels = (3, *widths)
        self.stages = torch.nn.ModuleList(
            torch.nn.Conv2d(inputs, outputs, kernel_size=4 if index == 0 else 2, stride=4 if index == 0 else 2)
            for index, (inputs, outputs) in enumerate(zip(channels, channels[1:]))
        )

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> SimpleNamespace:
        maps, hidden = [], pixel_values
        for stage in self.stages:
            hidden = stage(hidden)
            maps.append(hidden)
        return SimpleNamespace(last_hidden_state=maps, hidden_states=None)


def tiny_edgetam_model(seed: int = 0, video: bool = False) -> torch.nn.Module:
    """A tiny `EdgeTamModel` (or `EdgeTamVideoModel`) in eval mode with real random weights: `TinyRepViTStandIn` as
    its backbone, EdgeTAM's neck on `tiny_sam2_config`'s feature sizes (16 x 16, 8 x 8, 4 x 4), then SAM 2's prompt
    encoder and two-way decoder at width 32 (128 for the video model, whose memory is `tiny_sam2_video_model`'s, with
    a perceiver of 4 latents and 2 x 2 windows of latents on its 4 x 4 maps)."""
    from transformers import EdgeTamConfig, EdgeTamModel, EdgeTamVideoConfig, EdgeTamVideoModel

    width = 128 if video else 32
    sam2_vision = tiny_sam2_config().to_dict()["vision_config"]
    vision = dict(
        model_type="edgetam_vision_model",
        backbone_channel_list=sam2_vision["backbone_channel_list"],
        backbone_feature_sizes=sam2_vision["backbone_feature_sizes"],
        fpn_hidden_size=width,
    )
    parts = dict(vision_config=vision, **_tracker_heads(width, patch_size=16))
    if video:
        config = EdgeTamVideoConfig(
            **parts,
            memory_attention_mlp_hidden_size=64,
            memory_attention_rope_k_sizes=[4, 4],
            perceiver_resampler_num_latents=4,
            perceiver_resampler_num_latents_2d=4,
            perceiver_resampler_hidden_size=64,
            perceiver_resampler_mlp_intermediate_size=64,
            perceiver_resampler_num_layers=1,
            **TRACKER_MEMORY,
        )
        model_class = EdgeTamVideoModel
    else:
        config, model_class = EdgeTamConfig(**parts), EdgeTamModel

    def build() -> torch.nn.Module:
        with repvit_stand_in():
            return model_class(config)

    return _seeded_eval_model(build, seed, video)


@contextlib.contextmanager
def repvit_stand_in():
    """Inside it EdgeTAM models build `TinyRepViTStandIn` where transformers would build their RepViT through timm:
    to build a tiny EdgeTAM, or to load a saved one with `from_pretrained`."""
    from transformers import AutoModel
    from transformers.models.edgetam import modeling_edgetam

    def from_config(sub_config):
        is_timm = sub_config.model_type == "timm_wrapper"
        return TinyRepViTStandIn() if is_timm else AutoModel.from_config(sub_config)

    with mock.patch.object(modeling_edgetam, "AutoModel", SimpleNamespace(from_config=from_config)):
        yield
