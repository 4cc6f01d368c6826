"""Med-SA (Medical SAM Adapter) as a PEFT method for transformers' SamModel.

`import medsa_peft` registers the "MEDSA" PEFT type; do it before loading any Med-SA adapter.
"""

from .tuner import MedSAConfig, MedSAModel, compile_sam_layers, register_medsa, use_fused_attention

register_medsa()

__all__ = ["MedSAConfig", "MedSAModel", "compile_sam_layers", "register_medsa", "use_fused_attention"]
__version__ = "0.1.0"
