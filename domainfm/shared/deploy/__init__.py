"""Deploying downstream models: one contract for bundles, explanations and prediction.

``load_deployable(CKPT)`` turns any domain's downstream checkpoint into a network from raw inputs to
scores plus a :class:`ModelCard`; :func:`predict` gives the probabilities a MONAI bundle would write.
"""

from domainfm.shared.deploy.card import Deployable, ModelCard, Standardise, predict, scores
from domainfm.shared.deploy.inputs import read_input
from domainfm.shared.deploy.registry import build_network, load_deployable

__all__ = [
    "Deployable",
    "ModelCard",
    "Standardise",
    "build_network",
    "load_deployable",
    "predict",
    "read_input",
    "scores",
]
