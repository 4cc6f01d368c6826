"""Training Med-SA under Accelerate: the options (`arguments`), the loop (`loop`), checkpoints, the loss and the
model card written with the adapter."""

from .arguments import MedSATrainingArguments
from .loop import train

__all__ = ["MedSATrainingArguments", "train"]
