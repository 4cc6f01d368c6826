"""PEFT's common tuner contract, run on Med-SA.

PEFT checks every one of its tuners with one battery of behaviours (`PeftCommonTester`, peft's
tests/testing_common.py). These tests run the behaviours of that battery that apply to a method that cannot be
merged, over the Med-SA variants, parametrised the way PEFT parametrises its tuners; merging must fail with a clear
error. Behaviours that test_tuner.py and test_peft_surface.py already pin down (loading in a fresh process or from the
Hub, switching between two loaded adapters) are not repeated.

Every behaviour runs on each model of the SAM family Med-SA attaches to, tiny and random at 64 px: SAM, SAM-HQ and
SAM 2's image predictor (adapters in the image encoder and the decoder), and the SAM 3 tracker and EdgeTAM image
models, whose encoders are not SAM's or Hiera (adapters in the decoder only, so only the configurations that adapt
the decoder apply there).
"""

import json
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import yaml
from peft import (
    PeftMixedModel,
    PeftModel,
    get_base_model_state_dict,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper, ModulesToSaveWrapper
from safetensors.torch import load_file
from transformers import AutoModel

import medsa_peft  # noqa: F401  (registers MEDSA)
from medsa_peft import MedSAConfig
from medsa_peft.tuner.fast_paths import enable_activation_checkpointing
from medsa_peft.tuner.layer import MedSAHieraLayer, MedSALayer
from medsa_peft.tuner.model import VOLUME_HOOKS
from helpers import (
    perturb_adapter,
    repvit_stand_in,
    tiny_edgetam_model,
    tiny_sam2_model,
    tiny_sam3_tracker_model,
    tiny_sam_hq_model,
    tiny_sam_model,
)

SIZE = 64


@dataclass(frozen=True)
class Family:
    """A model of the SAM family as the battery builds it: `build()` gives the same random weights at every call."""

    build: Callable[[], torch.nn.Module]
    encoder_layers: tuple[str, int] | None  # (layer class, count) Med-SA wraps in the image encoder; None: none


FAMILIES = {
    "sam": Family(tiny_sam_model, ("MedSAVisionLayer", 2)),
    "sam-hq": Family(tiny_sam_hq_model, ("MedSAVisionLayer", 2)),
    "sam2": Family(tiny_sam2_model, ("MedSAHieraLayer", 6)),
    "sam3-tracker": Family(tiny_sam3_tracker_model, None),
    "edgetam": Family(tiny_edgetam_model, None),
}

# (id, config constructor, its kwargs), as PEFT lists (name, config class, config kwargs) for its own tuners.
CONFIGS = [
    ("2d", MedSAConfig, {}),
    ("3d", MedSAConfig, {"depth_adapter": True}),
    ("official", MedSAConfig.official, {}),
    ("decoder-only", MedSAConfig, {"space_adapter": False, "mlp_adapter": False}),
]
# Every configuration on every family whose encoder Med-SA adapts; on the others, those that adapt the decoder
# (the depth adapter and the official preset adapt the image encoder only).
CASES = [
    (family, config_id, make_config, config_kwargs)
    for family, spec in FAMILIES.items()
    for config_id, make_config, config_kwargs in CONFIGS
    if spec.encoder_layers or config_id in ("2d", "decoder-only")
]
each_config = pytest.mark.parametrize(
    "family, make_config, config_kwargs",
    [(family, make_config, kwargs) for family, _, make_config, kwargs in CASES],
    ids=[f"{family}-{config_id}" for family, config_id, _, _ in CASES],
)


def sam_inputs(config: MedSAConfig) -> dict:
    """Four images with a box each; for a depth adapter, two volumes of two slices."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(4, 3, SIZE, SIZE, generator=generator),
        "input_boxes": torch.tensor([[[6.0, 8.0, 40.0, 44.0]]]).repeat(4, 1, 1),
        "multimask_output": False,
    }
    if config.depth_adapter:
        batch["depth"] = 2
    return batch


def without_depth(batch: dict) -> dict:
    """The same call for plain SAM."""
    return {key: value for key, value in batch.items() if key != "depth"}


@torch.no_grad()
def predict(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).pred_masks


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding (two loads of the same weights may sit at differently aligned addresses)."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def assert_adapter_gone(model: torch.nn.Module, adapter_name: str) -> None:
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            # the attributes the layer declares, as PEFT checks, and any other dict it keeps by adapter name
            declared = [getattr(module, name) for name in module.adapter_layer_names + module.other_param_names]
            undeclared = [value for value in vars(module).values() if isinstance(value, dict)]
            assert not any(adapter_name in value for value in declared + undeclared)
        if isinstance(module, AuxiliaryTrainingWrapper):
            assert adapter_name not in module._adapters
        if isinstance(module, ModulesToSaveWrapper):
            assert adapter_name not in module.modules_to_save
    assert not any(f".{adapter_name}." in name for name, _ in model.named_parameters())


@pytest.fixture
def sam(family: str) -> torch.nn.Module:
    """A fresh tiny model of the family under test (called `sam` whatever the family, as in the other modules)."""
    return FAMILIES[family].build()


@pytest.fixture(scope="module")
def saved_models() -> dict[str, str]:
    """family -> the folder its tiny model was saved in, filled by `sam_dir`."""
    return {}


@pytest.fixture
def sam_dir(family: str, saved_models: dict[str, str], tmp_path_factory) -> str:
    """The family's tiny model saved once and loaded by path, as PEFT's tests load their models by id."""
    if family not in saved_models:
        path = tmp_path_factory.mktemp(f"saved-{family}")
        FAMILIES[family].build().save_pretrained(path)
        saved_models[family] = str(path)
    return saved_models[family]


def load_sam(sam_dir: str, **kwargs) -> torch.nn.Module:
    """The saved model as its own class (config.json names it), in eval mode."""
    with repvit_stand_in():  # EdgeTAM's backbone, which transformers would build through timm
        return AutoModel.from_pretrained(sam_dir, **kwargs).eval()


def mask_loss(outputs) -> torch.Tensor:
    """Every output a SAM-family decoder trains: masks, IoU scores, SAM 2's object scores."""
    loss = outputs.pred_masks.square().sum() + outputs.iou_scores.square().sum()
    object_scores = getattr(outputs, "object_score_logits", None)
    return loss if object_scores is None else loss + object_scores.square().sum()


@each_config
def test_adapter_name_names_every_trainable_parameter(sam, make_config, config_kwargs):
    model = get_peft_model(sam, make_config(**config_kwargs), adapter_name="test-adapter")
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all(".test-adapter." in name for name in trainable)
    assert all(hasattr(model, method) for method in ("save_pretrained", "from_pretrained", "push_to_hub"))
    assert model.get_base_model() is sam


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pickle"])
@each_config
def test_save_pretrained_then_from_pretrained(sam_dir, tmp_path, make_config, config_kwargs, safe_serialization):
    config = make_config(base_model_name_or_path=sam_dir, **config_kwargs)
    model = perturb_adapter(get_peft_model(load_sam(sam_dir), config))
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)

    weights = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["README.md", "adapter_config.json", weights])
    card = yaml.safe_load(re.search(r"---\n(.*?)\n---", (tmp_path / "README.md").read_text(), re.S).group(1))
    assert card["library_name"] == "peft" and card["base_model"] == sam_dir
    saved_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == sam_dir and saved_config["peft_type"] == "MEDSA"
    whole_modules = [key for key in get_peft_model_state_dict(model) if ".medsa_" not in key]
    assert bool(whole_modules) == bool(config.modules_to_save)  # the trained mask decoder goes with the adapter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path)
    assert not any("missing adapter keys" in str(warning.message) for warning in caught)
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    batch = sam_inputs(config)
    assert_same(predict(loaded, batch), predict(model, batch))


