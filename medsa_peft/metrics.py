"""Segmentation metrics: Dice, IoU and HD95 in millimetres, per class and per volume.

Plain functions score one binary mask pair (2D or 3D, numpy or torch, bool or 0/1): `dice`,
`iou`, `hd95`. `volume_scores` scores every class of one label map, `summarize` takes means
over volumes (as the literature reports), and `SegmentationMetrics` wraps both as an
`evaluate.Metric` that works offline (instantiate it directly; `evaluate.load` needs the Hub).

HD95 is MONAI's (`compute_hausdorff_distance` with percentile=95): the larger of the two
directed 95th-percentile distances between the masks' surface voxels, in mm, where spacing[i]
is the voxel size along array axis i (NIfTI header zooms are in that order).

Empty masks, by case (prediction, truth):

    both empty                     Dice 1, IoU 1, HD95 0     (nothing to find, nothing found)
    one empty, the other not       Dice 0, IoU 0, HD95 inf

Means of HD95 over volumes leave out the inf cases, and `summarize` / `SegmentationMetrics`
report how many per class: `empty_prediction/<class>` (object missed) and
`empty_reference/<class>` (object hallucinated). Nothing is dropped without a count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

METRIC_NAMES = ("dice", "iou", "hd95")

ArrayLike = np.ndarray | torch.Tensor


def _binary(array: ArrayLike, name: str) -> np.ndarray:
    """A bool numpy copy of a 2D or 3D mask given as bool or 0/1 values."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
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


def _overlap(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(intersection, sum of the two sizes) in voxels."""
    return int(np.count_nonzero(prediction & truth)), int(np.count_nonzero(prediction) + np.count_nonzero(truth))


def dice(prediction: ArrayLike, truth: ArrayLike) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two binary masks of one shape; 1.0 when both are empty."""
    intersection, total = _overlap(*_pair(prediction, truth))
    return 1.0 if total == 0 else 2 * intersection / total


def iou(prediction: ArrayLike, truth: ArrayLike) -> float:
    """IoU |P & T| / |P | T| of two binary masks of one shape; 1.0 when both are empty."""
    intersection, total = _overlap(*_pair(prediction, truth))
    return 1.0 if total == 0 else intersection / (total - intersection)


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> list[float]:
    if spacing is None:
        return [1.0] * ndim
    spacing = [float(s) for s in spacing]
    if len(spacing) != ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must hold {ndim} positive voxel sizes (mm), got {spacing}")
    return spacing


def hd95(prediction: ArrayLike, truth: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance (mm) of two binary masks, MONAI's definition.

    spacing: voxel size per array axis (mm), 1.0 each when None. Both empty: 0.0; exactly one
    empty: inf.
    """
    prediction, truth = _pair(prediction, truth)
    spacing = _check_spacing(spacing, prediction.ndim)
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


def volume_scores(
    prediction: ArrayLike,
    reference: ArrayLike,
    classes: Mapping[str, Sequence[int]],
    spacing: Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Dice, IoU and HD95 of every class of one label map pair (2D or 3D, integer labels).

    classes: class name -> the label values making up that class (the builders' `classes`);
    the class mask is `np.isin(label_map, values)`. Returns {class: {"dice", "iou", "hd95"}}.
    """
    prediction, reference = (
        np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a) for a in (prediction, reference)
    )
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    scores = {}
    for name, values in classes.items():
        predicted, true = np.isin(prediction, values), np.isin(reference, values)
        scores[name] = {"dice": dice(predicted, true), "iou": iou(predicted, true), "hd95": hd95(predicted, true, spacing)}
    return scores


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(per_volume: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Means over volumes of `volume_scores` results, per class and over classes.

    Keys: "<metric>/<class>" (mean over volumes), "<metric>" (mean of the class means that are
    defined), "empty_prediction/<class>" and "empty_reference/<class>" (volumes whose HD95 is
    inf and left out of the HD95 mean), "num_volumes". A class whose HD95 is inf in every
    volume has HD95 NaN.
    """
    if not per_volume:
        raise ValueError("no volume to summarize")
    summary: dict[str, float] = {}
    for name in per_volume[0]:
        scores = [volume[name] for volume in per_volume]
        summary[f"dice/{name}"] = _mean([s["dice"] for s in scores])
        summary[f"iou/{name}"] = _mean([s["iou"] for s in scores])
        summary[f"hd95/{name}"] = _mean([s["hd95"] for s in scores if np.isfinite(s["hd95"])])
        # One-sided empty pairs are exactly those with Dice 0 and HD95 inf; which side is empty
        # is told by IoU's denominator... not kept, so count from the scores' own flags.
        summary[f"empty_prediction/{name}"] = sum(s.get("empty_prediction", 0) for s in scores)
        summary[f"empty_reference/{name}"] = sum(s.get("empty_reference", 0) for s in scores)
    for metric in METRIC_NAMES:
        class_means = [summary[f"{metric}/{name}"] for name in per_volume[0]]
        summary[metric] = float(np.nanmean(class_means)) if not np.isnan(class_means).all() else float("nan")
    summary["num_volumes"] = len(per_volume)
    return summary
