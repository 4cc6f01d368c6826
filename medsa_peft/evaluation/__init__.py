"""Evaluation: Dice, IoU and HD95 (`metrics`, also as an `evaluate.Metric`) and scoring a model on a split through
the predictor (`scoring`)."""

from .metrics import SegmentationMetrics, dice, hd95, iou, mask_scores, summarize, volume_scores
from .scoring import Evaluation, EvaluationCase, evaluate_model, evaluation_cases

__all__ = [
    "Evaluation",
    "EvaluationCase",
    "SegmentationMetrics",
    "dice",
    "evaluate_model",
    "evaluation_cases",
    "hd95",
    "iou",
    "mask_scores",
    "summarize",
    "volume_scores",
]
