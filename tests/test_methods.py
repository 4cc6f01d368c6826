"""`--method medsa|lora|decoder|full`: what trains, what a run writes and how it loads; evaluation clicks fixed
apart from the training seed; benchmarks/compare_methods.py end to end."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image
from transformers import SamModel

import medsa_peft  # noqa: F401  (registers MEDSA for loading)
import helpers
from helpers import tiny_sam_model
from medsa_peft.cli import main
from medsa_peft.data.preprocess import SamFrame, frame_coordinates, frame_images, sam_logits_to_original
from medsa_peft.evaluation import scoring
from medsa_peft.inference import MedSAPredictor, SlicePrompt
from medsa_peft.training import MedSATrainingArguments, train
from medsa_peft.training.methods import count_trainable, trainable_model, trains_unused_parameters


def quick_training(tiny_sam_dir, dataset_cache, output_dir, **overrides) -> MedSATrainingArguments:
    """Two steps in this process, scored on two cases."""
    return helpers.quick_training(
        tiny_sam_dir, dataset_cache, output_dir, **{"max_steps": 2, "max_eval_cases": 2, "num_workers": 0, **overrides}
    )


def changed(first: dict, second: dict, prefix: str) -> bool:
    return any(not torch.equal(first[name], second[name]) for name in first if name.startswith(prefix))


@pytest.mark.parametrize(
    "method, folder, files",
    [
        ("medsa", "adapter", ["README.md", "adapter_config.json", "adapter_model.safetensors"]),
        ("lora", "adapter", ["README.md", "adapter_config.json", "adapter_model.safetensors"]),
        ("decoder", "model", ["README.md", "config.json", "model.safetensors"]),
        ("full", "model", ["README.md", "config.json", "model.safetensors"]),
    ],
)
def test_each_method_trains_through_the_loop_and_writes_what_loads(
    tiny_sam_dir, dataset_cache, tmp_path, method, folder, files
):
    args = quick_training(tiny_sam_dir, dataset_cache, tmp_path, method=method)
    metrics = train(args)
    saved = tmp_path / folder
    assert sorted(path.name for path in saved.iterdir()) == files
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written == metrics and metrics["method"] == method and metrics["steps"] == 2
    assert metrics["trainable_parameters"] == count_trainable(trainable_model(tiny_sam_model(), args))

    base = SamModel.from_pretrained(tiny_sam_dir).state_dict()
    if folder == "adapter":
        model = PeftModel.from_pretrained(SamModel.from_pretrained(tiny_sam_dir), saved)
        assert model.peft_config["default"].peft_type == method.upper()
        assert model.peft_config["default"].base_model_name_or_path == ""  # a local base: no path of this machine
        loaded = model.get_base_model().state_dict()
        trained = {name: tensor for name, tensor in loaded.items() if re.search(r"\.(medsa|lora)_", name)}
        assert trained and any(tensor.abs().sum() > 0 for tensor in trained.values())  # zero-init halves moved
    else:
        loaded = SamModel.from_pretrained(saved).state_dict()
        assert changed(base, loaded, "mask_decoder.")
        assert changed(base, loaded, "vision_encoder.") == (method == "full")
    card = (saved / "README.md").read_text()
    assert "| white_matter |" in card and tiny_sam_dir not in card
    assert ("library_name: peft" in card) == ("PeftModel.from_pretrained" in card) == (folder == "adapter")


def test_trainable_counts_are_what_each_method_trains(tiny_sam_dir):
    sam = tiny_sam_model()
    every = sum(param.numel() for param in sam.parameters())
    decoder = sum(param.numel() for param in sam.mask_decoder.parameters())
    qkv = [module for name, module in sam.named_modules() if re.fullmatch(r".*encoder\.layers\.\d+\.attn\.qkv", name)]
    assert len(qkv) == sam.config.vision_config.num_hidden_layers

    def count(**options) -> int:
        return count_trainable(trainable_model(tiny_sam_model(), MedSATrainingArguments(**options)))

    for rank in (1, 4):
        lora = rank * sum(linear.in_features + linear.out_features for linear in qkv)
        assert count(method="lora", lora_rank=rank) == lora
        assert count(method="lora", lora_rank=rank, lora_modules_to_save="mask_decoder") == lora + decoder
    assert count(method="decoder") == decoder
    assert count(method="full") == every
    medsa, without_hyper = count(method="medsa"), count(method="medsa", hyper_adapter=False)
    assert 0 < without_hyper < medsa
    frozen_hyper = trainable_model(tiny_sam_model(), MedSATrainingArguments(hyper_adapter=False))
    assert not any("hyper" in name for name, param in frozen_hyper.named_parameters() if param.requires_grad)


@pytest.mark.parametrize(
    "options, unused",
    [
        (dict(), False),
        (dict(method="lora"), False),
        (dict(method="lora", lora_modules_to_save="mask_decoder"), True),
        (dict(official=True), True),
        (dict(method="decoder"), True),
        (dict(method="full"), True),
    ],
)
def test_ddp_looks_for_unused_parameters_when_sam_modules_train_whole(options, unused):
    """The mask loss leaves the decoder's IoU head without a gradient: DDP would stop at the second step."""
    assert trains_unused_parameters(MedSATrainingArguments(**options)) is unused


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="prefix"), "--method must be one of medsa, lora, decoder, full"),
        (dict(method="lora", volume_depth=4), "--volume_depth above 1 needs --method medsa"),
        (dict(method="lora", lora_rank=0), "--lora_rank must be at least 1"),
    ],
)
def test_bad_method_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MedSATrainingArguments(**options)


