"""Fast paths: the fused relative-position attention, and Med-SA layers under torch.compile without graph breaks.

The compile tests use the "aot_eager" backend: Dynamo captures the whole layer (fullgraph=True fails on any graph
break) and AOTAutograd traces forward and backward, without the minutes a C++ inductor build takes on a CPU.
"""

import pytest
import torch
from peft import get_peft_model

import medsa_peft  # noqa: F401  (registers MEDSA)
from medsa_peft import MedSAConfig
from medsa_peft.tuner.adapters import SHORT_SEQUENCE_MAX, depth_attention, rel_pos_attention, short_sequence_attention
from medsa_peft.tuner.layer import MedSAHieraLayer, MedSATwoWayLayer, MedSAVisionLayer
from medsa_peft.tuner.fast_paths import compile_sam_layers, use_fused_attention
from helpers import tiny_sam2_model, tiny_sam_model

COMPILE = {"backend": "aot_eager", "fullgraph": True}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def official_3d(sam):
    """Med-SA with every encoder adapter and HyP-Adpt, all non-zero (torch's default init)."""
    return get_peft_model(sam, MedSAConfig(depth_adapter=True, init="official"))


def layers_of(model, kind):
    return [module for module in model.modules() if isinstance(module, kind)]


def recording_backend(graphs: list):
    """A torch.compile backend that keeps every captured graph in `graphs`, then runs it as aot_eager does."""

    def backend(graph_module, example_inputs):
        graphs.append(graph_module.graph)
        return torch._dynamo.backends.debugging.aot_eager(graph_module, example_inputs)

    return backend


def output_and_grads(function, inputs, parameters):
    out = function(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(out.square().sum(), [*inputs, *parameters])
    return out.detach(), grads


def assert_compiled_layer_matches_eager(layer, tokens):
    """The encoder layer compiled whole (fullgraph) gives eager's output and gradients on a volume of 2 slices."""
    adapters = [p for p in layer.parameters() if p.requires_grad]
    expected, expected_grads = output_and_grads(lambda x: layer(x, depth=2), [tokens], adapters)
    compiled = torch.compile(layer, **COMPILE)
    got, got_grads = output_and_grads(lambda x: compiled(x, depth=2), [tokens], adapters)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("window_size", [6, 0], ids=["windowed-padded", "global"])
def test_fused_attention_is_sams_attention(window_size):
    """Same output and gradients as SAM's own attention, padding of the windows included (16 = 6 + 6 + 4)."""
    sam = tiny_sam_model(image_size=128, window_size=6)  # 16 x 16 tokens
    layer = next(layer for layer in sam.vision_encoder.layers if layer.window_size == window_size)
    side = window_size or 16
    tokens = torch.randn(3, side, side, 32, requires_grad=True)
    parameters = [layer.attn.rel_pos_h, layer.attn.rel_pos_w, layer.attn.qkv.weight]

    expected, expected_grads = output_and_grads(layer.attn, [tokens], parameters)
    got, got_grads = output_and_grads(lambda x: rel_pos_attention(layer.attn, layer.attn.qkv(x)), [tokens], parameters)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_short_sequence_attention_is_sdpa():
    """The compiled depth branch's attention: SDPA's output and gradients, for 8 slices of 40 tokens x 3 heads."""
    tensors = [torch.randn(40, 3, 8, 16, requires_grad=True) for _ in range(3)]

    expected, expected_grads = output_and_grads(torch.nn.functional.scaled_dot_product_attention, tensors, [])
    got, got_grads = output_and_grads(short_sequence_attention, tensors, [])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-5)

    half = [tensor.detach().bfloat16() for tensor in tensors]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_half = short_sequence_attention(*half)
    assert got_half.dtype == torch.bfloat16
    torch.testing.assert_close(got_half.float(), expected.detach(), rtol=0, atol=3e-2)  # bf16 inputs


@pytest.mark.parametrize("depth", [2, SHORT_SEQUENCE_MAX + 1])
def test_compiled_depth_attention_runs_products_and_sums_for_short_volumes_only(depth):
    graphs = []
    proj = torch.nn.Linear(8, 8)
    qkv_states = torch.randn(depth, 3, 3, 24)  # one volume of `depth` slices, 3 x 3 tokens, 2 heads of 4
    expected = depth_attention(qkv_states, depth, proj, num_heads=2)
    got = torch.compile(depth_attention, backend=recording_backend(graphs), fullgraph=True)(qkv_states, depth, proj, 2)

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    sdpa = torch._C._nn.scaled_dot_product_attention
    assert [any(node.target is sdpa for node in graph.nodes) for graph in graphs] == [depth > SHORT_SEQUENCE_MAX]


