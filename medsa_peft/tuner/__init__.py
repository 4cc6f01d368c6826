"""The Med-SA PEFT method, split as peft splits a tuner: `config` (MedSAConfig), `adapters` (the math),
`layer` (SAM blocks with adapters), `model` (the tuner), `registration` (the "MEDSA" type), and `fast_paths`
(fused attention, compiled layers). Importing it registers "MEDSA" with PEFT."""

from .config import MEDSA_PEFT_TYPE, MedSAConfig
from .fast_paths import compile_sam_layers, enable_activation_checkpointing, use_fused_attention
from .model import MedSAModel
from .registration import register_medsa

__all__ = [
    "MEDSA_PEFT_TYPE",
    "MedSAConfig",
    "MedSAModel",
    "compile_sam_layers",
    "enable_activation_checkpointing",
    "register_medsa",
    "use_fused_attention",
]

register_medsa()
