"""Where the operator calls of one training step come from, part by part of SamModel: the calls that are left
outside `compile_sam_layers`' graphs each launch at least one kernel on a GPU, so they bound a step that the
device finishes faster than the host issues it.

    python benchmarks/op_counts.py              # ViT-B at 1024 px, batch 4, Med-SA official config and LoRA

The model lives on the meta device: every operator is dispatched (forward, backward), none computes, so the counts
are those of the real sizes in a second. The optimizer step is left out (fused AdamW: one kernel per dtype).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.module_tracker import ModuleTracker
from transformers import SamConfig, SamModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import adapt

# Parts of SamModel by module path, most specific first; a call belongs to the first part that one of the modules
# running it (forward or backward) names.
PARTS = {
    "image-encoder layers": "vision_encoder.layers.",
    "decoder two-way blocks": "transformer.layers.",
    "rest of the mask decoder": "mask_decoder",
    "prompt encoder": "prompt_encoder",
    "patch embedding, neck": "vision_encoder",
}
OUTSIDE = "loss, autograd, other"
# what compile_sam_layers puts in graphs: each encoder layer, and the prompt encoder and the decoder whole
# (`whole_decoder=False`: the decoder's two-way blocks only)
COMPILED = {
    "whole decoder": {"image-encoder layers", "decoder two-way blocks", "rest of the mask decoder", "prompt encoder"},
    "blocks": {"image-encoder layers", "decoder two-way blocks"},
}


class OperatorCounter(TorchDispatchMode):
    """Counts the aten operator calls made while it is active, by the part of the model that makes them."""

    def __init__(self, tracker: ModuleTracker):
        super().__init__()
        self.tracker = tracker
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        running = self.tracker.parents
        part = next((name for name, path in PARTS.items() if any(path in module for module in running)), OUTSIDE)
        self.counts[part] += 1
        return func(*args, **(kwargs or {}))


def build(method: str, batch: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    with torch.device("meta"):
        sam = SamModel(SamConfig())
    model = adapt(sam, method).train()
    size = sam.config.vision_config.image_size
    inputs = {
        "pixel_values": torch.empty(batch, 3, size, size, device="meta"),
        "input_boxes": torch.empty(batch, 1, 4, device="meta"),
        "target": torch.empty(batch, 1, 1, size // 4, size // 4, device="meta"),
    }
    return model, inputs


def count(method: str, batch: int) -> collections.Counter[str]:
    model, inputs = build(method, batch)
    tracker = ModuleTracker()
    with tracker, OperatorCounter(tracker) as counter:
        masks = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                      multimask_output=False).pred_masks
        F.binary_cross_entropy_with_logits(masks.float(), inputs["target"]).backward()
    return counter.counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    for method in ("medsa-fused", "lora"):
        counts = count(method, args.batch)
        total = sum(counts.values())
        print(f"{method}: {total} operator calls in one training step (forward + backward), batch {args.batch}")
        for part in [*PARTS, OUTSIDE]:
            print(f"  {part:28} {counts[part]:6}")
        for name, parts in COMPILED.items():
            eager = sum(n for part, n in counts.items() if part not in parts)
            print(f"  left eager by compile_sam_layers ({name}): {eager}")


if __name__ == "__main__":
    main()
