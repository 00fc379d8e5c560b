"""Parameter-efficient fine-tuning: DVPT and its baselines behind ``apply_peft(backbone, method, **cfg)``."""

from domainfm.shared.peft.dvpt import DVPT
from domainfm.shared.peft.methods import (
    PEFT_METHODS,
    PeftError,
    apply_peft,
    count_parameters,
    list_peft_methods,
    load_adapter,
    peft_state_dict,
    save_adapter,
)

__all__ = [
    "DVPT",
    "PEFT_METHODS",
    "PeftError",
    "apply_peft",
    "count_parameters",
    "list_peft_methods",
    "load_adapter",
    "peft_state_dict",
    "save_adapter",
]
