"""Med-SA on a tiny SamModel: exactness at init, what trains, SD-Trans, HyP-Adpt, depth handling."""

import pytest
import torch
from peft import get_peft_model
from transformers import SamConfig, SamModel

import medsa_peft  # noqa: F401  (registers MEDSA)
from medsa_peft import MedSAConfig
from medsa_peft.tuner.layer import MedSATwoWayLayer, MedSAVisionLayer
from medsa_peft.tiny_sam import randomize_weights

SIZE = 64  # tiny_sam_config: 64 px images, 8 x 8 tokens, layer 0 windowed (4 x 4), layer 1 global


def boxes_for(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 1, 2, generator=generator) * SIZE / 2
    return torch.cat([corner, corner + SIZE / 3], dim=-1)


def images(n, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_fresh_model_computes_exactly_sam_2d(sam):
    pixels, boxes = images(2), boxes_for(2)
    with torch.no_grad():
        expected = sam(pixel_values=pixels, input_boxes=boxes, multimask_output=True)
        model = get_peft_model(sam, MedSAConfig())
        got = model(pixel_values=pixels, input_boxes=boxes, multimask_output=True)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    assert torch.equal(got.iou_scores, expected.iou_scores)


def test_fresh_model_computes_exactly_sam_3d(sam):
    pixels = images(6)
    points = torch.rand(6, 1, 2, 2) * SIZE
    labels = torch.tensor([[[1, 0]]]).repeat(6, 1, 1)
    with torch.no_grad():
        expected = sam(pixel_values=pixels, input_points=points, input_labels=labels, multimask_output=False)
        model = get_peft_model(sam, MedSAConfig(depth_adapter=True))
        got = model(pixel_values=pixels, depth=3, input_points=points, input_labels=labels, multimask_output=False)
    assert torch.equal(got.pred_masks, expected.pred_masks)
    assert torch.equal(got.iou_scores, expected.iou_scores)


def test_fresh_model_differs_from_sam_once_adapters_are_non_zero(sam):
    """The exactness above is not vacuous: with torch's default init the adapters change the output."""
    pixels, boxes = images(2), boxes_for(2)
    with torch.no_grad():
        expected = sam(pixel_values=pixels, input_boxes=boxes).pred_masks
        model = get_peft_model(sam, MedSAConfig(init="official"))
        got = model(pixel_values=pixels, input_boxes=boxes).pred_masks
    assert (got - expected).abs().max() > 1e-4


def test_only_adapters_train_and_one_step_changes_only_them(sam):
    model = get_peft_model(sam, MedSAConfig(depth_adapter=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".medsa_" in name for name in trainable)
    assert not any("base_layer" in name for name in trainable)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(pixel_values=images(4), depth=2, input_boxes=boxes_for(4), multimask_output=False)
    out.pred_masks.square().mean().backward()
    optimizer.step()

    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= trainable
    # the last layers start at zero and are the ones that receive gradient first
    assert any(name.endswith("fc2.weight") for name in changed)
    assert any("medsa_depth_adapter" in name for name in changed)
    assert any("medsa_hyper_adapter" in name for name in changed)


def depth_branch_model(sam):
    model = get_peft_model(sam, MedSAConfig(depth_adapter=True, init="official"))
    return model, [m for m in model.modules() if isinstance(m, MedSAVisionLayer)]


@pytest.mark.parametrize("layer_index", [0, 1], ids=["windowed", "global"])
def test_sd_trans_mixes_slices_only_at_the_same_spatial_token(sam, layer_index):
    _, layers = depth_branch_model(sam)
    layer = layers[layer_index]
    assert (layer.base_layer.window_size > 0) == (layer_index == 0)
    depth, k, (i, j) = 4, 1, (2, 5)  # (2, 5) lies in window (0, 1) of layer 0's 4 x 4 windows
    tokens = torch.randn(2 * depth, 8, 8, 32)
    changed = tokens.clone()
    changed[k, i, j] += 3.0 * torch.randn(32)  # volume 0, slice k, token (i, j)
    with torch.no_grad():
        diff = (layer(changed, depth=depth) - layer(tokens, depth=depth)).abs().amax(dim=-1)

    others = [s for s in range(depth) if s != k]
    at_token = diff[others, i, j]
    elsewhere = diff[others].clone()
    elsewhere[:, i, j] = 0
    assert (at_token > 1e-5).all(), "the other slices must see slice k through the depth branch"
    assert elsewhere.max() == 0, "the depth branch must not mix spatial locations"
    assert diff[depth:].max() == 0, "the other volume must not change"
    assert diff[k].max() > 0


def test_vision_layer_follows_the_design_math(sam):
    """x + a + MLP(n) + s * MLPAdapter(n), with a = Attn(h) + Space(Attn(h)) + Depth(DepthAttn(h)), h = LN1(x)."""
    _, layers = depth_branch_model(sam)
    layer = layers[1]  # global attention: SAM's Attn is a plain call of the frozen module
    base, depth, tokens = layer.base_layer, 3, torch.randn(6, 8, 8, 32)
    adapter = lambda kind: getattr(layer, f"medsa_{kind}_adapter")["default"]  # noqa: E731
    with torch.no_grad():
        h = base.layer_norm1(tokens)
        volumes = h.view(2, depth, 64, 32).transpose(1, 2).reshape(128, depth, 32)  # one sequence per token
        q, k, v = base.attn.qkv(volumes).chunk(3, dim=-1)
        heads = lambda t: t.view(128, depth, 2, 16).transpose(1, 2)  # noqa: E731
        weights = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 16**0.5, dim=-1)
        depth_attn = base.attn.proj((weights @ heads(v)).transpose(1, 2).reshape(128, depth, 32))
        depth_attn = depth_attn.view(2, 8, 8, depth, 32).permute(0, 3, 1, 2, 4).reshape(6, 8, 8, 32)
        spatial = base.attn(h)[0]
        a = spatial + adapter("space")(spatial) + adapter("depth")(depth_attn)
        x = tokens + a
        n = base.layer_norm2(x)
        expected = x + base.mlp(n) + 0.5 * adapter("mlp")(n)
        got = layer(tokens, depth=depth)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_depth_one_and_a_different_depth_at_evaluation(sam):
    model, _ = depth_branch_model(sam)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model(pixel_values=images(8), depth=4, input_boxes=boxes_for(8)).pred_masks.mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        for depth in (1, 2, 8):
            out = model(pixel_values=images(8), depth=depth, input_boxes=boxes_for(8), multimask_output=False)
            assert out.pred_masks.shape == (8, 1, 1, 32, 32)
            assert torch.isfinite(out.pred_masks).all()


def test_five_dimensional_pixel_values_equal_flat_batch_with_depth(sam):
    model, _ = depth_branch_model(sam)
    pixels, boxes = images(6), boxes_for(6)
    with torch.no_grad():
        flat = model(pixel_values=pixels, depth=3, input_boxes=boxes).pred_masks
        stacked = model(pixel_values=pixels.view(2, 3, 3, SIZE, SIZE), input_boxes=boxes).pred_masks
        as_one_volume = model(pixel_values=pixels, depth=6, input_boxes=boxes).pred_masks
    assert torch.equal(flat, stacked)
    assert not torch.allclose(flat, as_one_volume)  # the grouping into volumes matters


@pytest.mark.parametrize(
    "config, pixels, depth, message",
    [
        (MedSAConfig(depth_adapter=True), images(6), 4, "does not split into volumes"),
        (MedSAConfig(depth_adapter=True), images(6), 0, "at least 1"),
        (MedSAConfig(depth_adapter=True), images(6).view(2, 3, 3, SIZE, SIZE), 2, "slices per volume"),
        (MedSAConfig(), images(6), 3, "no depth adapter"),
        (MedSAConfig(), images(6), 1, "no depth adapter"),
    ],
)
def test_bad_depth_is_a_clear_error(sam, config, pixels, depth, message):
    model = get_peft_model(sam, config)
    with pytest.raises(ValueError, match=message):
        model(pixel_values=pixels, depth=depth, input_boxes=boxes_for(6))


def hyper_outputs(model):
    captured = []
    for module in model.modules():
        if isinstance(module, MedSATwoWayLayer):
            module.medsa_hyper_adapter["default"].register_forward_hook(lambda m, i, o: captured.append(o))
    return captured


def test_hyper_adapter_is_conditioned_on_the_prompt(sam):
    model = get_peft_model(sam, MedSAConfig(init="official"))
    captured = hyper_outputs(model)
    pixels = images(1).repeat(2, 1, 1, 1)
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0]], [[30.0, 28.0, 60.0, 62.0]]])
    with torch.no_grad():
        model(pixel_values=pixels, input_boxes=boxes)
    first_block = captured[0]
    assert first_block.shape == (2, 1, 64, 32)
    assert (first_block[0] - first_block[1]).abs().max() > 1e-4


