"""Segmenting files and arrays with SAM and a Med-SA adapter: `MedSAPredictor`, the prompts it takes, and the cases
of files and folders (`cases`)."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".cases": ["PredictionCase", "prediction_cases"],
        ".predictor": [
            "AdapterNotFoundError",
            "InteractiveSession",
            "MedSAPredictor",
            "Prediction",
            "SliceMasks",
            "load_medsa_model",
        ],
        ".prompts": ["Box3D", "Prompt", "PromptError", "SlicePrompt"],
    },
)
