"""Interactive segmentation: SAM's candidate masks and their IoU, masks fed back, correction clicks, the image-embedding
cache, the interactive session, `predict --multimask` and the evaluation with 1, 3 and 5 clicks."""

import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from peft import get_peft_model
from PIL import Image
from test_inference import SIZE, medsa_model, random_slices, save_nifti, saved_model

from medsa_peft import MedSAConfig
from medsa_peft.cli import main
from medsa_peft.data.preprocess import SamFrame, frame_coordinates, frame_images, sam_logits_to_original
from medsa_peft.data.prompts import PromptSpec, correction_click
from medsa_peft.evaluation.scoring import evaluate_interactive, evaluate_model
from medsa_peft.inference import MedSAPredictor, PromptError, SlicePrompt
from medsa_peft.io import read_image
from helpers import randomize_adapters, run_python

CLICKS = [SlicePrompt(points=[(5, 6), (15, 12)], labels=[1, 0])] * 3


class CallCounter:
    """Counts the forward calls of a module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, module, args, output):
        self.calls += 1


def encoder_calls(model) -> CallCounter:
    return CallCounter(model.get_base_model().vision_encoder)


@torch.no_grad()
def sam_answer(model, slices, points, labels, multimask, input_masks=None):
    """pred_masks (N, M, s, s) and iou_scores (N, M) of one plain call of `model` on 2D slices, written out by hand."""
    framed = frame_coordinates(np.array(points, np.float32), slices.shape[1:3], SIZE)
    extra = {} if input_masks is None else {"input_masks": input_masks[:, None]}
    out = model(
        pixel_values=frame_images(slices, SIZE),
        input_points=torch.from_numpy(framed)[None, None].expand(len(slices), 1, -1, -1),
        input_labels=torch.tensor(labels)[None, None].expand(len(slices), 1, -1),
        multimask_output=multimask,
        **extra,
    )
    return out.pred_masks[:, 0], out.iou_scores[:, 0]


# multimask output


def test_multimask_gives_three_candidates_with_their_iou_and_best_picks_the_highest(sam):
    model = medsa_model(sam, depth_adapter=False)
    slices = random_slices(depth=3)
    masks = MedSAPredictor(model, progress=False).predict_masks(slices, [CLICKS[0], None, CLICKS[0]], multimask=True)
    assert masks.logits.shape == (3, 3, 20, 24) and masks.iou_scores.shape == (3, 3)
    assert masks.low_res.shape == (3, 3, 32, 32)  # the tiny SAM's mask frame: 4 x its 8 x 8 tokens
    assert torch.isnan(masks.iou_scores[1]).all() and torch.all(masks.logits[1] == float("-inf"))

    expected_masks, expected_iou = sam_answer(model, slices[[0, 2]], CLICKS[0].points, CLICKS[0].labels, True)
    torch.testing.assert_close(masks.low_res[[0, 2]], expected_masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masks.iou_scores[[0, 2]], expected_iou, rtol=1e-5, atol=1e-5)
    upsampled = sam_logits_to_original(expected_masks[0], (20, 24), SIZE)
    torch.testing.assert_close(masks.logits[0], upsampled, rtol=1e-5, atol=1e-4)

    best = masks.best()
    index = expected_iou.argmax(dim=1)
    assert best.logits.shape == (3, 1, 20, 24) and torch.equal(masks.best_index[[0, 2]], index)
    torch.testing.assert_close(best.logits[[0, 2], 0], masks.logits[[0, 2], index])
    torch.testing.assert_close(best.iou_scores[[0, 2], 0], expected_iou.max(dim=1).values, rtol=1e-5, atol=1e-5)


def test_the_single_mask_stays_the_default(sam):
    model = medsa_model(sam, depth_adapter=False)
    slices = random_slices(depth=2)
    predictor = MedSAPredictor(model, progress=False)
    masks = predictor.predict_masks(slices, CLICKS[:2])
    assert masks.logits.shape == (2, 1, 20, 24) and masks.iou_scores.shape == (2, 1)
    expected_masks, expected_iou = sam_answer(model, slices, CLICKS[0].points, CLICKS[0].labels, False)
    torch.testing.assert_close(masks.low_res[:, 0], expected_masks[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masks.iou_scores, expected_iou, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predictor.predict_logits(slices, CLICKS[:2]), masks.logits[:, 0])


def test_a_picture_with_multimask_keeps_the_best_candidate_and_its_scores(sam, tmp_path):
    model = medsa_model(sam, depth_adapter=False)
    path = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)).save(path)
    predictor = MedSAPredictor(model, progress=False)
    prediction = predictor.predict_file(path, CLICKS[0], multimask=True)

    image = read_image(path)
    masks = predictor.predict_masks(np.asarray(image.array, np.float32)[None] / 255, [CLICKS[0]], multimask=True)
    best = int(masks.best_index[0])
    np.testing.assert_array_equal(prediction.mask, masks.logits[0, best].numpy() > 0)
    np.testing.assert_allclose(prediction.iou_scores, masks.iou_scores.numpy())
    assert prediction.scores() == [
        {"slice": 0, "iou_scores": [round(float(s), 6) for s in masks.iou_scores[0]], "best": best}
    ]
    torch.testing.assert_close(prediction.low_res, masks.low_res[:, best])


# input_masks


def test_input_masks_go_to_sams_prompt_encoder_and_change_the_answer(sam):
    model = medsa_model(sam, depth_adapter=False)
    slices = random_slices(depth=2)
    predictor = MedSAPredictor(model, progress=False)
    first = predictor.predict_masks(slices, CLICKS[:2])
    again = predictor.predict_masks(slices, CLICKS[:2], input_masks=first.low_res[:, 0])
    assert not torch.allclose(again.low_res, first.low_res)
    expected, _ = sam_answer(model, slices, CLICKS[0].points, CLICKS[0].labels, False, first.low_res[:, 0])
    torch.testing.assert_close(again.low_res[:, 0], expected[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 32), (1, 32, 32), (2, 64, 64), (2, 1, 32, 32)])
def test_input_masks_of_another_shape_are_refused(sam, shape):
    predictor = MedSAPredictor(medsa_model(sam, depth_adapter=False), progress=False)
    with pytest.raises(ValueError, match=r"input_masks must be \(D, s, s\) = \(2, 32, 32\)"):
        predictor.predict_masks(random_slices(depth=2), CLICKS[:2], input_masks=torch.zeros(shape))


# correction clicks


def rectangle(shape=(30, 40), top=5, left=8, height=12, width=20) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_a_missed_region_gets_a_positive_click_at_its_centre():
    truth = rectangle()
    prediction = truth.copy()
    prediction[5:17, 8:18] = False  # the left half missed: columns 8-17, rows 5-16
    prediction[0:2, 30:32] = True  # a smaller false positive
    point, label = correction_click(prediction, truth, np.random.default_rng(0))
    x, y = int(point[0]), int(point[1])
    assert label == 1 and truth[y, x] and not prediction[y, x]
    assert 10 <= x <= 15 and 8 <= y <= 13  # as far as possible (5 pixels) from the region's edges


def test_a_false_positive_gets_a_negative_click_inside_it_and_the_image_edge_is_a_boundary():
    truth = rectangle()
    prediction = truth.copy()
    prediction[20:30, 0:40] = True  # a band along the bottom edge, rows 20-29
    point, label = correction_click(prediction, truth, np.random.default_rng(0))
    x, y = int(point[0]), int(point[1])
    assert label == 0 and prediction[y, x] and not truth[y, x]
    assert y in (24, 25) and 4 <= x <= 35


def test_correction_clicks_are_deterministic_under_a_seed_and_none_when_exact():
    truth = rectangle()
    prediction = np.zeros_like(truth)
    for uniform in (False, True):
        clicks = [correction_click(prediction, truth, np.random.default_rng(seed), uniform=uniform) for seed in (3, 3)]
        np.testing.assert_array_equal(clicks[0][0], clicks[1][0])
        assert all(label == 1 and truth[int(point[1]), int(point[0])] for point, label in clicks)
    draws = [correction_click(prediction, truth, np.random.default_rng(seed), uniform=True) for seed in range(5)]
    drawn = {tuple(point) for point, _ in draws}
    assert len(drawn) > 1  # uniform draws spread over the region
    assert correction_click(truth, truth, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="one shape"):
        correction_click(truth, truth[:10], np.random.default_rng(0))


# the image-embedding cache


@pytest.mark.parametrize("depth_adapter", [False, True])
def test_the_cache_gives_the_uncached_masks_and_a_second_prompt_runs_no_encoder(sam, depth_adapter):
    model = medsa_model(sam, depth_adapter=depth_adapter)
    slices = random_slices(depth=6)
    box_prompts = [SlicePrompt(box=(2, 3, 18, 15))] * 6
    uncached = MedSAPredictor(model, chunk_depth=4, overlap=2, embedding_cache=0, progress=False)
    cached = MedSAPredictor(model, chunk_depth=4, overlap=2, progress=False)
    encoder = encoder_calls(model)
    decoder = CallCounter(model.get_base_model().mask_decoder)

    expected = [uncached.predict_masks(slices, prompts) for prompts in (box_prompts, CLICKS * 2)]
    assert encoder.calls == 2  # one pass each: the chunks [0, 4) and [2, 6), or the 6 slices
    encoder.calls = 0
    first = cached.predict_masks(slices, box_prompts)
    assert encoder.calls == 1
    encoder.calls = decoder.calls = 0
    second = cached.predict_masks(slices, CLICKS * 2)  # another prompt on the same slices
    assert encoder.calls == 0 and decoder.calls == 1
    for got, want in zip((first, second), expected):
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got.iou_scores, want.iou_scores, rtol=1e-5, atol=1e-5)


def test_the_cache_follows_the_model_state_and_the_slices_content(sam):
    model = medsa_model(sam, depth_adapter=False)
    slices = random_slices(depth=1)
    predictor = MedSAPredictor(model, progress=False)
    encoder = encoder_calls(model)
    adapted = predictor.predict_logits(slices, CLICKS[:1])
    with model.disable_adapter():  # SAM alone: other embeddings
        plain = predictor.predict_logits(slices, CLICKS[:1])
        assert encoder.calls == 2
        uncached = MedSAPredictor(model, embedding_cache=0, progress=False)
        torch.testing.assert_close(plain, uncached.predict_logits(slices, CLICKS[:1]))
    encoder.calls = 0
    torch.testing.assert_close(predictor.predict_logits(slices, CLICKS[:1]), adapted)
    assert encoder.calls == 1  # the adapter's entry was dropped when the state changed
    with torch.no_grad():  # an optimiser step writes the weights in place
        next(p for n, p in model.named_parameters() if "vision_encoder" in n and "medsa_" in n).add_(0.1)
    predictor.predict_logits(slices, CLICKS[:1])
    predictor.predict_logits(slices + 0.01, CLICKS[:1])  # another picture
    assert encoder.calls == 3
    predictor.clear_embedding_cache()
    predictor.predict_logits(slices, CLICKS[:1])
    assert encoder.calls == 4


@pytest.mark.parametrize(
    "config",
    [
        MedSAConfig(),
        MedSAConfig(depth_adapter=True),
        MedSAConfig.official(),
        MedSAConfig(space_adapter=False, mlp_adapter=False),
        MedSAConfig(init="official", activation="relu"),
    ],
    ids=["default", "depth", "official", "decoder-only", "relu"],
)
def test_no_adapter_configuration_lets_the_prompt_reach_the_image_encoder(sam, config):
    """The cache is valid because the embeddings do not depend on the prompt: HyP-Adpt, the one adapter that reads
    the prompt, sits in the mask decoder. A configuration that changed that would fail here."""
    model = randomize_adapters(get_peft_model(sam, config))
    captured = []
    encoder = model.get_base_model().vision_encoder
    encoder.register_forward_hook(lambda module, args, output: captured.append(output.last_hidden_state))
    slices = random_slices(depth=2)
    depth = {"depth": 2} if config.depth_adapter else {}
    with torch.no_grad():
        for points, labels in (([[3.0, 4.0]], [1]), ([[50.0, 20.0], [9.0, 9.0]], [0, 1])):
            answer = model(
                pixel_values=frame_images(slices, SIZE),
                input_points=torch.tensor([[points]] * 2),
                input_labels=torch.tensor([[labels]] * 2),
                multimask_output=False,
                **depth,
            )
            assert answer.pred_masks.shape[0] == 2
    assert torch.equal(captured[0], captured[1])


def test_a_module_that_is_not_sam_runs_whole_every_time(sam):
    """A wrapped model (DDP, a stand-in) has no vision encoder the predictor can read: it bypasses the cache."""

    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, **inputs):
            return self.inner(**inputs)

    model = medsa_model(sam, depth_adapter=False)
    slices = random_slices(depth=1)
    expected = MedSAPredictor(model, progress=False).predict_logits(slices, CLICKS[:1])
    frame = SamFrame.from_config(sam.config)
    wrapped = MedSAPredictor(Wrapper(model), frame=frame, depth_adapter=False, progress=False)
    encoder = encoder_calls(model)
    for _ in range(2):
        torch.testing.assert_close(wrapped.predict_logits(slices, CLICKS[:1]), expected, rtol=1e-5, atol=1e-5)
    assert encoder.calls == 2


# the interactive session


def test_a_session_feeds_each_click_back_with_the_previous_logits_and_encodes_once(sam, tmp_path):
    model = medsa_model(sam, depth_adapter=False)
    path = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)).save(path)
    predictor = MedSAPredictor(model, progress=False)
    encoder = encoder_calls(model)
    session = predictor.session(path)
    first = session.click(12, 9)
    second = session.click(30, 20, label=0)
    assert encoder.calls == 1
    assert session.prompts == {0: SlicePrompt(points=[(12, 9), (30, 20)], labels=[1, 0])}

    slices = np.asarray(read_image(path).array, np.float32)[None] / 255
    expected_first = predictor.predict_masks(slices, [SlicePrompt(points=[(12, 9)])])
    expected = predictor.predict_masks(slices, session.prompts.values(), input_masks=expected_first.low_res[:, 0])
    np.testing.assert_array_equal(first.mask, expected_first.logits[0, 0].numpy() > 0)
    np.testing.assert_array_equal(second.mask, expected.logits[0, 0].numpy() > 0)
    np.testing.assert_allclose(second.iou_scores, expected.iou_scores.numpy())

    undone = session.undo()
    np.testing.assert_array_equal(undone.mask, first.mask)
    torch.testing.assert_close(undone.low_res, first.low_res)
    session.undo()
    assert session.prompts == {} and not session.prediction().mask.any()
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def test_a_session_on_a_volume_segments_the_clicked_slice_of_the_file(sam, tmp_path):
    model = medsa_model(sam, depth_adapter=True)
    affine = np.diag([-0.8, 0.8, -2.0, 1.0])  # rows and slices run opposite to RAS: the model sees them flipped
    source = save_nifti(tmp_path / "mr.nii.gz", np.random.default_rng(0).normal(100, 30, (20, 24, 6)), affine)
    predictor = MedSAPredictor(model, chunk_depth=4, overlap=2, progress=False)
    session = predictor.session(source, modality="mri")
    boxed = session.box(3, 4, 18, 15, z=1)
    prediction = session.click(10, 9, z=1)

    prompts = [None] * 6
    prompts[1] = SlicePrompt(box=(3, 4, 18, 15))
    np.testing.assert_array_equal(boxed.mask, predictor.predict_file(source, prompts, modality="mri").mask)
    prompts[1] = session.prompts[1]
    expected = predictor.predict_file(source, prompts, modality="mri", input_masks=boxed.low_res)
    np.testing.assert_array_equal(prediction.mask, expected.mask)
    assert prediction.mask[:, :, 1].any() and not prediction.mask[:, :, [0, 2, 3, 4, 5]].any()
    np.testing.assert_allclose(prediction.iou_scores, expected.iou_scores)  # rows: the file's slices
    assert np.isfinite(prediction.iou_scores[1]).all() and np.isnan(prediction.iou_scores[[0, 2, 3, 4, 5]]).all()
    with pytest.raises(PromptError, match="slice z = 6 is not one of its 6 slices"):
        session.click(1, 1, z=6)


# the command line


def test_predict_multimask_writes_the_best_mask_and_its_scores(sam, tmp_path, capsys):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    picture = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(picture)
    common = ["predict", "--adapter", str(adapter_dir), "--model", str(sam_dir), "--input", str(picture)]
    clicks = ["--point", "12,9", "--point", "30,20,0"]
    assert main([*common, *clicks, "--multimask", "--output", str(tmp_path / "lesion_mask.png")]) == 0
    scores = json.loads((tmp_path / "lesion_mask_scores.json").read_text())
    (row,) = scores["slices"]
    assert row["slice"] == 0 and len(row["iou_scores"]) == 3 and row["best"] == int(np.argmax(row["iou_scores"]))
    assert "lesion_mask_scores.json" in capsys.readouterr().out

    predictor = MedSAPredictor.from_pretrained(adapter_dir, sam_dir, progress=False)
    expected = predictor.predict_file(picture, SlicePrompt(points=[(12, 9), (30, 20)], labels=[1, 0]), multimask=True)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "lesion_mask.png")) > 0, expected.mask)
    assert main([*common, *clicks, "--output", str(tmp_path / "single.png")]) == 0
    assert not (tmp_path / "single_scores.json").exists()


# evaluation with correction clicks


def square_split(count=3, size=(28, 36)) -> datasets.Dataset:
    """2D pictures of one bright rectangle each, labelled 1."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for index in range(count):
        label = np.zeros(size, np.uint8)
        label[4 + index : 20 + index, 6 : 26 - index] = 1
        images.append(Image.fromarray((np.where(label > 0, 200, 40) + rng.integers(0, 30, size)).astype(np.uint8)))
        labels.append(Image.fromarray(label))
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"id": [f"s{index}" for index in range(count)], "image": images, "label": labels}, features=features
    )