def test_gradients_reach_the_hyper_network(sam):
    model = get_peft_model(sam, MedSAConfig(init="official"))
    out = model(pixel_values=images(2), input_boxes=boxes_for(2), multimask_output=False)
    out.pred_masks.square().mean().backward()
    hyper_grads = [
        p.grad for name, p in model.named_parameters() if "medsa_hyper_adapter" in name and "hyper_mlp" in name
    ]
    assert hyper_grads and all(g is not None and g.abs().max() > 0 for g in hyper_grads)


def test_mask_only_call_runs_and_hyper_adapter_stays_out(sam):
    model = get_peft_model(sam, MedSAConfig(init="official"))
    captured = hyper_outputs(model)
    masks = torch.rand(2, 1, 4 * 8, 4 * 8)  # SAM's mask prompt: 4x the image-embedding size
    with torch.no_grad():
        out = model(pixel_values=images(2), input_masks=masks, multimask_output=False)
    assert out.pred_masks.shape == (2, 1, 1, 32, 32)
    assert captured == []


def test_vit_b_parameter_budget_on_meta_device():
    with torch.device("meta"):
        sam = SamModel(SamConfig())
    model = get_peft_model(sam, MedSAConfig(hyper_adapter=False, decoder_mlp_adapter=False, decoder_key_adapter=False))
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 7_100_928 == 2 * 12 * 295_872  # one adapter: 768*192 + 192 + 192*768 + 768
    assert round((total - trainable) / 1e6, 1) == 93.7

    with torch.device("meta"):
        sam = SamModel(SamConfig())
    model = get_peft_model(sam, MedSAConfig(depth_adapter=True))
    assert model.get_nb_trainable_parameters()[0] == 3 * 12 * 295_872 + 823_744


