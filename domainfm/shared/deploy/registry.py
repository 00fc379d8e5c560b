"""From a checkpoint file to a :class:`.card.Deployable`, and from a card's ``build`` back to a network.

Each domain's downstream checkpoint is a safetensors file whose metadata carries one of its domain's
``checkpoint_keys``. The domain registers (:mod:`domainfm.shared.plugins`) a ``deploy`` module that
provides ``deployable(path)`` (weights loaded) and ``network(kind, build)`` (random initialisation, used by
a MONAI bundle's ``network_def`` before ``models/model.pt`` is loaded), and may provide ``INPUT_READERS``
(suffix -> reader) for input files only it knows. Domains are imported only when a model of theirs is used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.errors import DomainfmError
from domainfm.shared.plugins import domains, producers
from domainfm.shared.registry import RegistryError


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
            f"{path} is not a safetensors checkpoint ({error}); give one written by {producers()}"
        ) from error


def _checkpoint_owners() -> dict[str, str]:
    """Safetensors metadata key -> the ``deploy`` module of the domain that writes such checkpoints."""
    registry = domains()
    return {
        key: plugin.deploy
        for plugin in (registry.get(name) for name in registry)
        if plugin.deploy
        for key in plugin.checkpoint_keys
    }


def load_deployable(path: str | Path) -> Deployable:
    """The downstream model saved in ``path`` with its card (eval mode, on the CPU)."""
    path = Path(path)
    owners = _checkpoint_owners()
    keys = checkpoint_keys(path) & set(owners)
    if not keys:
        raise NotDeployableError(
            f"{path} is not a downstream checkpoint (a pretrained encoder or another file?); give one written by "
            f"{producers()}"
        )
    module = importlib.import_module(owners[keys.pop()])
    deployable = module.deployable(path)
    deployable.network.eval()
    return deployable


def domain_module(kind: str) -> ModuleType:
    """The ``deploy`` module of the domain a card ``kind`` belongs to (imported now)."""
    name = kind.split(".", 1)[0]
    try:
        plugin = domains().get(name)
    except RegistryError as error:
        raise NotDeployableError(f"unknown model kind {kind!r}: {error}") from error
    if plugin.deploy is None:
        raise NotDeployableError(f"model kind {kind!r}: the {name} domain deploys no models")
    return importlib.import_module(plugin.deploy)


def build_network(kind: str, build: dict[str, Any]) -> nn.Module:
    """A randomly initialised network of ``kind`` (a card's ``kind``) shaped by ``build`` (a card's ``build``).

    This is what a bundle's ``network_def`` instantiates; the bundle then loads ``models/model.pt``.
    """
    return domain_module(kind).network(kind, build).eval()