class ClickOracle(torch.nn.Module):
    """Answers clicks in SAM's mask grid: a square of +10 around each positive click, -10 around each negative one,
    later clicks painted over earlier ones, -10 elsewhere; it reads neither pixels nor input_masks."""

    def __init__(self, frame: SamFrame, radius: float):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.frame, self.radius = frame, radius

    def forward(self, pixel_values, input_points, input_labels, multimask_output, input_masks=None):
        centres = (torch.arange(self.frame.mask_size) + 0.5) * self.frame.image_size / self.frame.mask_size
        logits = torch.full((len(pixel_values), self.frame.mask_size, self.frame.mask_size), -10.0)
        for slice_index, (points, labels) in enumerate(zip(input_points[:, 0], input_labels[:, 0])):
            for (x, y), label in zip(points, labels):
                near = ((centres[None, :] - x).abs() <= self.radius) & ((centres[:, None] - y).abs() <= self.radius)
                logits[slice_index][near] = 10.0 if label == 1 else -10.0
        return SimpleNamespace(pred_masks=logits[:, None, None])


def test_interactive_evaluation_starts_with_the_click_evaluation_and_rises_with_clicks(sam):
    split, classes, frame = square_split(), {"square": (1,)}, SamFrame(64, 64)
    oracle = ClickOracle(frame, radius=7.0)
    evaluations = evaluate_interactive(oracle, split, classes, "photo", frame, clicks=(1, 3, 5))
    assert list(evaluations) == [1, 3, 5] and evaluations[1].overlay is None
    one_click = evaluate_model(oracle, split, classes, "photo", frame, PromptSpec("points", num_positive=1))
    assert evaluations[1].summary["dice"] == pytest.approx(one_click.summary["dice"])
    dice = [evaluations[count].summary["dice"] for count in (1, 3, 5)]
    assert dice[0] < dice[1] < dice[2]

    model = medsa_model(sam, depth_adapter=False)  # a real model runs through the cache: encoder once per image
    encoder = encoder_calls(model)
    real = evaluate_interactive(model, split, classes, "photo", SamFrame.from_config(sam.config), clicks=(1, 2))
    assert encoder.calls == 3 and set(real) == {1, 2}
    with pytest.raises(ValueError, match="clicks must be counts of 1 or more"):
        evaluate_interactive(model, split, classes, "photo", frame, clicks=(0, 2))


@pytest.mark.parametrize(
    "classes, columns",
    [(None, ["white_matter"]), ('{"grey_matter": [1], "white_matter": [2]}', ["grey_matter", "white_matter"])],
)
def test_evaluate_clicks_scores_the_demo_class_or_the_classes_asked_for(sam, tmp_path, classes, columns):
    sam_dir, adapter_dir = saved_model(sam, tmp_path, depth_adapter=False)
    options = ["--adapter", str(adapter_dir), "--model", str(sam_dir), "--clicks", "1", "2", "--max_cases", "2"]
    options += ["--classes", classes] if classes else []
    result = run_python(
        f"""
        import sys, runpy
        sys.argv = ["evaluate_clicks.py", *{options!r}]
        runpy.run_path("scripts/evaluate_clicks.py", run_name="__main__")
        """
    )
    header, _, *rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert header == "| model | clicks | " + " | ".join(columns) + " | mean |"
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| SAM (adapter off)", "1"], ["| SAM (adapter off)", "2"], ["| SAM + MEDSA adapter", "1"],
        ["| SAM + MEDSA adapter", "2"],
    ]
