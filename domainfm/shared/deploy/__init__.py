"""Deploying downstream models: one contract for bundles, explanations and prediction.

``load_deployable(CKPT)`` turns any domain's downstream checkpoint into a network from raw inputs to
scores plus a :class:`ModelCard`; :func:`predict` gives the probabilities a MONAI bundle would write.

Names are imported on first use (PEP 562), so ``domainfm export --help`` does not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "Deployable": "card",
    "ModelCard": "card",
    "contract_network": "card",
    "predict": "card",
    "predict_array": "card",
    "scores": "card",
    "read_input": "inputs",
    "build_network": "registry",
    "load_deployable": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """The public names, imported from their module on first access."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
