"""From a checkpoint file to a :class:`.card.Deployable`, and from a card's ``build`` back to a network.

Each domain's downstream checkpoint is a safetensors file whose metadata carries one domain key. The key
names the domain's ``deploy`` module, which provides ``deployable(path)`` (weights loaded) and
``network(kind, build)`` (random initialisation, used by a MONAI bundle's ``network_def`` before
``models/model.pt`` is loaded), and may provide ``INPUT_READERS`` (suffix -> reader) for input files only
it knows. Domains are reached through these tables of module names, as the CLI reaches its verbs, and
imported only when a model of theirs is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.errors import DomainfmError

# safetensors metadata key -> domain deploy module
CHECKPOINT_KEYS: dict[str, str] = {
    "domainfm_pathology_tile_classifier": "domainfm.domains.pathology.deploy",
    "domainfm_radiology_classifier": "domainfm.domains.radiology.deploy",
    "domainfm_remote_sensing_task": "domainfm.domains.remote_sensing.deploy",
    "domainfm_segmentation": "domainfm.domains.segmentation.deploy",
}
# card kind prefix -> domain deploy module
DOMAINS: dict[str, str] = {
    "pathology": "domainfm.domains.pathology.deploy",
    "radiology": "domainfm.domains.radiology.deploy",
    "remote_sensing": "domainfm.domains.remote_sensing.deploy",
    "segmentation": "domainfm.domains.segmentation.deploy",
}
PRODUCERS = (
    "`domainfm pathology train`, `domainfm radiology train`, `domainfm remote-sensing train --out DIR` or "
    "`domainfm segmentation train`"
)


class NotDeployableError(DomainfmError, ValueError):
    """A file that is not a domainfm downstream checkpoint."""


def checkpoint_keys(path: Path) -> set[str]:
    """The metadata keys of a safetensors file (clear error for anything else)."""
    from safetensors import safe_open

    if not path.is_file():
        raise NotDeployableError(f"{path} does not exist")
    try:
        with safe_open(str(path), "pt") as handle:
            return set(handle.metadata() or {})
    except Exception as error:  # safetensors raises several types for other files
        raise NotDeployableError(
            f"{path} is not a safetensors checkpoint ({error}); give one written by {PRODUCERS}"
        ) from error


def load_deployable(path: str | Path) -> Deployable:
    """The downstream model saved in ``path`` with its card (eval mode, on the CPU)."""
    path = Path(path)
    keys = checkpoint_keys(path) & set(CHECKPOINT_KEYS)
    if not keys:
        raise NotDeployableError(
            f"{path} is not a downstream checkpoint (a pretrained encoder or another file?); give one written by "
            f"{PRODUCERS}"
        )
    module = importlib.import_module(CHECKPOINT_KEYS[keys.pop()])
    deployable = module.deployable(path)
    deployable.network.eval()
    return deployable


def domain_module(kind: str) -> ModuleType:
    """The ``deploy`` module of the domain a card ``kind`` belongs to (imported now)."""
    domain = kind.split(".", 1)[0]
    if domain not in DOMAINS:
        raise NotDeployableError(f"unknown model kind {kind!r}; known domains: {sorted(DOMAINS)}")
    return importlib.import_module(DOMAINS[domain])


def build_network(kind: str, build: dict[str, Any]) -> nn.Module:
    """A randomly initialised network of ``kind`` (a card's ``kind``) shaped by ``build`` (a card's ``build``).

    This is what a bundle's ``network_def`` instantiates; the bundle then loads ``models/model.pt``.
    """
    return domain_module(kind).network(kind, build).eval()
