"""Training checkpoints that are never half-written: `accelerator.save_state` into a hidden folder, then a rename.

Layout: `<output_dir>/checkpoints/step-000100/` holds Accelerate's state (adapter weights, optimiser,
scheduler, random states) and `trainer_state.json`. A folder becomes visible under its final name only once
complete, so `latest_checkpoint` never picks a checkpoint a crash cut short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

TRAINER_STATE = "trainer_state.json"
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


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike) -> dict:
    """Restore Accelerate's state from `checkpoint` and return its trainer state."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAINER_STATE
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint: {TRAINER_STATE} is missing")
    accelerator.load_state(str(checkpoint))
    return json.loads(state_file.read_text())
