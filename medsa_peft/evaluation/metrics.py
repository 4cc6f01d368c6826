"""Segmentation metrics: Dice, IoU and HD95 in millimetres, per class and per volume.

Plain functions score one binary mask pair (2D or 3D, numpy or torch, bool or 0/1): `dice`,
`iou`, `hd95`, and `mask_scores` for all three with the empty cases flagged (`MaskScores`).
`volume_scores` scores every class of one label map, `summarize` takes means
over volumes (as the literature reports), and `SegmentationMetrics` wraps both as an
`evaluate.Metric` that works offline (instantiate it directly; `evaluate.load` needs the Hub).

HD95 is MONAI's (`compute_hausdorff_distance` with percentile=95): the larger of the two
directed 95th-percentile distances between the masks' surface voxels, in mm, where spacing[i]
is the voxel size along array axis i (NIfTI header zooms are in that order).

Empty masks, by case (prediction, truth):

    both empty                     Dice 1, IoU 1, HD95 0     (nothing to find, nothing found)
    one empty, the other not       Dice 0, IoU 0, HD95 inf

Means over volumes (`summarize`, `SegmentationMetrics`) leave out, per class, the volumes where the
class is in neither mask (as MONAI's metrics do with `ignore_empty`: a class absent from a case says
nothing about the model) and, for HD95, the inf cases; they report how many per class:
`empty_both/<class>` (left out), `empty_prediction/<class>` (object missed) and
`empty_reference/<class>` (object hallucinated). Nothing is dropped without a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

__all__ = [
    "MaskScores",
    "SegmentationMetrics",
    "dice",
    "hd95",
    "iou",
    "mask_scores",
    "summarize",
    "volume_scores",
]

METRIC_NAMES = ("dice", "iou", "hd95")

ArrayLike = np.ndarray | torch.Tensor


def _numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _binary(array: ArrayLike, name: str) -> np.ndarray:
    """A bool numpy view or copy of a 2D or 3D mask given as bool or 0/1 values."""
    array = _numpy(array)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D mask, got shape {array.shape}")
    if array.dtype != bool:
        if not ((array == 0) | (array == 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 (threshold probabilities first)")
        array = array.astype(bool)
    return array


def _pair(prediction: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = _binary(prediction, "prediction"), _binary(truth, "truth")
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    return prediction, truth


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> list[float]:
    if spacing is None:
        return [1.0] * ndim
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must hold {ndim} positive voxel sizes (mm), one per array axis, got {spacing}")
    return spacing


def _dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    total = np.count_nonzero(prediction) + np.count_nonzero(truth)
    return 1.0 if total == 0 else 2 * np.count_nonzero(prediction & truth) / total


def _iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(prediction | truth)
    return 1.0 if union == 0 else np.count_nonzero(prediction & truth) / union


def _hd95(prediction: np.ndarray, truth: np.ndarray, spacing: list[float]) -> float:
    has_prediction, has_truth = prediction.any(), truth.any()
    if not (has_prediction or has_truth):
        return 0.0
    if not (has_prediction and has_truth):
        return float("inf")
    distance = compute_hausdorff_distance(
        torch.from_numpy(prediction)[None, None],
        torch.from_numpy(truth)[None, None],
        include_background=True,
        percentile=95,
        spacing=spacing,
    )
    return float(distance.item())


def dice(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two binary masks of one shape, 2D or 3D; 1.0 when both are empty."""
    return _dice(*_pair(prediction, truth))


def iou(prediction: ArrayLike, truth: ArrayLike) -> float:
    """IoU |P & T| / |P | T| of two binary masks of one shape, 2D or 3D; 1.0 when both are empty."""
    return _iou(*_pair(prediction, truth))


