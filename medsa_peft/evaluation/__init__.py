"""Evaluation: Dice, IoU and HD95 (`metrics`, also as an `evaluate.Metric`) and scoring a model on a split through
the predictor (`scoring`)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".metrics": ["SegmentationMetrics", "dice", "hd95", "iou", "mask_scores", "summarize", "volume_scores"],
        ".scoring": [
            "Evaluation",
            "EvaluationCase",
            "case_scores",
            "evaluate_interactive",
            "evaluate_model",
            "evaluation_cases",
        ],
    },
)
