"""Training checkpoints that are never half-written: `accelerator.save_state` into a hidden folder, then a rename.

Layout: `<output_dir>/checkpoints/step-000100/` holds Accelerate's state (the trained weights, optimiser,
scheduler, random states) and `trainer_state.json`. A folder becomes visible under its final name only once
complete, so `latest_checkpoint` never picks a checkpoint a crash cut short. With `keep_trainable_weights`
registered, the model file holds only what trains (a few MB for ViT-B, not SAM's 375 MB); the frozen
weights come from the base model on resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open

from ..compat import prepared_models

__all__ = [
    "checkpoint_dirs",
    "keep_trainable_weights",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

TRAINER_STATE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if _NAME.match(path.name) and (path / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, state: dict, keep: int = 2) -> Path:
    """Save Accelerate's state plus `state` (must hold "step") as `checkpoints/step-NNNNNN`; keep the last `keep`.

    Every process must call this (Accelerate saves per-process random states).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    partial = root / f".{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def keep_trainable_weights(models: list[torch.nn.Module], weights: list[dict], output_dir: str) -> None:
    """`Accelerator.register_save_state_pre_hook` hook: drop the frozen weights from the saved state dicts."""
    for model, state in zip(models, weights):
        trainable = _trainable_names(model)
        for key in [key for key in state if key not in trainable]:
            del state[key]


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike) -> dict:
    """Restore Accelerate's state from `checkpoint` and return its trainer state.

    The checkpoint must hold exactly the trainable weights of the prepared model (see
    `keep_trainable_weights`); anything else (another adapter configuration, say) is a clear error.
    """
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint: {TRAINER_STATE} is missing")
    if accelerator.distributed_type == DistributedType.FSDP:
        accelerator.load_state(str(checkpoint))
    else:
        with safe_open(checkpoint / MODEL_FILE, framework="pt") as saved:
            saved_names = set(saved.keys())
        expected = _trainable_names(prepared_models(accelerator)[0])
        if saved_names != expected:
            raise ValueError(
                f"{checkpoint / MODEL_FILE} does not hold the weights this run trains "
                f"({len(saved_names - expected)} unexpected, {len(expected - saved_names)} missing, e.g. "
                f"{sorted(saved_names ^ expected)[:3]}): was it written with other adapter options?"
            )
        accelerator.load_state(str(checkpoint), strict=False)  # frozen weights stay those of the base model
    return json.loads(state_file.read_text())
