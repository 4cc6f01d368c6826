"""Dice, IoU, HD95 (mm): agreement with MONAI, the empty cases, aggregation, the evaluate.Metric."""

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU
from scipy import ndimage

from medsa_peft.evaluation.metrics import (
    MaskScores,
    SegmentationMetrics,
    dice,
    hd95,
    iou,
    mask_scores,
    summarize,
    volume_scores,
)


def random_blobs(shape, seed, threshold=0.55):
    """A bool mask of smooth random blobs, so surfaces and distances are not trivial."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), sigma=2)
    return noise > np.quantile(noise, threshold)


def monai_scores(prediction, truth, spacing):
    as_batch = lambda mask: torch.from_numpy(mask)[None, None].float()  # noqa: E731
    pair = (as_batch(prediction), as_batch(truth))
    hausdorff_95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    return (
        DiceMetric(include_background=True, reduction="none")(*pair).item(),
        MeanIoU(include_background=True, reduction="none")(*pair).item(),
        hausdorff_95(*pair, spacing=spacing).item(),
    )


@pytest.mark.parametrize(
    "shape, spacing",
    [((40, 48), [1.0, 1.0]), ((40, 48), [0.5, 1.7]), ((12, 24, 28), [1.0, 1.0, 1.0]), ((12, 24, 28), [3.0, 0.7, 0.9])],
)
def test_agrees_with_monai_on_random_masks(shape, spacing):
    for seed in range(3):
        prediction, truth = random_blobs(shape, seed), random_blobs(shape, seed + 100)
        expected_dice, expected_iou, expected_hd95 = monai_scores(prediction, truth, spacing)
        assert dice(prediction, truth) == pytest.approx(expected_dice, rel=1e-6)
        assert iou(prediction, truth) == pytest.approx(expected_iou, rel=1e-6)
        assert hd95(prediction, truth, spacing) == pytest.approx(expected_hd95, rel=1e-5)
        assert hd95(prediction, truth, spacing) > 0


def test_hd95_is_in_millimetres_along_each_array_axis():
    prediction = np.zeros((5, 4, 4), bool)
    truth = np.zeros((5, 4, 4), bool)
    prediction[0, 1, 1] = True
    truth[2, 1, 1] = True  # two voxels apart along axis 0
    assert hd95(prediction, truth) == pytest.approx(2.0)
    assert hd95(prediction, truth, spacing=(3.0, 0.5, 0.5)) == pytest.approx(6.0)
    assert hd95(prediction, truth, spacing=(0.5, 3.0, 3.0)) == pytest.approx(1.0)


def test_dice_and_iou_by_hand():
    prediction = np.array([[1, 1, 0, 0]], np.uint8)
    truth = np.array([[0, 1, 1, 1]], np.uint8)
    assert dice(prediction, truth) == pytest.approx(2 * 1 / (2 + 3))
    assert iou(prediction, truth) == pytest.approx(1 / 4)


def test_accepts_torch_tensors_and_rejects_bad_masks():
    prediction, truth = random_blobs((20, 20), 0), random_blobs((20, 20), 1)
    assert dice(torch.from_numpy(prediction), torch.from_numpy(truth).long()) == pytest.approx(dice(prediction, truth))
    with pytest.raises(ValueError, match="only 0 and 1"):
        dice(prediction * 0.7, truth)
    with pytest.raises(ValueError, match="differ in shape"):
        iou(prediction[:-1], truth)
    with pytest.raises(ValueError, match="2D or 3D"):
        dice(prediction[0], truth[0])
    with pytest.raises(ValueError, match="spacing must hold 2"):
        hd95(prediction, truth, spacing=[1.0, 1.0, 1.0])


def test_empty_cases_are_defined_and_flagged():
    empty = np.zeros((10, 10), bool)
    square = np.zeros((10, 10), bool)
    square[2:5, 2:5] = True
    assert mask_scores(empty, empty) == MaskScores(
        1.0, 1.0, 0.0, empty_prediction=False, empty_reference=False, empty_both=True
    )
    assert mask_scores(empty, square) == MaskScores(0.0, 0.0, math.inf, empty_prediction=True, empty_reference=False)
    assert mask_scores(square, empty) == MaskScores(0.0, 0.0, math.inf, empty_prediction=False, empty_reference=True)
    assert hd95(empty, square) == math.inf and dice(empty, square) == 0.0


def test_volume_scores_per_class_from_label_values():
    brats = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    truth = np.zeros((6, 16, 16), np.uint8)
    truth[1:5, 2:12, 2:12] = 2
    truth[2:4, 4:9, 4:9] = 1
    truth[2:4, 5:7, 5:7] = 4
    prediction = truth.copy()
    prediction[prediction == 4] = 1  # enhancing tumour missed, labelled necrotic core instead
    scores = volume_scores(torch.from_numpy(prediction), truth, brats, spacing=(2.0, 1.0, 1.0))
    assert list(scores) == ["WT", "TC", "ET"]
    assert scores["WT"] == MaskScores(1.0, 1.0, 0.0, False, False)
    assert scores["TC"] == MaskScores(1.0, 1.0, 0.0, False, False)
    assert scores["ET"].empty_prediction and scores["ET"].dice == 0.0 and scores["ET"].hd95 == math.inf


def test_summarize_means_over_volumes_and_counts_what_hd95_leaves_out():
    per_volume = [
        {"liver": MaskScores(0.8, 0.6, 4.0, False, False), "spleen": MaskScores(0.0, 0.0, math.inf, True, False)},
        {"liver": MaskScores(0.6, 0.4, 2.0, False, False), "spleen": MaskScores(0.9, 0.8, 3.0, False, False)},
        {"liver": MaskScores(1.0, 1.0, 0.0, False, False), "spleen": MaskScores(0.0, 0.0, math.inf, False, True)},
    ]
    summary = summarize(per_volume)
    assert summary["dice/liver"] == pytest.approx(0.8)
    assert summary["iou/liver"] == pytest.approx(2.0 / 3)
    assert summary["hd95/liver"] == pytest.approx(2.0)
    assert summary["dice/spleen"] == pytest.approx(0.3)
    assert summary["hd95/spleen"] == pytest.approx(3.0)  # the two inf volumes left out ...
    assert summary["empty_prediction/spleen"] == 1  # ... and counted
    assert summary["empty_reference/spleen"] == 1
    assert summary["empty_prediction/liver"] == summary["empty_reference/liver"] == 0
    assert summary["dice"] == pytest.approx((0.8 + 0.3) / 2)
    assert summary["hd95"] == pytest.approx((2.0 + 3.0) / 2)
    assert summary["num_volumes"] == 3


def test_summarize_hd95_is_nan_when_no_volume_defines_it():
    summary = summarize([{"gallbladder": MaskScores(0.0, 0.0, math.inf, True, False)}])
    assert math.isnan(summary["hd95/gallbladder"]) and math.isnan(summary["hd95"])
    assert summary["empty_prediction/gallbladder"] == 1


def labelled_volume(shape, seed):
    """A label map with organs 1 and 2 from random blobs."""
    labels = np.zeros(shape, np.uint8)
    labels[random_blobs(shape, seed, 0.7)] = 1
    labels[random_blobs(shape, seed + 50, 0.85)] = 2
    return labels


def test_segmentation_metric_matches_the_functions_on_3d_volumes(tmp_path):
    classes = {"liver": (1,), "spleen": (2,)}
    shapes_and_spacings = [
        ((8, 20, 24), [2.5, 0.8, 0.8]),
        ((10, 18, 18), [1.0, 1.2, 1.2]),
        ((6, 20, 20), [3.0, 1.0, 1.0]),
    ]
    volumes = [
        (labelled_volume(shape, seed), labelled_volume(shape, seed + 7), spacing)
        for seed, (shape, spacing) in enumerate(shapes_and_spacings)
    ]
    volumes[2][0][volumes[2][0] == 2] = 0  # spleen missed in the last volume
    metric = SegmentationMetrics(classes=classes, cache_dir=str(tmp_path))
    for prediction, reference, spacing in volumes:
        metric.add(prediction=prediction, reference=reference, spacing=spacing)
    result = metric.compute(return_per_volume=True)

    expected_per_volume = [volume_scores(p, r, classes, s) for p, r, s in volumes]
    expected = summarize(expected_per_volume)
    assert {key: result[key] for key in expected} == pytest.approx(expected, nan_ok=True)
    assert result["empty_prediction/spleen"] == 1 and result["num_volumes"] == 3
    assert result["per_volume"][0]["dice/liver"] == pytest.approx(expected_per_volume[0]["liver"].dice)
    assert result["per_volume"][2]["hd95/spleen"] == math.inf
    assert 0 < result["dice/liver"] < 1 and result["hd95/liver"] > 0


def test_evaluate_load_of_the_metric_module_works_offline(tmp_path, monkeypatch):
    import evaluate

    from medsa_peft.evaluation import metrics

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    classes = {"organ": (1,)}
    prediction, reference = random_blobs((12, 14), 1), random_blobs((12, 14), 2)
    loaded = evaluate.load(metrics.__file__, classes=classes, cache_dir=str(tmp_path / "loaded"))
    direct = SegmentationMetrics(classes=classes, cache_dir=str(tmp_path / "direct"))
    for metric in (loaded, direct):
        metric.add(prediction=prediction, reference=reference, spacing=(0.5, 0.5))
    scores = direct.compute()
    assert loaded.compute() == pytest.approx(scores) and 0 < scores["dice/organ"] < 1


def test_segmentation_metric_scores_binary_2d_masks_by_default():
    predictions = [random_blobs((30, 30), seed) for seed in range(3)]
    references = [random_blobs((30, 30), seed + 10) for seed in range(3)]
    spacings = [[0.5, 0.5]] * 3
    metric = SegmentationMetrics(keep_in_memory=True)
    result = metric.compute(predictions=predictions, references=references, spacing=spacings)
    assert result["dice/foreground"] == pytest.approx(np.mean([dice(p, r) for p, r in zip(predictions, references)]))
    assert result["hd95"] == pytest.approx(np.mean([hd95(p, r, [0.5, 0.5]) for p, r in zip(predictions, references)]))
    assert "per_volume" not in result


def test_segmentation_metric_rejects_mismatched_inputs():
    metric = SegmentationMetrics(keep_in_memory=True)
    with pytest.raises(ValueError, match="spacing must hold 2"):
        metric.compute(predictions=[np.ones((4, 4), np.uint8)], references=[np.ones((4, 4), np.uint8)], spacing=[[1.0]])
    with pytest.raises(ValueError, match="at least one class"):
        SegmentationMetrics(classes={})


def test_a_class_absent_from_both_masks_is_left_out_of_the_means_and_counted():
    square = np.zeros((12, 12), bool)
    square[2:8, 2:8] = True
    half = np.zeros((12, 12), bool)
    half[2:8, 2:5] = True
    nothing = np.zeros((12, 12), bool)
    per_volume = [
        {"gallbladder": mask_scores(half, square)},  # Dice 2/3
        {"gallbladder": mask_scores(nothing, nothing)},  # a case without a gallbladder, nothing predicted
    ]
    summary = summarize(per_volume)
    assert summary["dice/gallbladder"] == pytest.approx(2 / 3)  # not (2/3 + 1) / 2
    assert summary["empty_both/gallbladder"] == 1 and summary["num_volumes"] == 2

