"""Domains register themselves: what shared code needs to know of a domain, looked up by name.

``shared`` never names a domain. Each domain package declares one :class:`DomainPlugin` and lists it
under the ``domainfm.plugins`` entry-point group in ``pyproject.toml`` (the composition point, as pytest
and napari find their plugins); shared code loads the group on first lookup. The plugin modules hold only
names and module strings, so loading them imports no domain dependency; a domain's heavy modules are
imported when one of its models or inputs is used. A test, a notebook or another package adds a domain
with :func:`register_domain` and nothing under ``domainfm/shared`` changes.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from domainfm.shared.registry import Registry, RegistryError

ENTRY_POINT_GROUP = "domainfm.plugins"


@dataclass(frozen=True)
class DomainPlugin:
    """One domain as shared code sees it.

    Attributes:
        name: The domain's name; card kinds are ``"<name>.<model>"`` and stores say ``domain: <name>``.
        deploy: Module with ``deployable(path)``, ``network(kind, build)`` and optionally ``INPUT_READERS``
            (file suffix -> reader of raw ``[C, H, W]`` values); ``None`` for domains without downstream models.
        checkpoint_keys: safetensors metadata keys that mark the domain's downstream checkpoints.
        producers: The commands that write those checkpoints (for messages that say what to run).
        modality: DICOM modality code written into MONAI bundle metadata (``n/a`` when none applies).
        large_inputs: ``"module:attribute"`` of a :class:`~domainfm.shared.explain.slides.LargeInputs`
            that tiles inputs too large for one forward pass (whole-slide images) for explanations.
        foundation_models: ``"module:attribute"`` of a sequence of
            :class:`~domainfm.shared.foundation.catalogue.FoundationModel` the domain's verbs take.
        image_readers: Commands that read plain image files (PNG, JPEG, TIFF) into a store, each with what it
            is for, e.g. ``"<domain> tile IMAGES --assume-mpp MPP (H&E patches)"`` (for messages that say what to run).
    """

    name: str
    deploy: str | None = None
    checkpoint_keys: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    modality: str = "n/a"
    large_inputs: str | None = None
    foundation_models: str | None = None
    image_readers: tuple[str, ...] = ()


DOMAINS: Registry[DomainPlugin] = Registry("domain")
_loaded = False
_lock = threading.Lock()


def register_domain(plugin: DomainPlugin) -> DomainPlugin:
    """Adds ``plugin`` (a name already taken is an error)."""
    _load_entry_points()
    return DOMAINS.add(plugin.name, plugin)


def unregister_domain(name: str) -> None:
    """Removes a domain registered by :func:`register_domain` (tests add and remove toy domains)."""
    DOMAINS.remove(name)


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for point in entry_points(group=ENTRY_POINT_GROUP):
            plugin = point.load()
            if not isinstance(plugin, DomainPlugin):
                raise TypeError(f"entry point {point.name} = {point.value} is not a DomainPlugin")
            if plugin.name not in DOMAINS:
                DOMAINS.add(plugin.name, plugin)
        _loaded = True


def domains() -> Registry[DomainPlugin]:
    """Every registered domain (entry points loaded on first call)."""
    _load_entry_points()
    return DOMAINS


def domain(name: str) -> DomainPlugin:
    """The domain called ``name``; an unknown name lists the known ones."""
    return domains().get(name)


def domain_of_kind(kind: str) -> DomainPlugin:
    """The domain a card ``kind`` (``"<domain>.<model>"``) belongs to."""
    return domain(kind.split(".", 1)[0])


def producers() -> str:
    """Every registered command that writes a downstream checkpoint, for messages."""
    registry = domains()
    names = [f"`domainfm {command}`" for name in registry for command in registry.get(name).producers]
    return ", ".join(names) if names else "a domain's train command"


def image_readers() -> str:
    """Every registered command that reads plain images into a store, for messages."""
    registry = domains()
    names = [f"`domainfm {command}`" for name in registry for command in registry.get(name).image_readers]
    return ", ".join(names) if names else "a domain's ingest command"


def load(spec: str) -> Any:
    """``"module"`` -> the module, ``"module:attribute"`` -> the attribute (imported now)."""
    module, _, attribute = spec.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


__all__ = [
    "DOMAINS",
    "ENTRY_POINT_GROUP",
    "DomainPlugin",
    "RegistryError",
    "domain",
    "domain_of_kind",
    "domains",
    "image_readers",
    "load",
    "producers",
    "register_domain",
    "unregister_domain",
]