@each_config
def test_save_pretrained_selected_adapters(sam_dir, tmp_path, make_config, config_kwargs):
    model = get_peft_model(load_sam(sam_dir), make_config(**config_kwargs))
    model.add_adapter("new_adapter", make_config(**config_kwargs))
    perturb_adapter(model, "default", seed=1)
    perturb_adapter(model, "new_adapter", seed=2)
    model.save_pretrained(tmp_path / "both")
    for folder in (tmp_path / "both", tmp_path / "both" / "new_adapter"):
        assert (folder / "adapter_model.safetensors").exists() and (folder / "adapter_config.json").exists()
        assert not (folder / "model.safetensors").exists() and not (folder / "config.json").exists()

    loaded = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path / "both")
    loaded.load_adapter(tmp_path / "both" / "new_adapter", "new_adapter")
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    batch = sam_inputs(model.peft_config["default"])
    model.set_adapter("new_adapter")
    loaded.set_adapter("new_adapter")
    assert_same(predict(loaded, batch), predict(model, batch))

    model.save_pretrained(tmp_path / "default-only", selected_adapters=["default"])
    assert not (tmp_path / "default-only" / "new_adapter").exists()
    only = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path / "default-only")
    assert list(only.peft_config) == ["default"]


@each_config
def test_selected_adapter_is_saved_alone_among_names_that_contain_it(sam, tmp_path, make_config, config_kwargs):
    model = get_peft_model(sam, make_config(**config_kwargs))
    expected_keys = get_peft_model_state_dict(model).keys()
    for name in ("default2", "other_default", "foodefault_bar", "efaul"):
        model.add_adapter(name, make_config(**config_kwargs))
    model.save_pretrained(tmp_path, selected_adapters=["default"])
    assert load_file(tmp_path / "adapter_model.safetensors").keys() == expected_keys


