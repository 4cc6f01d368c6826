"""Training Med-SA under Accelerate: the options (`arguments`), the loop (`loop`), checkpoints, the loss and the
model card written with the adapter."""

from ..lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".arguments": ["METHODS", "MedSATrainingArguments"],
        ".loop": ["train"],
    },
)
