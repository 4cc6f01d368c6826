"""The PEFT surface of Med-SA: save / load (folder, fresh process, offline Hub), several adapters, unload."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import SamModel

import medsa_peft  # noqa: F401
from medsa_peft import MedSAConfig
from helpers import REPO_ROOT, LocalHub, randomize_adapters, run_python

SIZE = 64


def inputs(n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(n, 3, SIZE, SIZE, generator=generator),
        "input_boxes": torch.tensor([[[6.0, 8.0, 40.0, 44.0]]]).repeat(n, 1, 1),
        "multimask_output": False,
    }


def adapter_model(sam, config, seed=1):
    return randomize_adapters(get_peft_model(sam, config), seed=seed)


def assert_same_output(got, expected):
    """Equal up to float32 rounding: CPU GEMM kernels round differently with the memory alignment of the
    weights, which differs between two loads of the same files (measured: ~1e-8 on logits of order 1e-1)."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_save_then_load_in_a_fresh_process_gives_identical_outputs(sam, tmp_path):
    sam.save_pretrained(tmp_path / "sam")
    # Both processes load SAM the same way (from_pretrained picks the attention implementation).
    model = adapter_model(SamModel.from_pretrained(tmp_path / "sam"), MedSAConfig(depth_adapter=True))
    model.save_pretrained(tmp_path / "adapter")
    batch = inputs()
    with torch.no_grad():
        expected = model(**batch, depth=2)
    torch.save({"batch": batch, "masks": expected.pred_masks, "iou": expected.iou_scores}, tmp_path / "expected.pt")

    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == "MEDSA"

    run_python(
        f"""
        import torch
        import medsa_peft
        from peft import PeftModel
        from transformers import SamModel
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        sam = SamModel.from_pretrained({str(tmp_path / "sam")!r})
        model = PeftModel.from_pretrained(sam, {str(tmp_path / "adapter")!r})
        with torch.no_grad():
            out = model(**expected["batch"], depth=2)
        from test_peft_surface import assert_same_output
        assert_same_output(out.pred_masks, expected["masks"])
        assert_same_output(out.iou_scores, expected["iou"])
        """,
        env={"PYTHONPATH": str(Path(__file__).parent)},
    )


