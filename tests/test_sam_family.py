"""One MedSAConfig on the SAM family: SAM-HQ (SAM's ViT and two-way blocks, plus an HQ token) and SAM 2's image
predictor (a multi-scale Hiera encoder, SAM's two-way blocks plus an object-score token).

PEFT's battery runs on each family in test_peft_contract.py (save / load, disable / unload, what trains, reentrant
checkpointing, half precision); here, on tiny random models of each family: exactness at zero init in 2D and 3D,
loading by repo id from an offline Hub, activation checkpointing with depth, bf16 autocast; where the adapters sit in
a Hiera block and what SD-Trans mixes there; training and prediction; the tracker and video models.
"""

import importlib
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from transformers import Sam2Model, Sam2Processor, Sam2VideoConfig, Sam2VideoModel, SamHQModel, ViTConfig
from transformers.models.sam2.modeling_sam2 import Sam2MultiScaleBlock

import medsa_peft  # noqa: F401  (registers MEDSA)
from helpers import (
    LocalHub,
    perturb_adapter,
    randomize_adapters,
    run_python,
    tiny_sam2_config,
    tiny_sam2_model,
    tiny_sam_hq_model,
)
from medsa_peft import MedSAConfig, use_fused_attention
from medsa_peft.tuner.fast_paths import enable_activation_checkpointing
from medsa_peft.tuner.layer import MedSAHieraLayer, MedSALayer, MedSATwoWayLayer, MedSAVisionLayer
from medsa_peft.cli import main
from medsa_peft.data.preprocess import SamFrame, frame_coordinates
from medsa_peft.inference import MedSAPredictor
from medsa_peft.sam_models import load_sam
from medsa_peft.training import MedSATrainingArguments, train
from medsa_peft.training.methods import count_trainable, trainable_model
from medsa_peft.tuner.model import VOLUME_HOOKS

SIZE = 64
FAMILIES = {"sam-hq": (tiny_sam_hq_model, SamHQModel), "sam2": (tiny_sam2_model, Sam2Model)}
each_family = pytest.mark.parametrize("family", list(FAMILIES))
CONFIGS = {"2d": lambda: MedSAConfig(), "3d": lambda: MedSAConfig(depth_adapter=True)}


def plain_model(family: str) -> torch.nn.Module:
    return FAMILIES[family][0]()


def inputs(config: MedSAConfig, seed: int = 0) -> dict:
    """Four images with a box each; with a depth adapter, two volumes of two slices."""
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "pixel_values": torch.randn(4, 3, SIZE, SIZE, generator=generator),
        "input_boxes": torch.tensor([[[6.0, 8.0, 40.0, 44.0]]]).repeat(4, 1, 1),
        "multimask_output": False,
    }
    return {**batch, "depth": 2} if config.depth_adapter else batch


def without_depth(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "depth"}


@torch.no_grad()
def predict(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).pred_masks


@each_family
@pytest.mark.parametrize("config_name", list(CONFIGS))
def test_zero_init_computes_exactly_the_plain_model(family, config_name):
    config = CONFIGS[config_name]()
    sam = plain_model(family)
    batch = inputs(config)
    with torch.no_grad():
        expected = sam(**without_depth(batch))
        got = get_peft_model(sam, config)(**batch)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    assert torch.equal(got.iou_scores, expected.iou_scores)
    assert not torch.allclose(predict(randomize_adapters(sam), batch), expected.pred_masks)  # the adapters act


