"""The private surface of torch, peft, transformers, accelerate and datasets that medsa_peft relies on is all in
medsa_peft/compat.py, and each symbol there still has the shape we use."""

import re
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from accelerate import Accelerator
from PIL import Image
from transformers import SamModel

from medsa_peft import compat
from medsa_peft.tiny_sam import tiny_sam_config

REPO_ROOT = Path(__file__).resolve().parents[1]
# Reaching into a library's internals, written any other way than through medsa_peft.compat.
PRIVATE_ACCESS = re.compile(
    r"peft\.mapping|peft\.tuners\.tuners_utils|datasets\.table|transformers\.modeling_layers"
    r"|accelerator\._|\._forward_hooks|\._forward_pre_hooks"
)


def test_no_module_but_compat_reaches_into_library_internals():
    sources = [*(REPO_ROOT / "medsa_peft").rglob("*.py"), *(REPO_ROOT / "datasets_scripts").glob("*.py")]
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in sources
        if path.name != "compat.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_ACCESS.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_peft_hooks_medsa_overrides_still_exist():
    for name in compat.BASE_TUNER_HOOKS:
        assert callable(getattr(compat.BaseTuner, name)), name
    for name in compat.BASE_TUNER_LAYER_HOOKS:
        assert callable(getattr(compat.BaseTunerLayer, name)), name
    assert isinstance(compat.PEFT_TYPE_TO_CONFIG_MAPPING, dict) and "LORA" in compat.PEFT_TYPE_TO_TUNER_MAPPING
    assert compat.PEFT_TYPE_TO_PREFIX_MAPPING["LORA"] == "lora_"


def test_sam_blocks_still_have_the_parts_the_medsa_layers_rerun():
    sam = SamModel(tiny_sam_config())
    vision_layer = sam.vision_encoder.layers[0]
    two_way_block = sam.mask_decoder.transformer.layers[0]
    assert isinstance(vision_layer, compat.GradientCheckpointingLayer)
    for owner, parts in (
        (vision_layer, compat.SAM_VISION_LAYER_PARTS),
        (vision_layer.attn, compat.SAM_VISION_ATTENTION_PARTS),
        (two_way_block, compat.SAM_TWO_WAY_BLOCK_PARTS),
    ):
        missing = [part for part in parts if not hasattr(owner, part)]
        assert not missing, f"{type(owner).__name__} lacks {missing}"


def test_forward_hooks_lists_the_hooks_of_a_module_with_their_kind():
    module = torch.nn.Linear(2, 2)

    def plain(module, args, output):
        return None

    def with_kwargs(module, args, kwargs, output):
        return None

    module.register_forward_hook(plain)
    module.register_forward_hook(with_kwargs, with_kwargs=True)
    assert list(compat.forward_hooks(module)) == [(plain, False), (with_kwargs, True)]


def test_prepared_models_are_those_the_accelerator_wrapped():
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    assert compat.prepared_models(accelerator) == [model]


def test_embed_table_storage_turns_image_files_into_bytes(tmp_path):
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "a.png")
    features = datasets.Features({"image": datasets.Image()})
    table = pa.table({"image": [{"bytes": None, "path": str(tmp_path / "a.png")}]})
    table = table.cast(features.arrow_schema)
    embedded = compat.embed_table_storage(table).to_pylist()[0]["image"]
    assert embedded["bytes"] == (tmp_path / "a.png").read_bytes()


def test_hiera_blocks_still_have_the_parts_and_helpers_the_medsa_hiera_layer_reruns():
    from helpers import tiny_sam2_config
    from transformers import Sam2Model

    blocks = Sam2Model(tiny_sam2_config()).vision_encoder.backbone.blocks
    assert all(isinstance(block, compat.GradientCheckpointingLayer) for block in blocks)
    for block in blocks:
        for owner, parts in ((block, compat.HIERA_BLOCK_PARTS), (block.attn, compat.HIERA_ATTENTION_PARTS)):
            missing = [part for part in parts if not hasattr(owner, part)]
            assert not missing, f"{type(owner).__name__} lacks {missing}"
    assert all(hasattr(block, "proj") == (block.dim != block.dim_out) for block in blocks)
    tokens = torch.arange(2 * 6 * 6 * 3, dtype=torch.float32).reshape(2, 6, 6, 3)
    windows, padded = compat.hiera_window_partition(tokens, 4)
    assert windows.shape == (8, 4, 4, 3) and padded == (8, 8)
    assert torch.equal(compat.hiera_window_unpartition(windows, 4, padded, (6, 6)), tokens)
    assert torch.equal(compat.hiera_pool(tokens, (2, 2)), tokens.unflatten(1, (3, 2)).unflatten(3, (3, 2)).amax((2, 4)))


def test_checkpoint_layers_switches_every_checkpointing_layer_on():
    from helpers import tiny_sam2_config
    from transformers import Sam2Model

    model = Sam2Model(tiny_sam2_config())
    compat.checkpoint_layers(model, torch.utils.checkpoint.checkpoint)
    layers = [module for module in model.modules() if isinstance(module, compat.GradientCheckpointingLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)


def test_tensor_version_counts_in_place_writes_of_weights():
    weight = torch.nn.Linear(2, 2).weight
    before = compat.tensor_version(weight)
    with torch.no_grad():
        weight.mul_(2)
    assert compat.tensor_version(weight) == before + 1
    module = torch.nn.Linear(2, 2)
    before = compat.tensor_version(module.weight)
    module.load_state_dict({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)})
    assert compat.tensor_version(module.weight) > before
