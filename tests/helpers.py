"""What the tests share: tiny SAMs with real random weights and adapters, and a local stand-in for the Hub."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import torch
from huggingface_hub import HfApi
from transformers import SamModel

from medsa_peft.tiny_sam import randomize_weights, tiny_sam_config


def tiny_sam_model(seed: int = 0, **config_kwargs) -> SamModel:
    """A tiny `SamModel` in eval mode with real random weights (see `tiny_sam_config`)."""
    model = SamModel(tiny_sam_config(**config_kwargs))
    return randomize_weights(model, seed=seed).eval()


class LocalHub:
    """A stand-in for the Hugging Face Hub at the `HfApi` boundary, backed by a local Hub cache.

    Repositories live in `$HF_HOME/hub/models--org--name/` with `refs/main` and `snapshots/<hash>/`, the
    layout `huggingface_hub` reads with `HF_HUB_OFFLINE=1`. `install()` routes `HfApi.create_repo` and
    `HfApi.create_commit` here, so `push_to_hub` "uploads" into the cache and loading by repo id then works
    offline.
    """

    def __init__(self, hf_home: str | os.PathLike):
        self.cache = Path(hf_home) / "hub"
        self.commits: list[dict] = []

    def snapshot_dir(self, repo_id: str) -> Path:
        repo_dir = self.cache / f"models--{repo_id.replace('/', '--')}"
        return repo_dir / "snapshots" / (repo_dir / "refs" / "main").read_text()

    def publish_folder(self, repo_id: str, folder: str | os.PathLike) -> Path:
        """Put every file of `folder` into a new commit of `repo_id`; returns the snapshot folder."""
        folder = Path(folder)
        files = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
        return self._commit(repo_id, files)

    def _commit(self, repo_id: str, files: dict[str, bytes]) -> Path:
        repo_dir = self.cache / f"models--{repo_id.replace('/', '--')}"
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
        snapshot = self._commit(repo_id, files)
        return SimpleNamespace(commit_url=f"local-hub://{repo_id}/commit/{snapshot.name}", oid=snapshot.name)

    def install(self, set_attribute=setattr) -> None:
        """Route `HfApi.create_repo` / `HfApi.create_commit` of every HfApi instance to this stand-in.

        In pytest pass `monkeypatch.setattr` so the patch is undone after the test.
        """
        set_attribute(HfApi, "create_repo", lambda api, repo_id, **kwargs: self.create_repo(repo_id, **kwargs))
        set_attribute(
            HfApi,
            "create_commit",
            lambda api, repo_id, operations, **kwargs: self.create_commit(repo_id, operations, **kwargs),
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