@each_family
def test_every_encoder_block_and_decoder_block_is_wrapped_at_its_width(family):
    sam = plain_model(family)
    model = get_peft_model(sam, MedSAConfig(depth_adapter=True))
    vision = [module for module in model.modules() if isinstance(module, MedSAVisionLayer)]
    decoder = [module for module in model.modules() if isinstance(module, MedSATwoWayLayer)]
    assert len(decoder) == 2 and all(layer.in_features == 32 for layer in decoder)
    if family == "sam2":
        assert len(vision) == 6 and all(isinstance(layer, MedSAHieraLayer) for layer in vision)
        # each block's adapters at its stage's width, after the projection where the block starts a stage
        widths = [(layer.in_features, layer.out_features) for layer in vision]
        assert widths == [(8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 64)]
        for layer in vision:
            for kind in ("space", "mlp", "depth"):
                adapter = getattr(layer, f"medsa_{kind}_adapter")["default"]
                assert adapter.fc1.in_features == adapter.fc2.out_features == layer.base_layer.dim_out
                assert adapter.fc1.out_features == round(layer.base_layer.dim_out / 4)
    else:
        assert len(vision) == 2 and not any(isinstance(layer, MedSAHieraLayer) for layer in vision)
    # SAM 1 has 1 IoU + 4 mask tokens before the prompt; SAM-HQ adds its HQ token, SAM 2 its object-score token
    assert {layer.num_output_tokens for layer in decoder} == {6}


@each_family
def test_hyper_adapter_reads_the_sparse_prompt_tokens(family):
    sam = plain_model(family)
    batch = inputs(MedSAConfig())
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(
            input_points=None, input_labels=None, input_boxes=batch["input_boxes"], input_masks=None
        )
    model = get_peft_model(sam, MedSAConfig())
    seen = []
    for layer in model.modules():
        if isinstance(layer, MedSATwoWayLayer):
            hyper = layer.medsa_hyper_adapter["default"]
            hyper.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    predict(model, batch)
    assert len(seen) == 2 and all(torch.equal(tokens, sparse) for tokens in seen)


def test_sam_hq_encoder_still_hands_its_global_layers_to_the_hq_features():
    model = get_peft_model(tiny_sam_hq_model(), MedSAConfig())
    with torch.no_grad():
        outputs = model.base_model.model.vision_encoder(torch.randn(1, 3, SIZE, SIZE))
    assert len(outputs.intermediate_embeddings) == 1  # layer 1 is the one global layer


def test_official_preset_trains_the_whole_sam_hq_decoder_with_its_hq_token_and_layers():
    sam = tiny_sam_hq_model()
    hq_parts = ("hq_token", "hq_mask_mlp", "compress_vit_conv1", "encoder_conv1", "mask_conv1", "mask_norm")
    model = get_peft_model(sam, MedSAConfig.official())
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    for part in hq_parts:
        assert any(f"mask_decoder.modules_to_save.default.{part}." in name for name in trainable), part
    assert not any("vision_encoder" in name and ".medsa_" not in name for name in trainable)
    model.train()
    outputs = model(**inputs(model.peft_config["default"]))
    outputs.pred_masks.square().sum().backward()
    hq_token = model.base_model.model.mask_decoder.modules_to_save["default"].hq_token.weight
    assert hq_token.grad is not None and hq_token.grad.abs().sum() > 0


def test_hq_token_and_its_layers_train_beside_the_decoder_adapters_through_modules_to_save():
    sam = tiny_sam_hq_model()
    batch = inputs(MedSAConfig())
    plain = predict(sam, batch)
    model = get_peft_model(sam, MedSAConfig(modules_to_save=["hq_token", "hq_mask_mlp"]))
    assert torch.equal(predict(model, batch), plain)
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert any(".hq_token.modules_to_save.default." in name for name in trainable)
    assert any(".hq_mask_mlp.modules_to_save.default." in name for name in trainable)
    model.train()
    model(**batch).pred_masks.square().sum().backward()
    hq_token = model.base_model.model.mask_decoder.hq_token.modules_to_save["default"].weight
    assert hq_token.grad is not None and hq_token.grad.abs().sum() > 0