@each_config
def test_from_pretrained_uses_the_config_it_is_given(sam_dir, tmp_path, make_config, config_kwargs):
    get_peft_model(load_sam(sam_dir), make_config(**config_kwargs)).save_pretrained(tmp_path)
    config = make_config(base_model_name_or_path=sam_dir, **config_kwargs)
    loaded = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path, is_trainable=False, config=config)
    assert loaded.peft_config["default"] is config and config.inference_mode
    assert not any(param.requires_grad for param in loaded.parameters())


@each_config
def test_load_adapter_under_more_names(sam_dir, tmp_path, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    model = perturb_adapter(get_peft_model(load_sam(sam_dir), config))
    model.save_pretrained(tmp_path)
    batch = sam_inputs(config)
    expected = predict(model, batch)
    loaded = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path)
    for name in ("other", "yet-another"):
        result = loaded.load_adapter(tmp_path, adapter_name=name)
        assert result.missing_keys == [] and result.unexpected_keys == []
        loaded.set_adapter(name)
        assert_same(predict(loaded, batch), expected)


@each_config
def test_low_cpu_mem_usage_loading_and_injection(sam_dir, tmp_path, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    model = perturb_adapter(get_peft_model(load_sam(sam_dir), config))
    model.save_pretrained(tmp_path)
    batch = sam_inputs(config)
    expected = predict(model, batch)

    loaded = PeftModel.from_pretrained(load_sam(sam_dir), tmp_path, low_cpu_mem_usage=True)
    assert {param.device.type for param in loaded.parameters()} == {"cpu"}
    assert_same(predict(loaded, batch), expected)
    loaded.load_adapter(tmp_path, adapter_name="other", low_cpu_mem_usage=True)
    assert {param.device.type for param in loaded.parameters()} == {"cpu"}
    loaded.set_adapter("other")
    assert_same(predict(loaded, batch), expected)

    sam = load_sam(sam_dir)
    inject_adapter_in_model(make_config(**config_kwargs), sam, low_cpu_mem_usage=True)
    on_meta = {name for name, param in sam.named_parameters() if param.device.type == "meta"}
    assert on_meta and all(".medsa_" in name for name in on_meta)


@each_config
def test_merging_is_refused_clearly_and_changes_nothing(sam, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    model = perturb_adapter(get_peft_model(sam, config))
    batch = sam_inputs(config)
    expected = predict(model, batch)
    layer = next(module for module in model.modules() if isinstance(module, MedSALayer))
    safe_merge_and_unload = partial(model.merge_and_unload, safe_merge=True)
    for attempt in (model.merge_and_unload, model.merge_adapter, safe_merge_and_unload, layer.merge):
        with pytest.raises(ValueError, match="cannot be merged"):
            attempt()
    assert not any(module.merged for module in model.modules() if isinstance(module, MedSALayer))
    assert torch.equal(predict(model, batch), expected)
    assert not model.supports_lora_conversion()


@each_config
def test_backward_reaches_the_adapters_and_nothing_else(sam, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    model = get_peft_model(sam, config)
    model.train()
    mask_loss(model(**sam_inputs(config))).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert ".medsa_" in name or ".modules_to_save." in name, name
            assert param.grad is not None, name
        else:
            assert param.grad is None, name


@each_config
def test_reentrant_gradient_checkpointing_gives_the_same_gradients(sam, make_config, config_kwargs):
    """Non-reentrant checkpointing is checked against plain gradients in test_tuner.py."""
    config = make_config(**config_kwargs)
    model = perturb_adapter(get_peft_model(sam, config)).train()
    batch = sam_inputs(config)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        mask_loss(model(**batch)).backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}

    plain = gradients()
    if sam.supports_gradient_checkpointing:  # transformers' switch, as PEFT's tests use it
        model.prepare_model_for_gradient_checkpointing(model)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    else:  # SAM 2 and its kin do not declare the support their blocks have: the project's switch
        enable_activation_checkpointing(model, use_reentrant=True)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert any(grad.abs().sum() > 0 for grad in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("activate", [True, False], ids=["active", "inactive"])
@each_config
def test_delete_adapter(sam, make_config, config_kwargs, activate):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    plain = predict(sam, without_depth(batch))
    model = perturb_adapter(get_peft_model(sam, config))
    expected = predict(model, batch)
    model.add_adapter("delete_me", make_config(**config_kwargs))
    perturb_adapter(model, "delete_me", seed=2)
    if activate:
        model.set_adapter("delete_me")
    model.delete_adapter("delete_me")
    assert "delete_me" not in model.peft_config and model.active_adapters == ["default"]
    assert_adapter_gone(model, "delete_me")
    assert torch.equal(predict(model, batch), expected)

    model.delete_adapter("default")
    assert model.peft_config == {} and model.active_adapters == []
    assert_adapter_gone(model, "default")
    assert torch.equal(predict(model.base_model, batch), plain)


@each_config
def test_deleting_an_unknown_adapter_is_a_clear_error(sam, make_config, config_kwargs):
    model = get_peft_model(sam, make_config(**config_kwargs))
    with pytest.raises(ValueError, match="Adapter unknown-adapter does not exist"):
        model.delete_adapter("unknown-adapter")


@each_config
def test_unload_gives_back_sam_without_hooks(sam, family, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    plain = predict(sam, without_depth(batch))
    expected_state = {key: value.clone() for key, value in sam.state_dict().items()}
    hooks = (dict(sam._forward_pre_hooks), dict(sam._forward_hooks))
    model = perturb_adapter(get_peft_model(sam, config))
    assert not torch.allclose(predict(model, batch), plain)
    for name in config.modules_to_save or []:  # PEFT's unload keeps the trained copy of a module to save
        trained = model.base_model.model.get_submodule(name).modules_to_save["default"]
        expected_state.update({f"{name}.{key}": value.clone() for key, value in trained.state_dict().items()})

    unloaded = model.unload()
    assert type(unloaded) is type(sam)
    assert not any(isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)) for module in unloaded.modules())
    assert not hasattr(unloaded, "peft_config") and not hasattr(unloaded, VOLUME_HOOKS)
    assert (dict(unloaded._forward_pre_hooks), dict(unloaded._forward_hooks)) == hooks
    state = unloaded.state_dict()
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[key], expected_state[key]) for key in state)
    expected_sam = FAMILIES[family].build()
    expected_sam.load_state_dict(expected_state)
    assert torch.equal(predict(unloaded, without_depth(batch)), predict(expected_sam, without_depth(batch)))