def hd95(prediction: ArrayLike, truth: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance (mm) of two binary masks, MONAI's definition.

    spacing: voxel size (mm) per array axis, 1.0 each when None. Both masks empty: 0.0; exactly
    one empty: inf.
    """
    prediction, truth = _pair(prediction, truth)
    return _hd95(prediction, truth, _check_spacing(spacing, prediction.ndim))


@dataclass(frozen=True)
class MaskScores:
    """The scores of one binary mask pair, with the one-sided empty cases flagged."""

    dice: float
    iou: float
    hd95: float  # inf when exactly one mask is empty
    empty_prediction: bool  # nothing predicted, the truth is not empty
    empty_reference: bool  # the truth is empty, something predicted
    empty_both: bool = False  # neither mask holds anything: left out of means over volumes


def mask_scores(prediction: ArrayLike, truth: ArrayLike, spacing: Sequence[float] | None = None) -> MaskScores:
    """Dice, IoU and HD95 (mm) of two binary masks of one shape, 2D or 3D."""
    prediction, truth = _pair(prediction, truth)
    return MaskScores(
        dice=_dice(prediction, truth),
        iou=_iou(prediction, truth),
        hd95=_hd95(prediction, truth, _check_spacing(spacing, prediction.ndim)),
        empty_prediction=bool(truth.any() and not prediction.any()),
        empty_reference=bool(prediction.any() and not truth.any()),
        empty_both=not (prediction.any() or truth.any()),
    )


def volume_scores(
    prediction: ArrayLike,
    reference: ArrayLike,
    classes: Mapping[str, Sequence[int]],
    spacing: Sequence[float] | None = None,
) -> dict[str, MaskScores]:
    """The scores of every class of one pair of label maps (2D or 3D, integer labels).

    classes: class name -> the label values that make up the class (the builders' `classes`,
    e.g. {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}); its mask is `np.isin(label_map, values)`.
    """
    prediction, reference = _numpy(prediction), _numpy(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    return {
        name: mask_scores(np.isin(prediction, values), np.isin(reference, values), spacing)
        for name, values in classes.items()
    }


def _mean_of_finite(values: Sequence[float]) -> float:
    finite = [value for value in values if np.isfinite(value)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(per_volume: Sequence[Mapping[str, MaskScores]]) -> dict[str, float]:
    """Means over volumes of `volume_scores` results, per class and over classes.

    Keys, for every class c: "dice/c", "iou/c", "hd95/c" (means over the volumes scored for c where c
    is in the prediction or the truth; HD95 over those where it is finite, NaN if none), "empty_both/c"
    (volumes left out: c in neither mask), "empty_prediction/c" and "empty_reference/c" (counts of the
    volumes left out of the HD95 mean); then "dice", "iou", "hd95" (means of the
    class means, NaN ones left out) and "num_volumes". A volume may leave out classes (e.g. evaluation
    with prompts scores only the classes present); each class is averaged over the volumes that have it.
    """
    if not per_volume:
        raise ValueError("no volume to summarize")
    class_names = list(dict.fromkeys(name for volume in per_volume for name in volume))
    summary: dict[str, float] = {}
    for name in class_names:
        scored = [volume[name] for volume in per_volume if name in volume]
        scores = [score for score in scored if not score.empty_both]
        summary[f"empty_both/{name}"] = len(scored) - len(scores)
        for metric in METRIC_NAMES:
            summary[f"{metric}/{name}"] = _mean_of_finite([getattr(s, metric) for s in scores])
        summary[f"empty_prediction/{name}"] = sum(s.empty_prediction for s in scores)
        summary[f"empty_reference/{name}"] = sum(s.empty_reference for s in scores)
    for metric in METRIC_NAMES:
        summary[metric] = _mean_of_finite([summary[f"{metric}/{name}"] for name in class_names])
    summary["num_volumes"] = len(per_volume)
    return summary


def _label_map_features(ndim: int) -> datasets.Features:
    label_map = datasets.Value("int32")
    for _ in range(ndim):
        label_map = datasets.List(label_map)
    return datasets.Features(
        {"predictions": label_map, "references": label_map, "spacing": datasets.List(datasets.Value("float64"))}
    )


_CITATION = """\
@article{cardoso2022monai,
  title={{MONAI}: An open-source framework for deep learning in healthcare},
  author={Cardoso, M. Jorge and others},
  journal={arXiv preprint arXiv:2211.02701},
  year={2022}
}
"""

_INPUTS_DESCRIPTION = """
Args:
    predictions: predicted label maps, one per volume, each (H, W) or (D, H, W) integer (or bool).
    references: true label maps, same shapes.
    spacing: voxel size (mm) per array axis of each volume, e.g. the NIfTI header zooms.
    return_per_volume (bool, passed to `compute`): add "per_volume", one {"<metric>/<class>": value}
        dict per volume.
Returns:
    dict: see `medsa_peft.evaluation.metrics.summarize`: "dice/<class>", "iou/<class>", "hd95/<class>" (mm),
    "empty_both/<class>", "empty_prediction/<class>", "empty_reference/<class>", "dice", "iou", "hd95",
    "num_volumes".
"""


class SegmentationMetrics(evaluate.Metric):
    """Dice, IoU and HD95 (mm) per class, averaged over volumes, as an `evaluate.Metric`.

    Works offline: `metric = SegmentationMetrics(classes={"spleen": (1,), "liver": (6,)})`, then
    `metric.add(prediction=..., reference=..., spacing=...)` per volume and `metric.compute()`.
    `classes` defaults to {"foreground": (1,)}, which scores binary masks. Other keyword
    arguments go to `evaluate.Metric` (keep_in_memory, cache_dir, num_process, process_id, ...).
    Like every `evaluate.Metric` it holds all label maps until `compute`; for large 3D test sets
    score each volume as it comes with `volume_scores` and average with `summarize`.
    """

    def __init__(self, classes: Mapping[str, Sequence[int]] | None = None, **kwargs: Any):
        classes = {"foreground": (1,)} if classes is None else classes
        if not classes:
            raise ValueError("classes must name at least one class")
        self.classes = {name: tuple(int(value) for value in values) for name, values in classes.items()}
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Dice, IoU and 95th-percentile Hausdorff distance (mm, MONAI's definition) of "
            "segmentations, per class, averaged over volumes; one-sided empty masks are counted.",
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=[_label_map_features(2), _label_map_features(3)],
            reference_urls=["https://docs.monai.io/en/stable/metrics.html"],
        )

    def _compute(
        self,
        predictions: Sequence[Any],
        references: Sequence[Any],
        spacing: Sequence[Sequence[float]],
        return_per_volume: bool = False,
    ) -> dict[str, Any]:
        per_volume = [
            volume_scores(np.asarray(prediction), np.asarray(reference), self.classes, volume_spacing)
            for prediction, reference, volume_spacing in zip(predictions, references, spacing)
        ]
        result: dict[str, Any] = summarize(per_volume)
        if return_per_volume:
            result["per_volume"] = [
                {
                    f"{metric}/{name}": getattr(scores, metric)
                    for name, scores in volume.items()
                    for metric in METRIC_NAMES
                }
                for volume in per_volume
            ]
        return result