@each_family
def test_load_by_repo_id_from_an_offline_hub_cache(family, tmp_path):
    """The base model and the adapter by Hub id, in a fresh process with the Hub offline, as a user loads them."""
    hub = LocalHub(tmp_path / "hf_home")
    plain_model(family).save_pretrained(tmp_path / "base")
    hub.publish_folder(f"org/tiny-{family}", tmp_path / "base")
    config = MedSAConfig(depth_adapter=True)
    model = perturb_adapter(get_peft_model(plain_model(family), config))
    model.save_pretrained(tmp_path / "adapter")
    hub.publish_folder(f"user/medsa-{family}", tmp_path / "adapter")
    batch = inputs(config)
    torch.save({"batch": batch, "masks": predict(model, batch)}, tmp_path / "expected.pt")

    run_python(
        f"""
        import torch
        import medsa_peft
        from peft import PeftModel
        from medsa_peft.sam_models import load_sam
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        model = PeftModel.from_pretrained(load_sam("org/tiny-{family}"), "user/medsa-{family}").eval()
        assert type(model.get_base_model()).__name__ == {FAMILIES[family][1].__name__!r}
        with torch.no_grad():
            masks = model(**expected["batch"]).pred_masks
        torch.testing.assert_close(masks, expected["masks"], rtol=1e-5, atol=1e-6)
        """,
        env={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"},
    )


@each_family
@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_keeps_depth_and_the_gradients(family, use_reentrant):
    config = MedSAConfig(depth_adapter=True)
    model = perturb_adapter(get_peft_model(plain_model(family), config)).train()
    batch = inputs(config)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        outputs = model(**batch)
        (outputs.pred_masks.square().sum() + outputs.iou_scores.square().sum()).backward()
        return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}

    plain = gradients()
    layers = [module for module in model.modules() if isinstance(module, MedSAVisionLayer)]
    if family == "sam2":  # transformers' switch refuses Sam2Model, whose class does not declare the support
        with pytest.raises(ValueError, match="does not support activation checkpointing"):
            model.gradient_checkpointing_enable()
    enable_activation_checkpointing(model, use_reentrant=use_reentrant)
    assert all(layer.gradient_checkpointing for layer in layers)
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys()
    assert any(grad.abs().sum() > 0 for name, grad in plain.items() if "medsa_depth_adapter" in name)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


@each_family
def test_bf16_model_and_bf16_autocast(family):
    config = MedSAConfig(depth_adapter=True)
    batch = inputs(config)
    reference = perturb_adapter(get_peft_model(plain_model(family), config))
    expected = predict(reference, batch)
    with reference.disable_adapter():
        adapters_effect = (expected - predict(reference, batch)).abs().max()

    low = get_peft_model(plain_model(family).to(torch.bfloat16), MedSAConfig(depth_adapter=True))
    low.load_state_dict(reference.state_dict())
    assert {param.dtype for name, param in low.named_parameters() if ".medsa_" in name} == {torch.float32}
    got = predict(low, {**batch, "pixel_values": batch["pixel_values"].bfloat16(), "input_boxes": batch["input_boxes"]})
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.3 * adapters_effect

    reference.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = reference(**batch)
    outputs.pred_masks.float().square().mean().backward()
    grads = [param.grad for param in reference.parameters() if param.requires_grad]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)


def hiera_layers(config: MedSAConfig | None = None) -> list[MedSAHieraLayer]:
    model = get_peft_model(tiny_sam2_model(), config or MedSAConfig(depth_adapter=True, init="official"))
    return [module for module in model.modules() if isinstance(module, MedSAHieraLayer)]


# (block, its input grid): 0 windowed, 1 pools in windows into stage 1, 2 global, 4 windowed with padding (6 x 6
# windows on a 4 x 4 grid), 5 pools in padded windows into stage 3.
HIERA_BLOCKS = {"windowed": (0, 16), "pooling": (1, 16), "global": (2, 8), "padded": (4, 4), "padded-pooling": (5, 4)}


@pytest.mark.parametrize("block", list(HIERA_BLOCKS))
def test_hiera_block_without_adapters_is_sam2s_block(block):
    index, grid = HIERA_BLOCKS[block]
    layer = hiera_layers()[index]
    tokens = torch.randn(4, grid, grid, layer.in_features)
    layer.enable_adapters(False)
    with torch.no_grad():
        expected = layer.base_layer(tokens)
        got = layer(tokens, depth=2)
    assert torch.equal(got, expected)