@each_config
def test_disable_adapter_gives_sam_for_images_and_volumes(sam, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    images = without_depth(batch)
    volumes = {**images, "pixel_values": images["pixel_values"].view(2, 2, 3, SIZE, SIZE)}
    plain = predict(sam, images)
    model = perturb_adapter(get_peft_model(sam, config))
    enabled = predict(model, batch)
    assert not torch.allclose(enabled, plain)
    with model.disable_adapter():
        assert torch.equal(predict(model, batch), plain)
        assert torch.equal(predict(model, volumes), plain)
        assert torch.equal(predict(model, {**volumes, "depth": 2}), plain)
    assert torch.equal(predict(model, batch), enabled)


@each_config
def test_inject_adapter_in_model_computes_what_the_peft_model_computes(sam, family, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    peft_model = perturb_adapter(get_peft_model(FAMILIES[family].build(), make_config(**config_kwargs)))
    expected = predict(peft_model, batch)

    injected = inject_adapter_in_model(make_config(**config_kwargs), sam)
    assert injected is sam
    # keys as the injected model names them, without the PeftModel's "base_model.model." prefix
    state = get_peft_model_state_dict(peft_model)
    result = set_peft_model_state_dict(injected, {key.removeprefix("base_model.model."): state[key] for key in state})
    assert not result.unexpected_keys
    assert torch.equal(predict(injected, batch), expected)
    if config.depth_adapter:
        volumes = {**without_depth(batch), "pixel_values": batch["pixel_values"].view(2, 2, 3, SIZE, SIZE)}
        assert torch.equal(predict(injected, volumes), expected)
        assert not torch.allclose(predict(injected, {**batch, "depth": 1}), expected)  # depth is used


@pytest.mark.parametrize("recorded_before_wrapping", [True, False], ids=["recorded-before", "wrapped-first"])
@each_config
def test_output_hidden_states_and_attentions_as_sam_returns_them(
    sam_dir, family, make_config, config_kwargs, recorded_before_wrapping
):
    """transformers installs its recording hooks on the first request, before or after PEFT wraps the layers."""
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    outputs = {"output_hidden_states": True, "output_attentions": True}
    reference = load_sam(sam_dir, attn_implementation="eager")  # sdpa returns no attention weights
    with torch.no_grad():
        expected = reference(**without_depth(batch), **outputs)
    wrapped = reference if recorded_before_wrapping else load_sam(sam_dir, attn_implementation="eager")
    model = perturb_adapter(get_peft_model(wrapped, config))
    with torch.no_grad():
        with model.disable_adapter():
            disabled = model(**batch, **outputs)
        enabled = model(**batch, **outputs)
    recorded = [key for key in ("vision_hidden_states", "vision_attentions", "mask_decoder_attentions")
                if getattr(expected, key) is not None]  # the tiny EdgeTAM's stand-in backbone records nothing
    assert "mask_decoder_attentions" in recorded and (len(recorded) == 3 or not FAMILIES[family].encoder_layers)
    for key in recorded:
        assert len(getattr(expected, key)) > 0, key
        assert len(getattr(disabled, key)) == len(getattr(enabled, key)) == len(getattr(expected, key)), key
        assert all(torch.equal(got, want) for got, want in zip(getattr(disabled, key), getattr(expected, key))), key
    assert not torch.allclose(enabled.mask_decoder_attentions[-1], expected.mask_decoder_attentions[-1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@each_config
def test_half_precision_sam_keeps_float32_adapters(sam, family, tmp_path, make_config, config_kwargs, dtype):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    # What the adapters do must stand above half precision's rounding of the masks for the check to see them: alone
    # in the decoder they move the tiny SAM-HQ's masks 40 times less than SAM's, so they are moved further there.
    std = 0.05 if config.encoder_adapters else 0.5
    reference = perturb_adapter(get_peft_model(FAMILIES[family].build(), make_config(**config_kwargs)), std=std)
    expected = predict(reference, batch)
    with reference.disable_adapter():
        adapters_effect = (expected - predict(reference, batch)).abs().max()
    reference.save_pretrained(tmp_path)
    low = {**batch, "pixel_values": batch["pixel_values"].to(dtype), "input_boxes": batch["input_boxes"].to(dtype)}

    def adapter_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
        return {param.dtype for name, param in model.named_parameters() if ".medsa_" in name}

    loaded = PeftModel.from_pretrained(sam.to(dtype), tmp_path)
    assert adapter_dtypes(loaded) == {torch.float32}
    got = predict(loaded, low)
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max() < 0.2 * adapters_effect

    created = get_peft_model(FAMILIES[family].build().to(dtype), make_config(**config_kwargs))
    assert adapter_dtypes(created) == {torch.float32}
    set_peft_model_state_dict(created, get_peft_model_state_dict(reference))
    # the same weights: equal up to a rounding step of the dtype (half-precision kernels round with the alignment)
    rounding = torch.finfo(dtype).eps * got.float().abs().max().item()
    torch.testing.assert_close(predict(created, low), got, rtol=0, atol=2 * rounding)

    kept = get_peft_model(
        FAMILIES[family].build().to(dtype), make_config(**config_kwargs), autocast_adapter_dtype=False
    )
    assert adapter_dtypes(kept) == {dtype}
    assert torch.isfinite(predict(kept, low)).all()


@each_config
def test_mixed_models_refuse_medsa_clearly(sam, make_config, config_kwargs):
    message = "'MEDSA' is not compatible with the `PeftMixedModel`"
    with pytest.raises(ValueError, match=message):
        PeftMixedModel(sam, make_config(**config_kwargs))
    with pytest.raises(ValueError, match=message):
        get_peft_model(sam, make_config(**config_kwargs), mixed=True)


@each_config
def test_model_and_layer_status(sam, family, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    model = get_peft_model(sam, config)
    assert config.peft_type == "MEDSA" and config.peft_type.value == "MEDSA"
    status = model.get_model_status()
    assert (status.base_model_type, status.adapter_model_type) == (type(sam).__name__, "MedSAModel")
    assert status.peft_types == {"default": "MEDSA"}
    assert status.trainable_params == sum(param.numel() for param in model.parameters() if param.requires_grad)
    assert status.enabled is True and status.active_adapters == ["default"] and status.merged_adapters == []
    assert status.requires_grad == {"default": True} and status.available_adapters == ["default"]
    assert status.devices == {"default": ["cpu"]}

    layer_kinds = Counter(layer.module_type for layer in model.get_layer_status())
    encoder_layer, encoder_count = FAMILIES[family].encoder_layers or ("MedSAVisionLayer", 0)
    expected_kinds = {
        encoder_layer: encoder_count if config.encoder_adapters else 0,
        "MedSATwoWayLayer": 2 if config.decoder_adapters else 0,
        "ModulesToSaveWrapper": 1 if config.modules_to_save else 0,
    }
    assert dict(layer_kinds) == {kind: count for kind, count in expected_kinds.items() if count}
    for layer in model.modules():
        if isinstance(layer, MedSAHieraLayer):  # a block that starts a stage widens its tokens
            assert (layer.in_features, layer.out_features) == (layer.base_layer.dim, layer.base_layer.dim_out)
        elif isinstance(layer, MedSALayer):
            assert layer.in_features == layer.out_features == 32  # the tiny models' width

    model.base_model.disable_adapter_layers()
    assert model.get_model_status().enabled is False
    assert not any(layer.enabled for layer in model.get_layer_status())


@each_config
def test_print_trainable_parameters(sam, capsys, make_config, config_kwargs):
    model = get_peft_model(sam, make_config(**config_kwargs))
    trainable = sum(param.numel() for param in model.parameters() if param.requires_grad)
    total = sum(param.numel() for param in model.parameters())
    model.print_trainable_parameters()
    percent = 100 * trainable / total
    expected = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {percent:.4f}"
    assert capsys.readouterr().out.strip() == expected


@each_config
def test_add_and_set_adapter_switch_output_and_trainable_parameters(sam, make_config, config_kwargs):
    config = make_config(**config_kwargs)
    batch = sam_inputs(config)
    model = perturb_adapter(get_peft_model(sam, config))
    first = predict(model, batch)
    model.add_adapter("other", make_config(**config_kwargs))
    perturb_adapter(model, "other", seed=2)

    def trainable() -> set[str]:
        return {name for name, param in model.named_parameters() if param.requires_grad}

    assert model.active_adapters == ["default"] and torch.equal(predict(model, batch), first)
    assert trainable() and all(".default." in name for name in trainable())
    model.set_adapter("other")
    assert not torch.allclose(predict(model, batch), first)
    assert trainable() and all(".other." in name for name in trainable())
    model.set_adapter("default")
    assert torch.equal(predict(model, batch), first)


@each_config
def test_base_model_state_dict_round_trip(sam, make_config, config_kwargs):
    original = {key: value.clone() for key, value in sam.state_dict().items()}
    model = get_peft_model(sam, make_config(**config_kwargs))
    extracted = get_base_model_state_dict(model)
    assert extracted.keys() == original.keys()
    assert all(torch.equal(extracted[key], original[key]) for key in original)

    with torch.no_grad():
        for param in model.get_base_model().parameters():
            param.add_(0.1)
    result = set_base_model_state_dict(model, original, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    restored = get_base_model_state_dict(model)
    assert all(torch.equal(restored[key], original[key]) for key in original)