def test_lora_targets_that_match_nothing_are_named():
    args = MedSATrainingArguments(method="lora", lora_target_modules=r".*no_such_layer")
    with pytest.raises(ValueError, match=r"--lora_target_modules \.\*no_such_layer: "):
        trainable_model(tiny_sam_model(), args)


def test_evaluation_clicks_follow_eval_seed_not_the_training_seed(tiny_sam_dir, dataset_cache, tmp_path, monkeypatch):
    seen = []
    real_cases = scoring.evaluation_cases

    def recording_cases(*args, **kwargs):
        for case in real_cases(*args, **kwargs):
            seen[-1].append((case.id, case.class_name, repr(case.prompts)))
            yield case

    monkeypatch.setattr(scoring, "evaluation_cases", recording_cases)
    runs = {}
    for seed, eval_seed in ((0, 0), (1, 0), (0, 1)):
        seen.append([])
        args = quick_training(
            tiny_sam_dir, dataset_cache, tmp_path / f"{seed}-{eval_seed}", max_steps=1, seed=seed, eval_seed=eval_seed
        )
        runs[seed, eval_seed] = (train(args), seen[-1])
    (first, first_cases), (other_seed, other_seed_cases), (_, other_clicks) = runs.values()
    assert first_cases and first_cases == other_seed_cases  # the same cases and clicks, before and after training
    assert first["before"] == other_seed["before"]  # the same SAM scored on the same clicks
    assert [case[:2] for case in other_clicks] == [case[:2] for case in first_cases] and other_clicks != first_cases


def test_comparison_runs_end_to_end_and_writes_the_table_with_the_reference(
    compare_methods, tiny_sam_dir, dataset_cache, tmp_path
):
    output = tmp_path / "compare"
    options = ["--model", tiny_sam_dir, "--cache_dir", dataset_cache, "--max_steps", "2", "--max_eval_cases", "2"]
    options += ["--eval_every", "0", "--checkpointing_steps", "0", "--report_to", "none", "--num_workers", "0"]
    options += ["--classes", '{"grey_matter": [1], "white_matter": [2]}']  # both tissues: a column per class
    entries = ["--methods", "lora --lora_rank 2", "--seeds", "3", "--output_dir", str(output)]
    report = compare_methods.main([*entries, "--in_process", *options])
    assert (output / "lora_lora_rank_2" / "seed-3" / "adapter" / "adapter_model.safetensors").exists()
    lines = (output / "comparison.md").read_text().splitlines()
    assert lines[0].startswith("| variant | trainable | Dice | Dice grey_matter | Dice white_matter | IoU |")
    assert lines[0].endswith("| time (s) | peak RSS MiB |")
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| untrained",
        "| lora --lora_rank 2",
        "| no model: all labelled voxels",
    ]
    written = json.loads((output / "comparison.json").read_text())
    assert written == json.loads(json.dumps(report)) and written["seeds"] == [3]
    (run,) = written["runs"]
    untrained, lora, reference = written["rows"]
    lora_args = MedSATrainingArguments(method="lora", lora_rank=2)
    assert lora["trainable"] == count_trainable(trainable_model(tiny_sam_model(), lora_args))
    assert lora["metrics"]["dice"] == {"mean": run["after"]["dice"], "sd": 0.0, "n": 1}
    assert untrained["metrics"]["dice"]["mean"] == run["before"]["dice"] and untrained["trainable"] == 0
    assert lora["seconds"]["mean"] > 0 and lora["peak_memory_mib"]["mean"] > 0
    assert 0 < reference["metrics"]["dice/grey_matter"]["mean"] < 1 and reference["trainable"] is None
    assert str(tmp_path) not in (output / "comparison.json").read_text()  # no path of this machine

    adapter = output / "lora_lora_rank_2" / "seed-3" / "adapter" / "adapter_model.safetensors"
    written_at = adapter.stat().st_mtime_ns
    again = compare_methods.main([*entries, *options])
    assert again == report and adapter.stat().st_mtime_ns == written_at  # same options: the run is reused