def test_hiera_block_follows_the_design_math():
    """x' + a + MLP(n) + s * MLPAdapter(n): a = Attn(h) + Space(Attn(h)) + Depth(DepthAttn(pool(qkv(h)))), h = LN1(x),
    x' = pool(proj(h)) where the block changes width, on block 3 (pools 8 x 8 -> 4 x 4 in 4 x 4 windows)."""
    layer = hiera_layers()[3]
    base, depth, tokens = layer.base_layer, 2, torch.randn(4, 8, 8, 16)
    adapter = lambda kind: getattr(layer, f"medsa_{kind}_adapter")["default"]  # noqa: E731
    with torch.no_grad():
        h = base.layer_norm1(tokens)
        residual = torch.nn.functional.max_pool2d(base.proj(h).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        spatial = block_output_without_mlp(base, tokens) - residual
        qkv = torch.nn.functional.max_pool2d(base.attn.qkv(h).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        q, k, v = qkv.reshape(2, depth, 16, 3, 2, 16).permute(3, 0, 2, 4, 1, 5)  # (volume, token, head, slice, d)
        weights = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
        across = (weights @ v).permute(0, 3, 1, 2, 4).reshape(4, 4, 4, 32)
        depth_attn = base.attn.proj(across)
        a = spatial + adapter("space")(spatial) + adapter("depth")(depth_attn)
        x = residual + a
        n = base.layer_norm2(x)
        expected = x + base.mlp(n) + 0.5 * adapter("mlp")(n)
        got = layer(tokens, depth=depth)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def block_output_without_mlp(block: Sam2MultiScaleBlock, tokens: torch.Tensor) -> torch.Tensor:
    """SAM 2's own block with its MLP's output replaced by zeros: the residual plus the attention, computed by
    transformers' code (windows, query pooling and all)."""
    handle = block.mlp.register_forward_hook(lambda module, args, output: torch.zeros_like(output))
    try:
        return block(tokens)
    finally:
        handle.remove()


@pytest.mark.parametrize("block", list(HIERA_BLOCKS))
def test_sd_trans_on_hiera_mixes_slices_only_at_the_pooled_token(block):
    """One slice's token (i, j) perturbed: in a block's output, the other slices of its volume change at exactly
    one token, the one of the block's output grid that covers (i, j) ((i, j) itself, or (i // 2, j // 2) where the
    block pools its queries); the other volume does not change."""
    index, grid = HIERA_BLOCKS[block]
    layer = hiera_layers()[index]
    stride = 2 if layer.base_layer.query_stride else 1
    depth, k, (i, j) = 3, 1, (grid - 1, grid // 2 - 1)  # a token off the window corners, in the last window row
    tokens = torch.randn(2 * depth, grid, grid, layer.in_features)
    changed = tokens.clone()
    changed[k, i, j] += 3.0 * torch.randn(layer.in_features)
    with torch.no_grad():
        diff = (layer(changed, depth=depth) - layer(tokens, depth=depth)).abs().amax(dim=-1)

    others = [s for s in range(depth) if s != k]
    at_token = diff[others, i // stride, j // stride]
    elsewhere = diff[others].clone()
    elsewhere[:, i // stride, j // stride] = 0
    assert (at_token > 1e-5).all(), "the other slices must see slice k through the depth branch"
    assert elsewhere.max() == 0, "the depth branch must not mix tokens of the output grid"
    assert diff[depth:].max() == 0, "the other volume must not change"
    assert diff[k].max() > 0


def test_volumes_do_not_mix_through_a_whole_sam2():
    model = randomize_adapters(get_peft_model(tiny_sam2_model(), MedSAConfig(depth_adapter=True)))
    batch = inputs(model.peft_config["default"])
    changed = batch["pixel_values"].clone()
    changed[1] += torch.randn(3, SIZE, SIZE)  # volume 0, slice 1
    before, after = predict(model, batch), predict(model, {**batch, "pixel_values": changed})
    assert not torch.allclose(after[0], before[0])  # slice 0 sees its neighbour through SD-Trans
    assert torch.equal(after[2:], before[2:])


def test_sam_variants_of_converted_sam_checkpoints_are_refused_where_they_do_not_apply():
    with pytest.raises(ValueError, match="decoder_block='sam'"):
        get_peft_model(tiny_sam2_model(), MedSAConfig(decoder_block="medsa-2024"))
    with pytest.raises(ValueError, match="decoder_block='sam'"):
        get_peft_model(tiny_sam_hq_model(), MedSAConfig(decoder_block="medsa-2024"))
    with pytest.raises(ValueError, match="Hiera encoder has no such variant"):
        get_peft_model(tiny_sam2_model(), MedSAConfig(pad_windows_before_norm=True))


def test_fused_attention_serves_sam_hq_and_leaves_hiera_alone():
    config = MedSAConfig(depth_adapter=True)
    batch = inputs(config)
    model = randomize_adapters(get_peft_model(tiny_sam_hq_model(), config))
    expected = predict(model, batch)
    torch.testing.assert_close(predict(use_fused_attention(model), batch), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="SAM ViT"):
        use_fused_attention(get_peft_model(tiny_sam2_model(), config))


@each_family
def test_layer_status_names_the_wrapping_layers(family):
    model = get_peft_model(plain_model(family), MedSAConfig())
    kinds = {layer.module_type for layer in model.get_layer_status()}
    encoder_kind = "MedSAHieraLayer" if family == "sam2" else "MedSAVisionLayer"
    assert kinds == {encoder_kind, "MedSATwoWayLayer"}
    assert all(isinstance(layer, MedSALayer) for layer in model.modules() if isinstance(layer, BaseTunerLayer))


def adapter_parameters(width: int) -> int:
    """One bottleneck adapter at ratio 1/4: C * C/4 + C/4 + C/4 * C + C."""
    return 2 * width * (width // 4) + width // 4 + width


def test_real_size_parameter_budgets_on_meta_device():
    """docs/design.md's table: SAM-HQ ViT-B's adapters are SAM ViT-B's; SAM 2.1 Hiera-T's have each stage's width."""
    from transformers import Sam2Config, SamHQConfig

    decoder_adapters = 823_744  # HyP-Adpt, query and key adapters of two 256-wide two-way blocks, as on SAM
    with torch.device("meta"):
        sam_hq = SamHQModel(SamHQConfig())
        hiera_tiny = Sam2Model(Sam2Config())
    model = get_peft_model(sam_hq, MedSAConfig(depth_adapter=True))
    assert model.get_nb_trainable_parameters()[0] == 3 * 12 * adapter_parameters(768) + decoder_adapters == 11_475_136
    model = get_peft_model(hiera_tiny, MedSAConfig(depth_adapter=True))
    per_block = sum(blocks * adapter_parameters(width) for blocks, width in zip([1, 2, 7, 2], [96, 192, 384, 768]))
    assert model.get_nb_trainable_parameters()[0] == 3 * per_block + decoder_adapters == 4_283_560


def test_sam2_video_model_gets_the_same_adapters_in_its_image_encoder_and_decoder():
    """Sam2VideoModel builds its image encoder and decoder from SAM 2's blocks: the same layers wrap them, and at zero
    init its image features are exactly the plain model's. (Its memory path is not wrapped.)"""
    from transformers import Sam2VideoConfig, Sam2VideoModel

    from helpers import tiny_sam2_config
    from medsa_peft.tiny_sam import randomize_weights

    parts = tiny_sam2_config().to_dict()
    config = Sam2VideoConfig(
        **{key: parts[key] for key in ("vision_config", "prompt_encoder_config", "mask_decoder_config")}, image_size=64
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        video = randomize_weights(Sam2VideoModel(config)).eval()
    pixels = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = video.get_image_features(pixels).fpn_hidden_states
        model = get_peft_model(video, MedSAConfig())
        got = video.get_image_features(pixels).fpn_hidden_states
    kinds = {layer.module_type for layer in model.get_layer_status()}
    assert kinds == {"MedSAHieraLayer", "MedSATwoWayLayer"}
    assert not any("memory" in name for name, _ in model.named_parameters() if ".medsa_" in name)
    assert all(torch.equal(one, other) for one, other in zip(got, expected))


# --- Training and prediction on each family: `examples/train.py --model` and `medsa-peft predict --model` ---

SAM2_PARTS = ("vision_config", "prompt_encoder_config", "mask_decoder_config")


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict:
    """Each family's tiny model, saved as a user's fine-tuned or downloaded checkpoint folder."""
    folder = tmp_path_factory.mktemp("family")
    for family in FAMILIES:
        plain_model(family).save_pretrained(folder / family)
    return {family: folder / family for family in FAMILIES}


@each_family
def test_a_checkpoint_loads_as_its_own_class_and_frames_as_its_masks_come(family, family_dirs):
    model = load_sam(family_dirs[family])
    assert type(model) is FAMILIES[family][1]
    frame = SamFrame.from_config(model.config)
    masks = predict(model.eval(), inputs(MedSAConfig()))
    assert frame.image_size == SIZE and masks.shape[-2:] == (frame.mask_size, frame.mask_size)


def test_a_sam2_video_checkpoint_loads_as_the_image_predictor_and_other_models_are_refused(tmp_path):
    parts = tiny_sam2_config().to_dict()
    video = Sam2VideoConfig(**{key: parts[key] for key in SAM2_PARTS}, image_size=SIZE)
    Sam2VideoModel(video).save_pretrained(tmp_path / "video")
    assert type(load_sam(tmp_path / "video")) is Sam2Model
    ViTConfig().save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"vit: a 'vit' model; medsa-peft trains and runs the model types sam, sam_hq"):
        load_sam(tmp_path / "vit")
    with pytest.raises(FileNotFoundError, match="cannot load the SAM model"):
        load_sam(tmp_path / "nothing")


@pytest.mark.parametrize("height, width", [(64, 64), (128, 128), (40, 40)])
def test_square_slices_get_sam2_processors_coordinates(height, width):
    """SAM 2's processor stretches every image to the square frame; on square slices SAM's long-side frame is the
    same resize, so the coordinates agree (non-square slices, in SAM 2's own frame: tests/test_sam2_frame.py)."""
    box = np.array([[0.2 * width, 0.1 * height, 0.9 * width, 0.7 * height]], np.float32)
    points = np.array([[0.5 * width, 0.5 * height], [0.25 * width, 0.6 * height]], np.float32)
    for coordinates, is_box in ((box, True), (points, False)):
        expected = Sam2Processor._normalize_coordinates(  # a static computation: it reads nothing of the processor
            None, SIZE, torch.from_numpy(coordinates.copy()), (height, width), is_bounding_box=is_box
        )
        np.testing.assert_allclose(frame_coordinates(coordinates, (height, width), SIZE), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("family, volume_depth", [("sam-hq", 1), ("sam2", 1), ("sam2", 2)])
def test_train_two_steps_then_predict_with_the_written_adapter(family, volume_depth, family_dirs, tmp_path):
    three_d = dict(dataset_config="3d", volume_depth=volume_depth) if volume_depth > 1 else {}
    args = MedSATrainingArguments(
        gradient_checkpointing=True,  # transformers' own switch refuses Sam2Model
        model_name_or_path=str(family_dirs[family]),
        cache_dir=str(tmp_path / "datasets-cache"),
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        eval_every=0,
        checkpointing_steps=0,
        max_eval_cases=1,
        report_to="none",
        num_workers=0,
        **three_d,
    )
    metrics = train(args)
    assert metrics["steps"] == 2 and np.isfinite(metrics["after"]["dice"])
    adapter = tmp_path / "run" / "adapter"
    predictor = MedSAPredictor.from_pretrained(adapter, family_dirs[family], progress=False)
    assert type(predictor.model.get_base_model()) is FAMILIES[family][1]
    assert predictor.has_depth == (volume_depth > 1)
    model_class = FAMILIES[family][1].__name__  # the card loads the base with its own class
    assert f"PeftModel.from_pretrained({model_class}.from_pretrained(" in (adapter / "README.md").read_text()

    if volume_depth > 1:
        source = tmp_path / "mri.nii.gz"
        volume = np.random.default_rng(0).normal(100, 20, (20, 24, 5)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), source)
        output, shape, prompt = tmp_path / "mask.nii.gz", (20, 24, 5), ["--box", "2,3,0,18,15,5", "--modality", "mri"]
    else:
        source, output, shape = tmp_path / "picture.png", tmp_path / "mask.png", (20, 24)
        prompt = ["--box", "2,3,18,15"]
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)).save(source)
    model = ["--model", str(family_dirs[family]), "--adapter", str(adapter)]
    assert main(["predict", *model, "--input", str(source), *prompt, "--output", str(output)]) == 0
    written = np.asanyarray(nib.load(output).dataobj) if volume_depth > 1 else np.asarray(Image.open(output))
    assert written.shape == shape


@each_family
def test_lora_by_default_adapts_the_qkv_of_every_image_encoder_block(family):
    model = plain_model(family)
    qkv = [module for name, module in model.named_modules() if name.startswith("vision_encoder.") and "qkv" in name]
    trainable = trainable_model(model, MedSATrainingArguments(method="lora", lora_rank=2))
    assert len(qkv) == {"sam-hq": 2, "sam2": 6}[family]
    assert count_trainable(trainable) == 2 * sum(linear.in_features + linear.out_features for linear in qkv)


def test_the_benchmark_runs_medsa_beside_lora_on_one_sam2_model(tmp_path, monkeypatch):
    """benchmarks/benchmark.py --preset cpu-sam2, shortened: both rows time a step on the same Sam2Model."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "benchmark", raising=False)
    benchmark = importlib.import_module("benchmark")
    output = tmp_path / "sam2.json"
    options = ["--steps", "1", "--warmup", "0", "--output", str(output)]
    benchmark.main(["--preset", "cpu-sam2", "--variants", "train:reference,train:medsa,train:lora", *options])

    payload = json.loads(output.read_text())
    assert "agreement" not in payload  # the naive reference is SAM ViT's
    rows = {row["variant"]: row for row in payload["rows"]}
    assert list(rows) == ["train:medsa", "train:lora"] and all("error" not in row for row in rows.values()), rows
    medsa, lora = rows["train:medsa"], rows["train:lora"]
    sam2 = Sam2Model(benchmark.sam_config("sam2-small"))
    decoder = sum(param.numel() for param in sam2.mask_decoder.parameters())
    qkv = [module for name, module in sam2.named_modules() if name.endswith("attn.qkv")]
    assert lora["trainable_parameters"] == decoder + 4 * sum(linear.in_features + linear.out_features for linear in qkv)
    assert medsa["trainable_parameters"] == 6_521_653  # SAM 2.1 Hiera-T's official() count, README
    assert medsa["images_per_s"] > 0 and lora["peak_bytes"] > 0 and "train:medsa" in payload["table"]


# --- SAM 3's tracker and EdgeTAM: SAM 2's two-way decoder blocks behind other image encoders ---

from helpers import tiny_edgetam_model, tiny_sam3_tracker_model  # noqa: E402
from medsa_peft.tuner.layer import TWO_WAY_BLOCKS  # noqa: E402

TRACKERS = {
    "sam3-tracker": (lambda: tiny_sam3_tracker_model(), "Sam3TrackerModel"),
    "sam3-tracker-video": (lambda: tiny_sam3_tracker_model(video=True), "Sam3TrackerVideoModel"),
    "edgetam": (lambda: tiny_edgetam_model(), "EdgeTamModel"),
    "edgetam-video": (lambda: tiny_edgetam_model(video=True), "EdgeTamVideoModel"),
}
each_tracker = pytest.mark.parametrize("tracker", list(TRACKERS))


def plain_tracker(tracker: str) -> torch.nn.Module:
    return TRACKERS[tracker][0]()


@torch.no_grad()
def box_masks(model: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    """The masks for one box: on two images through an image predictor, or on the first frame of a two-frame video
    through a video model (a new session each call, so nothing is cached between models)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=generator)
    box = torch.tensor([[[6.0, 8.0, 40.0, 44.0]]])
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    if "Video" not in type(base).__name__:
        return model(pixel_values=pixels, input_boxes=box.repeat(2, 1, 1), multimask_output=False).pred_masks
    session_class = getattr(importlib.import_module(type(base).__module__), type(base).__name__[:-5] + "InferenceSession")
    session = session_class(video=pixels, video_height=SIZE, video_width=SIZE, dtype=torch.float32)
    corners = {"point_coords": box.reshape(1, 1, 2, 2), "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)}
    session.add_point_inputs(session.obj_id_to_idx(1), 0, corners)
    session.obj_with_new_inputs = [1]
    return model(inference_session=session, frame_idx=0).pred_masks


@each_tracker
def test_tracker_and_edgetam_get_adapters_in_their_decoder_blocks_only(tracker):
    """Their image encoders (SAM 3's ViT, EdgeTAM's RepViT) are neither SAM's ViT nor Hiera: they stay as they are, and
    so does a video model's memory path."""
    sam = plain_tracker(tracker)
    blocks = [name for name, module in sam.named_modules() if isinstance(module, TWO_WAY_BLOCKS)]
    model = get_peft_model(sam, MedSAConfig())
    assert type(model.get_base_model()).__name__ == TRACKERS[tracker][1]
    assert [status.name for status in model.get_layer_status()] == [f"model.{name}" for name in blocks]
    assert {status.module_type for status in model.get_layer_status()} == {"MedSATwoWayLayer"}
    assert len(blocks) == 2 and all(name.startswith("mask_decoder.transformer.layers.") for name in blocks)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all(".mask_decoder.transformer.layers." in name and ".medsa_" in name for name in trainable)


@each_tracker
@pytest.mark.parametrize(
    "config, wanted",
    [
        (MedSAConfig.official(), "encoder adapters only"),
        (MedSAConfig(depth_adapter=True), r"a depth adapter \(SD-Trans\)"),
    ],
    ids=["official", "depth"],
)
def test_tracker_and_edgetam_refuse_what_needs_an_adaptable_encoder_clearly(tracker, config, wanted):
    sam = plain_tracker(tracker)
    with pytest.raises(ValueError, match=f"asks for {wanted}, but {TRACKERS[tracker][1]}'s image encoder has none"):
        get_peft_model(sam, config)
    assert not any(isinstance(module, BaseTunerLayer) for module in sam.modules())  # refused before any wrapping


@each_tracker
def test_tracker_and_edgetam_zero_init_computes_exactly_the_plain_model(tracker):
    sam = plain_tracker(tracker)
    expected = box_masks(sam)
    model = get_peft_model(sam, MedSAConfig())
    assert torch.equal(box_masks(model), expected)
    assert not torch.allclose(box_masks(randomize_adapters(model)), expected)  # the adapters act


# The image models run PEFT's whole battery in test_peft_contract.py; the video models' forward takes a session.
each_video_tracker = pytest.mark.parametrize("tracker", [name for name in TRACKERS if name.endswith("-video")])


@each_video_tracker
def test_tracker_and_edgetam_save_pretrained_then_from_pretrained(tracker, tmp_path):
    model = randomize_adapters(get_peft_model(plain_tracker(tracker), MedSAConfig()))
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(plain_tracker(tracker), tmp_path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    torch.testing.assert_close(box_masks(loaded), box_masks(model), rtol=1e-5, atol=1e-7)


@each_video_tracker
def test_tracker_and_edgetam_disable_adapter_and_unload_give_the_plain_model(tracker):
    sam = plain_tracker(tracker)
    plain = box_masks(sam)
    state = {key: value.clone() for key, value in sam.state_dict().items()}
    model = randomize_adapters(get_peft_model(sam, MedSAConfig()))
    assert not torch.allclose(box_masks(model), plain)
    with model.disable_adapter():
        assert torch.equal(box_masks(model), plain)
    unloaded = model.unload()
    assert type(unloaded).__name__ == TRACKERS[tracker][1] and not hasattr(unloaded, VOLUME_HOOKS)
    assert not any(isinstance(module, BaseTunerLayer) for module in unloaded.modules())
    assert unloaded.state_dict().keys() == state.keys()
    assert all(torch.equal(unloaded.state_dict()[key], state[key]) for key in state)
    assert torch.equal(box_masks(unloaded), plain)