def test_config_round_trip_and_trainability_on_load(sam, tmp_path):
    config = MedSAConfig(depth_adapter=True, hyper_dim=8, activation="relu", bottleneck_ratio=0.125)
    adapter_model(sam, config).save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MedSAConfig)
    for field in ("depth_adapter", "hyper_dim", "activation", "bottleneck_ratio", "target_modules"):
        assert getattr(loaded, field) == getattr(config, field)

    frozen = PeftModel.from_pretrained(SamModel(sam.config), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = PeftModel.from_pretrained(SamModel(sam.config), tmp_path, is_trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names and all(".medsa_" in n for n in names)


def test_two_adapters_switch_and_match_their_own_models(sam, tmp_path):
    base_state = {k: v.clone() for k, v in sam.state_dict().items()}
    for name, seed in (("liver", 1), ("spleen", 2)):
        fresh = SamModel(sam.config)
        fresh.load_state_dict(base_state)
        adapter_model(fresh, MedSAConfig(), seed=seed).save_pretrained(tmp_path / name)

    def single(name):
        fresh = SamModel(sam.config)
        fresh.load_state_dict(base_state)
        with torch.no_grad():
            return PeftModel.from_pretrained(fresh, tmp_path / name)(**inputs()).pred_masks

    model = PeftModel.from_pretrained(sam, tmp_path / "liver", adapter_name="liver")
    model.load_adapter(tmp_path / "spleen", adapter_name="spleen")
    with torch.no_grad():
        liver = model(**inputs()).pred_masks
        model.set_adapter("spleen")
        spleen = model(**inputs()).pred_masks
    assert_same_output(liver, single("liver"))
    assert_same_output(spleen, single("spleen"))
    assert not torch.allclose(liver, spleen)

    model.base_model.set_adapter(["liver", "spleen"])
    with pytest.raises(ValueError, match="one at a time"):
        model(**inputs())


def test_disable_adapter_unload_and_merge(sam):
    with torch.no_grad():
        expected = sam(**inputs()).pred_masks
    model = adapter_model(sam, MedSAConfig(depth_adapter=True))
    with torch.no_grad():
        assert not torch.allclose(model(**inputs()).pred_masks, expected)
        with model.disable_adapter():
            assert torch.equal(model(**inputs()).pred_masks, expected)
        assert not torch.allclose(model(**inputs()).pred_masks, expected)

    with pytest.raises(ValueError, match="non-linear"):
        model.merge_and_unload()

    plain = model.unload()
    assert type(plain) is SamModel
    assert not any("medsa" in name for name, _ in plain.named_parameters())
    with torch.no_grad():
        assert torch.equal(plain(**inputs()).pred_masks, expected)


def publish_tiny_sam(hub: LocalHub, sam, repo_id: str, tmp_path) -> None:
    sam.save_pretrained(tmp_path / "sam-upload")
    hub.publish_folder(repo_id, tmp_path / "sam-upload")


def test_load_by_repo_id_from_an_offline_hub_cache(sam, tmp_path):
    hub = LocalHub(tmp_path / "hf_home")
    publish_tiny_sam(hub, sam, "facebook/sam-vit-base", tmp_path)
    model = adapter_model(SamModel.from_pretrained(tmp_path / "sam-upload"), MedSAConfig())
    model.save_pretrained(tmp_path / "adapter")
    hub.publish_folder("user/medsa-tiny", tmp_path / "adapter")
    with torch.no_grad():
        expected = model(**inputs()).pred_masks
    torch.save({"batch": inputs(), "masks": expected}, tmp_path / "expected.pt")

    run_python(
        f"""
        import torch
        import medsa_peft
        from peft import PeftConfig, PeftModel
        from transformers import SamModel
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert PeftConfig.from_pretrained("user/medsa-tiny").peft_type == "MEDSA"
        model = PeftModel.from_pretrained(SamModel.from_pretrained("facebook/sam-vit-base"), "user/medsa-tiny")
        with torch.no_grad():
            from test_peft_surface import assert_same_output
            assert_same_output(model(**expected["batch"]).pred_masks, expected["masks"])
        """,
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)},
    )


def test_loading_without_importing_medsa_peft_fails_inside_peft(sam, tmp_path):
    """PEFT has no hook that could run before `import medsa_peft`; this pins down what users see."""
    adapter_model(sam, MedSAConfig()).save_pretrained(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", f"from peft import PeftConfig; PeftConfig.from_pretrained({str(tmp_path)!r})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "KeyError: 'MEDSA'" in result.stderr


def test_readme_python_example_runs_as_written(sam, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    example = re.search(r"## Use it from Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert 'SamModel.from_pretrained("facebook/sam-vit-base")' in example and "push_to_hub" in example
    (tmp_path / "example.py").write_text(example)

    hub = LocalHub(tmp_path / "hf_home")
    publish_tiny_sam(hub, sam, "facebook/sam-vit-base", tmp_path)
    result = run_python(
        f"""
        from helpers import LocalHub
        LocalHub({str(tmp_path / "hf_home")!r}).install()  # push_to_hub "uploads" into the local Hub cache
        exec(compile(open("example.py").read(), "README example", "exec"))
        assert isinstance(model, __import__("peft").PeftModel)
        """,
        env={
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_OFFLINE": "1",
            "CWD": str(tmp_path),
            "PYTHONPATH": str(REPO_ROOT / "tests"),  # tests/helpers.py
        },
    )
    assert "torch.Size([8, 1, 1, 32, 32])" in result.stdout
    assert "trainable params" in result.stdout
    assert (tmp_path / "medsa-btcv" / "adapter_model.safetensors").exists()
    uploaded = hub.snapshot_dir("user/medsa-btcv")
    assert (uploaded / "adapter_config.json").exists() and (uploaded / "adapter_model.safetensors").exists()