def test_the_table_has_a_column_per_class_only_for_two_classes_or_more(compare_methods):
    assert compare_methods.metric_keys(["white_matter"]) == ["dice", "iou", "hd95"]
    assert compare_methods.metric_keys(["disc", "cup"]) == [
        "dice", "dice/disc", "dice/cup", "iou", "iou/disc", "iou/cup", "hd95", "hd95/disc", "hd95/cup"
    ]


def test_the_reference_predicts_every_labelled_voxel_and_is_left_out_where_that_is_the_truth(
    compare_methods, dataset_cache
):
    def reference(classes: str | None):
        return compare_methods.labelled_reference(MedSATrainingArguments(cache_dir=dataset_cache, classes=classes))

    scores = reference('{"grey_matter": [1], "tissue": [1, 2]}')
    assert (scores["dice/tissue"], scores["iou/tissue"], scores["hd95/tissue"]) == (1.0, 1.0, 0.0)
    assert 0 < scores["dice/grey_matter"] < 1
    demo = reference(None)  # the demo's white matter, against all tissue: grey matter is labelled, not a class
    assert demo == reference('{"white_matter": [2]}') and 0 < demo["dice/white_matter"] < 1
    assert reference('{"tissue": [1, 2]}') is None


def write_picture(path: Path, height=20, width=24) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3)).astype(np.uint8)).save(path)
    return path


def predict(path: Path, output: Path, *model: str) -> np.ndarray:
    """`medsa-peft predict` on a picture with a box, given `--adapter ... --model ...` as `model`; the written mask."""
    status = main(["predict", *model, "--input", str(path), "--box", "2,3,18,15", "--output", str(output)])
    assert status == 0
    return np.asarray(Image.open(output)) > 0


def test_a_lora_run_predicts_as_its_peft_model_computes(tiny_sam_dir, dataset_cache, tmp_path):
    train(quick_training(tiny_sam_dir, dataset_cache, tmp_path, method="lora"))
    adapter = tmp_path / "adapter"
    predictor = MedSAPredictor.from_pretrained(adapter, tiny_sam_dir, progress=False)
    assert not predictor.has_depth and predictor.frame == SamFrame(64, 32)

    slices = np.random.default_rng(0).random((2, 20, 24), dtype=np.float32)
    boxes = np.array([[2, 3, 18, 15], [4, 2, 20, 17]], np.float32)
    masks = predictor.predict_masks(slices, [SlicePrompt(box=tuple(box)) for box in boxes])

    @torch.no_grad()
    def forward(model) -> torch.Tensor:
        framed = torch.from_numpy(frame_coordinates(boxes, (20, 24), 64))[:, None]
        return model(pixel_values=frame_images(slices, 64), input_boxes=framed, multimask_output=False).pred_masks[:, 0]

    lora = PeftModel.from_pretrained(SamModel.from_pretrained(tiny_sam_dir), adapter).eval()
    expected = forward(lora)
    torch.testing.assert_close(masks.low_res, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, forward(SamModel.from_pretrained(tiny_sam_dir).eval()))  # LoRA moved
    torch.testing.assert_close(masks.logits[:, 0], sam_logits_to_original(expected[:, 0], (20, 24), 64))

    picture = write_picture(tmp_path / "picture.png")
    mask = predict(picture, tmp_path / "mask.png", "--adapter", str(adapter), "--model", tiny_sam_dir)
    expected = predictor.predict_file(picture, SlicePrompt(box=(2, 3, 18, 15))).mask
    assert mask.shape == (20, 24) and np.array_equal(mask, expected)


def test_a_whole_model_run_predicts_as_model_without_an_adapter(tiny_sam_dir, dataset_cache, tmp_path):
    train(quick_training(tiny_sam_dir, dataset_cache, tmp_path, method="decoder"))
    predictor = MedSAPredictor.from_pretrained(None, tmp_path / "model", progress=False)
    assert not predictor.has_depth and predictor.frame == SamFrame(64, 32)

    slices = np.random.default_rng(0).random((1, 20, 24), dtype=np.float32)
    low_res = predictor.predict_masks(slices, [SlicePrompt(box=(2, 3, 18, 15))]).low_res
    tuned = SamModel.from_pretrained(tmp_path / "model").eval()
    box = torch.from_numpy(frame_coordinates(np.array([[2, 3, 18, 15]], np.float32), (20, 24), 64))[:, None]
    with torch.no_grad():
        expected = tuned(pixel_values=frame_images(slices, 64), input_boxes=box, multimask_output=False).pred_masks
    torch.testing.assert_close(low_res, expected[:, 0], rtol=0, atol=1e-5)

    picture = write_picture(tmp_path / "picture.png")
    mask = predict(picture, tmp_path / "mask.png", "--model", str(tmp_path / "model"))
    assert mask.shape == (20, 24)
    assert np.array_equal(mask, predictor.predict_file(picture, SlicePrompt(box=(2, 3, 18, 15))).mask)
    assert main(["predict", "--input", str(picture), "--box", "2,3,18,15", "--output", str(tmp_path / "x.png")]) == 1