def test_fused_attention_model_matches_plain_model(sam):
    model = official_3d(sam)
    pixels, boxes = torch.randn(4, 3, 64, 64), torch.tensor([[[4.0, 6.0, 40.0, 50.0]]]).repeat(4, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks
        got = use_fused_attention(model)(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks
        restored = use_fused_attention(model, enabled=False)(pixel_values=pixels, depth=2, input_boxes=boxes)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(restored.pred_masks, expected)


@pytest.mark.parametrize("layer_index, fused", [(0, True), (1, False)], ids=["windowed-fused", "global-sam"])
def test_vision_layer_compiles_in_one_graph_and_matches_eager(sam, layer_index, fused):
    model = official_3d(sam)
    if fused:
        use_fused_attention(model)
    layer = layers_of(model, MedSAVisionLayer)[layer_index]
    tokens = torch.randn(4, 8, 8, 32, requires_grad=True)
    assert_compiled_layer_matches_eager(layer, tokens)


# (Hiera block of the tiny SAM 2, its input grid): windowed; pooling into the next stage; global; padded windows
@pytest.mark.parametrize(
    "block, grid", [(0, 16), (1, 16), (2, 8), (4, 4)], ids=["windowed", "pooling", "global", "padded"]
)
def test_hiera_layer_compiles_in_one_graph_and_matches_eager(block, grid):
    layer = layers_of(official_3d(tiny_sam2_model()), MedSAHieraLayer)[block]
    tokens = torch.randn(4, grid, grid, layer.in_features, requires_grad=True)
    assert_compiled_layer_matches_eager(layer, tokens)


def test_two_way_layer_with_hyper_adapter_compiles_in_one_graph_and_matches_eager(sam):
    layer = layers_of(official_3d(sam), MedSATwoWayLayer)[1]
    # queries: 5 output tokens + 2 box corners; keys: the 8 x 8 image tokens
    queries, keys = torch.randn(2, 1, 7, 32, requires_grad=True), torch.randn(2, 1, 64, 32, requires_grad=True)
    query_pe, key_pe = torch.randn(2, 1, 7, 32), torch.randn(2, 1, 64, 32)
    adapters = [p for p in layer.parameters() if p.requires_grad]

    def keys_out(block):
        return lambda q, k: block(q, k, query_pe, key_pe)[1]

    expected, expected_grads = output_and_grads(keys_out(layer), [queries, keys], adapters)
    got, got_grads = output_and_grads(keys_out(torch.compile(layer, **COMPILE)), [queries, keys], adapters)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_compiled_layers_train_a_volume_with_checkpointing_without_recompiling(sam):
    """compile_sam_layers + activation checkpointing + depth: eager's gradients, and one graph per layer kind."""
    pixels, boxes = torch.randn(4, 3, 64, 64), torch.tensor([[[4.0, 6.0, 40.0, 50.0]]]).repeat(4, 1, 1)

    def adapter_grads(model):
        model.zero_grad()
        model(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks.square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    def graphs_so_far():
        return torch._dynamo.utils.counters["stats"]["unique_graphs"]

    eager = use_fused_attention(official_3d(sam))
    expected = adapter_grads(eager)
    compiled = compile_sam_layers(eager, backend="aot_eager")
    compiled.train()
    compiled.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    before = graphs_so_far()
    got = adapter_grads(compiled)
    after_first_call = graphs_so_far()
    adapter_grads(compiled)

    # a windowed and a global image-encoder layer, the prompt encoder and the mask decoder
    assert after_first_call - before == 4
    assert graphs_so_far() == after_first_call, "a second call recompiled"
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("whole_decoder", [True, False], ids=["whole-decoder", "two-way-blocks"])
def test_decoder_side_compiles_whole_or_block_by_block(sam, whole_decoder):
    """fullgraph: no graph break anywhere. Whole: the hypernetwork MLPs (outside the two-way blocks) are inside a
    graph; block by block: only the blocks' weights are."""
    graphs = []
    model = use_fused_attention(official_3d(sam))
    pixels, boxes = torch.randn(4, 3, 64, 64), torch.tensor([[[4.0, 6.0, 40.0, 50.0]]]).repeat(4, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks
    compile_sam_layers(model, whole_decoder=whole_decoder, backend=recording_backend(graphs), fullgraph=True)
    with torch.no_grad():
        got = model(pixel_values=pixels, depth=2, input_boxes=boxes).pred_masks

    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    graph_inputs = [{node.name for node in graph.nodes if node.op == "placeholder"} for graph in graphs]
    reads_hypernetworks = ["output_hypernetworks_mlps" in name for names in graph_inputs for name in names]
    reads_two_way_blocks = ["medsa_hyper_adapter" in name for names in graph_inputs for name in names]
    assert any(reads_hypernetworks) == whole_decoder
    assert any(reads_two_way_blocks)
    assert len(graph_inputs) == 4  # windowed layer, global layer, then prompt encoder + decoder or the two blocks


def test_compile_sam_layers_compiles_plain_sam_too(sam):
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = sam(pixel_values=pixels, multimask_output=False).pred_masks
        got = compile_sam_layers(sam, backend="aot_eager")(pixel_values=pixels, multimask_output=False).pred_masks
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_helpers_refuse_models_without_their_layers():
    with pytest.raises(ValueError, match="no Med-SA image-encoder layer"):
        use_fused_attention(tiny_sam_model())
    with pytest.raises(ValueError, match="no SAM image-encoder layer"):
        compile_sam_layers(torch.nn.Linear(2, 2))
