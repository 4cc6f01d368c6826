"""Registration of the "MEDSA" type with PEFT.

PEFT's `register_peft_method` only accepts names of its closed `PeftType` enum, so the type is written into
PEFT's three lookup tables directly. `import medsa_peft` runs this; it must come before any
`PeftConfig.from_pretrained` / `PeftModel.from_pretrained` of a Med-SA adapter, else PEFT fails with
`KeyError: 'MEDSA'`.
"""

from ..compat import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from .config import MEDSA_PEFT_TYPE, MedSAConfig
from .model import MedSAModel

__all__ = [
    "register_medsa",
]


def register_medsa() -> None:
    """Make PEFT know the "MEDSA" type (idempotent)."""
    PEFT_TYPE_TO_CONFIG_MAPPING[MEDSA_PEFT_TYPE] = MedSAConfig
    PEFT_TYPE_TO_TUNER_MAPPING[MEDSA_PEFT_TYPE] = MedSAModel
    PEFT_TYPE_TO_PREFIX_MAPPING[MEDSA_PEFT_TYPE] = MedSAModel.prefix
