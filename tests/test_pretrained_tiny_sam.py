"""The tiny SAM shipped in medsa_peft/assets is small and segments what a prompt points at."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from transformers import SamModel

from medsa_peft.data import PromptSpec, SamFrame
from medsa_peft.tiny_sam import default_model_path, randomize_weights, tiny_sam_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny_sam.py"


def load_script():
    """scripts/pretrain_tiny_sam.py as a module: the pre-training and its synthetic shapes."""
    spec = importlib.util.spec_from_file_location("pretrain_tiny_sam", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


pretraining = load_script()
synthetic_shapes, prompted_dice = pretraining.synthetic_shapes, pretraining.prompted_dice


@pytest.fixture(scope="module")
def shipped_sam():
    model, loading = SamModel.from_pretrained(default_model_path(), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    return model.eval()


@pytest.fixture(scope="module")
def fresh_shapes():
    """12 synthetic images (117 x 99, the size of an MNI152 slice) with a seed the pre-training never used."""
    return synthetic_shapes(12, 117, 99, np.random.default_rng(20240917))


def test_shipped_folder_is_a_small_128_pixel_sam():
    folder = default_model_path()
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size <= 8 * 2**20
    config = SamModel.config_class.from_pretrained(folder)
    assert SamFrame.from_config(config) == SamFrame(image_size=128, mask_size=64)
    assert config.vision_config.num_pos_feats * 2 == config.prompt_encoder_config.hidden_size


def test_box_prompts_segment_fresh_shapes(shipped_sam, fresh_shapes):
    images, masks = fresh_shapes
    pretrained = prompted_dice(shipped_sam, images, masks, PromptSpec("box"), np.random.default_rng(0))
    starting_point = randomize_weights(SamModel(shipped_sam.config)).eval()
    untrained = prompted_dice(starting_point, images, masks, PromptSpec("box"), np.random.default_rng(0))
    assert pretrained.mean() > 0.75
    assert pretrained.mean() > untrained.mean() + 0.4


def test_click_prompts_segment_fresh_shapes(shipped_sam, fresh_shapes):
    images, masks = fresh_shapes
    dice = prompted_dice(shipped_sam, images, masks, PromptSpec("points", num_positive=3), np.random.default_rng(0))
    assert dice.mean() > 0.6


def test_synthetic_shapes_are_seeded_and_hold_a_visible_target():
    images, masks = synthetic_shapes(4, 40, 56, np.random.default_rng(7))
    again, _ = synthetic_shapes(4, 40, 56, np.random.default_rng(7))
    assert images.shape == masks.shape == (4, 40, 56)
    assert images.dtype == np.float32 and masks.dtype == bool
    assert np.array_equal(images, again)
    assert images.min() >= 0 and images.max() <= 1
    assert (masks.sum(axis=(1, 2)) >= 16).all()
    with pytest.raises(ValueError, match="16 x 16"):
        synthetic_shapes(1, 8, 56, np.random.default_rng(0))


def test_pretraining_script_saves_a_loadable_model_with_its_card(tmp_path, monkeypatch):
    script = load_script()
    # 64 x 64 input: seconds, not minutes
    monkeypatch.setattr(script, "model_config", lambda patch_size: tiny_sam_config())
    output = tmp_path / "sam"
    output.mkdir()
    (output / "stale.txt").write_text("from an earlier run")
    script.main(
        ["--steps", "2", "--warmup_steps", "1", "--eval_images", "4", "--workers", "0", "--output", str(output)]
    )
    assert sorted(path.name for path in output.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sam"]  # no staging folder left behind
    card = (output / "README.md").read_text()
    assert "--steps 2" in card and "| box |" in card and "2 steps of batch 4" in card
    assert SamModel.from_pretrained(output).config.vision_config.image_size == 64
