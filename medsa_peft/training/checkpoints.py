"""Training checkpoints that are never half-written: `accelerator.save_state` into a hidden folder, then a rename.

Layout: `<output_dir>/checkpoints/step-000100/` holds Accelerate's state (the trained weights, optimiser,
scheduler, random states) and `trainer_state.json` (the step, the data seed and epoch, the step-0 metrics and the
adapter settings). A folder becomes visible under its final name only once complete, so `latest_checkpoint`
never picks a checkpoint a crash cut short, and hidden folders an interrupted save left are removed by the next
run or save. With `keep_trainable_weights` registered, the model file holds only what trains (a few MB for ViT-B, not
SAM's 375 MB); the frozen weights come from the base model on resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from peft import PeftConfig
from safetensors import safe_open

from ..compat import prepared_models

if TYPE_CHECKING:
    from .arguments import MedSATrainingArguments

__all__ = [
    "adapter_settings",
    "checkpoint_dirs",
    "keep_trainable_weights",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_unfinished_saves",
    "resolve_checkpoint",
    "resume_conflicts",
    "save_checkpoint",
    "trainer_state",
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


def resolve_checkpoint(resume: str, output_dir: str | os.PathLike) -> Path:
    """The checkpoint `resume` names: "latest" (the newest complete one under `output_dir`) or a folder.

    Raises FileNotFoundError when there is none or the folder is not a complete checkpoint."""
    if resume == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no complete checkpoint under {Path(output_dir) / 'checkpoints'}")
        return checkpoint
    checkpoint = Path(resume)
    if not (checkpoint / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint: {TRAINER_STATE} is missing")
    return checkpoint


def trainer_state(checkpoint: str | os.PathLike) -> dict:
    """The `trainer_state.json` of `checkpoint`; ValueError naming the file when it is not a JSON object."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable trainer state ({error})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path}: not a trainer state (no step)")
    return state


def adapter_settings(config: PeftConfig | None) -> dict:
    """The fields of an adapter configuration that decide its weights, as JSON values (PEFT's bookkeeping, such as
    the base model's name, left out; {} without an adapter): recorded in every checkpoint and compared before a
    resumed run starts."""
    if config is None:
        return {}
    bookkeeping = {field.name for field in dataclasses.fields(PeftConfig)}
    settings = {name: value for name, value in config.to_dict().items() if name not in bookkeeping}
    return json.loads(json.dumps(settings, default=sorted))  # sets (LoRA's target modules) as sorted lists


def resume_conflicts(state: dict, args: MedSATrainingArguments) -> list[str]:
    """What differs between the run a checkpoint's `state` records and the run `args` describe, in the weights that
    train: one phrase per option ("--bottleneck_ratio 0.5 in the checkpoint, 0.25 now"); [] when they match or the
    checkpoint predates these records (`load_checkpoint` then compares the saved weights' names)."""
    from .methods import method_config

    if "adapter" not in state:
        return []
    method = state.get("method", "medsa")
    if method != args.method:
        return [f"--method {method} in the checkpoint, {args.method} now"]
    saved, current = state["adapter"], adapter_settings(method_config(args))
    differing = [name for name in {**saved, **current} if saved.get(name) != current.get(name)]
    if method == "lora":  # LoraConfig's fields, set by the --lora_* options (r by --lora_rank)
        lora = {name: "lora_rank" if name == "r" else name if name.startswith("lora_") else f"lora_{name}"
                for name in differing}
        return [f"--{lora[name]} {saved.get(name)} in the checkpoint, {current.get(name)} now" for name in differing]
    options = {field.name for field in dataclasses.fields(args)}
    phrases = []
    if any(name not in options and name != "depth_adapter" for name in differing):  # fields MedSAConfig.official sets
        was, now = ("off", "on") if args.official else ("on", "off")
        phrases.append(f"--official {was} in the checkpoint, {now} now")
        differing = [name for name in differing if name in ("bottleneck_ratio", "depth_adapter")]
    for name in differing:
        if name == "depth_adapter":  # on when --volume_depth is above 1
            was, now = ("on" if value else "off" for value in (saved[name], current[name]))
            phrases.append(f"--volume_depth: the depth adapter is {was} in the checkpoint, {now} now")
        else:
            phrases.append(f"--{name} {saved.get(name)} in the checkpoint, {current.get(name)} now")
    return phrases


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, state: dict, keep: int = 2) -> Path:
    """Save Accelerate's state plus `state` (must hold "step") as `checkpoints/step-NNNNNN`; keep the last `keep`.

    Every process must call this (Accelerate saves per-process random states). The state is written into the
    hidden `.step-NNNNNN.partial` and renamed; checkpoints are deleted (a former one of the same step, those beyond
    `keep`) by a rename to a hidden name first. A crash at any point thus leaves complete checkpoints under their
    names and at most hidden folders, which the next run or save removes (`remove_unfinished_saves`).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{state['step']:06d}"
    partial = root / f".{final.name}.partial"
    if accelerator.is_main_process:
        remove_unfinished_saves(output_dir)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            _remove(final)
        os.replace(partial, final)
        for old in checkpoint_dirs(output_dir)[:-keep]:
            _remove(old)
    accelerator.wait_for_everyone()
    return final


def remove_unfinished_saves(output_dir: str | os.PathLike) -> None:
    """Delete the hidden folders that an interrupted save or deletion left under `output_dir/checkpoints`."""
    for unfinished in (Path(output_dir) / "checkpoints").glob(".step-*"):
        shutil.rmtree(unfinished, ignore_errors=True)


def _remove(checkpoint: Path) -> None:
    """Delete a checkpoint: renamed to a hidden name first, so that a crash while deleting leaves no half of it."""
    hidden = checkpoint.with_name(f".{checkpoint.name}.removed")
    os.replace(checkpoint, hidden)
    shutil.rmtree(hidden)


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
    state = trainer_state(checkpoint)
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
    return state
