"""Segmenting files and arrays with SAM and a Med-SA adapter: `MedSAPredictor` and the prompts it takes."""

from .predictor import AdapterNotFoundError, MedSAPredictor, Prediction, load_medsa_model
from .prompts import Box3D, Prompt, PromptError, SlicePrompt

__all__ = [
    "AdapterNotFoundError",
    "Box3D",
    "MedSAPredictor",
    "Prediction",
    "Prompt",
    "PromptError",
    "SlicePrompt",
    "load_medsa_model",
]