def test_official_configuration_trains_encoder_adapters_and_the_whole_decoder(sam):
    decoder = {name for name, p in sam.named_parameters() if name.startswith("mask_decoder.")}
    model = get_peft_model(sam, MedSAConfig.official())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("medsa_space_adapter" in n for n in trainable) and any("medsa_mlp_adapter" in n for n in trainable)
    assert not any(f"medsa_{kind}_adapter" in n for n in trainable for kind in ("hyper", "query", "key"))
    assert len([n for n in trainable if "mask_decoder" in n]) == len(decoder)
    assert not any("vision_encoder" in n and "medsa_" not in n for n in trainable)


def test_config_refuses_contradictions():
    with pytest.raises(ValueError, match="every adapter off"):
        MedSAConfig(
            space_adapter=False,
            mlp_adapter=False,
            hyper_adapter=False,
            decoder_mlp_adapter=False,
            decoder_key_adapter=False,
        )
    with pytest.raises(ValueError, match="whole decoder"):
        MedSAConfig(modules_to_save=["mask_decoder"])
    with pytest.raises(ValueError, match="activation"):
        MedSAConfig(activation="tanh")


def test_relu_activation_and_ratio(sam):
    model = get_peft_model(sam, MedSAConfig(activation="relu", bottleneck_ratio=0.5))
    layer = next(m for m in model.modules() if isinstance(m, MedSAVisionLayer))
    adapter = layer.medsa_space_adapter["default"]
    assert isinstance(adapter.act, torch.nn.ReLU) and adapter.fc1.out_features == 16


def test_activation_checkpointing_keeps_depth_and_matches_plain_gradients(sam):
    pixels, boxes = images(4), boxes_for(4)

    def adapter_grads(checkpointing):
        model = get_peft_model(
            randomize_weights(SamModel(sam.config)), MedSAConfig(depth_adapter=True, init="official")
        )
        torch.manual_seed(0)
        for p in model.parameters():
            if p.requires_grad:
                p.data.normal_(0, 0.05)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = adapter_grads(False), adapter_grads(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_with_checkpointing_and_depth(sam):
    model = get_peft_model(sam, MedSAConfig(depth_adapter=True, init="official"))
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=images(4), depth=2, input_boxes=boxes_for(4), multimask_output=False)
    loss = out.pred_masks.float().square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_medsa_2024_decoder_block_is_one_computation_with_and_without_decoder_adapters():
    """`decoder_block="medsa-2024"` runs the authors' two-way block both where a MedSATwoWayLayer wraps the block
    (zero-init decoder adapters: no change) and where the whole decoder is trained (official preset); unload
    gives SAM's block back."""
    from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock

    from helpers import tiny_sam_model

    pixels, boxes = images(2), boxes_for(2)
    with torch.no_grad():
        plain = tiny_sam_model()(pixel_values=pixels, input_boxes=boxes).pred_masks
        wrapped = get_peft_model(tiny_sam_model(), MedSAConfig(decoder_block="medsa-2024"))
        official = get_peft_model(tiny_sam_model(), MedSAConfig.official(decoder_block="medsa-2024", init="zero"))
        got_wrapped = wrapped(pixel_values=pixels, input_boxes=boxes).pred_masks
        got_official = official(pixel_values=pixels, input_boxes=boxes).pred_masks
    torch.testing.assert_close(got_wrapped, got_official)
    assert (got_official - plain).abs().max() > 1e-3
    blocks = [module for module in official.unload().modules() if isinstance(module, SamTwoWayAttentionBlock)]
    assert blocks and all(type(block) is SamTwoWayAttentionBlock for block in blocks)


def test_adapters_of_one_model_must_agree_on_the_sam_variant(sam):
    model = get_peft_model(sam, MedSAConfig())
    with pytest.raises(ValueError, match="decoder_block='medsa-2024'.*must agree"):
        model.add_adapter("authors", MedSAConfig(decoder_block="medsa-2024"))
    with pytest.raises(ValueError, match="pad_windows_before_norm acts in the image-encoder layers"):
        MedSAConfig(space_adapter=False, mlp_adapter=False, pad_windows_before_norm=True)
