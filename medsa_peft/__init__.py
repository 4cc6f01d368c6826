"""Med-SA (Medical SAM Adapter) as a PEFT method for transformers' SamModel.

`import medsa_peft` registers the "MEDSA" PEFT type; do it before loading any Med-SA adapter.
"""

from .config import MedSAConfig
from .model import MedSAModel
from .registration import register_medsa

register_medsa()

__all__ = ["MedSAConfig", "MedSAModel", "register_medsa"]
__version__ = "0.1.0"
