"""Converters from a publisher's file layout to the timm keys of domainfm's backbone.

A layout is a function ``(source, config, target) -> SourceWeights``: it reads the publisher's tensors
(:class:`~domainfm.shared.foundation.sources.TensorSource`), renames (and where the maths asks, fuses)
them to the keys of the timm model domainfm builds, and accounts for every source tensor: used by the
backbone, kept beside it as an extra (a SimMIM decoder and mask token, a CLIP projection), or dropped
with a reason (a classifier head, buffers the architecture recomputes). :func:`domainfm.shared.foundation.
convert.convert_checkpoint` then checks the result against the model strictly, so nothing is ignored.

Each layout lives in a module of :mod:`domainfm.shared.foundation.formats` and registers itself with
:func:`register_layout`; :func:`get_layout` imports them all before the lookup.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.registry import Registry


@dataclass
class TargetModel:
    """What a layout converts to: the timm model's state-dict shapes (built on the meta device)."""

    timm_name: str
    shapes: dict[str, tuple[int, ...]]


@dataclass
class SourceWeights:
    """A source's tensors after renaming, with every source key accounted for.

    Attributes:
        backbone: Tensors under the timm model's keys (a value may be a callable producing the tensor,
            so fused tensors are built one at a time while writing).
        extras: Tensors kept beside the backbone (``mask_token``, ``decoder.0.weight``, ``proj``).
        dropped: Source key -> why it is not converted.
        arch: Architecture arguments read from the source's config (``embed_dim``, ``depth``, ...),
            passed to ``create_backbone``; the catalogue's full-size defaults otherwise.
        notes: Lines for the conversion report.
    """

    backbone: dict[str, torch.Tensor | Callable[[], torch.Tensor]] = field(default_factory=dict)
    extras: dict[str, torch.Tensor | Callable[[], torch.Tensor]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    arch: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """A file layout: how to read it and what a user gives ``--input``/``--config`` for it."""

    name: str
    description: str
    read_arch: Callable[[Path, dict[str, Any]], dict[str, Any]]
    convert: Callable[[Path, dict[str, Any], TargetModel], SourceWeights]


LAYOUTS: Registry[Layout] = Registry("checkpoint layout")


def register_layout(layout: Layout) -> Layout:
    """Adds a layout (a name already taken is an error)."""
    return LAYOUTS.add(layout.name, layout)


def strip_prefix(keys: list[str], model_keys: set[str]) -> str:
    """The key prefix (``module.``, ``model.``, none) under which most keys are model keys."""
    best, best_count = "", sum(key in model_keys for key in keys)
    for prefix in {key.split(".", 1)[0] + "." for key in keys if "." in key}:
        count = sum(key[len(prefix) :] in model_keys for key in keys if key.startswith(prefix))
        if count > best_count:
            best, best_count = prefix, count
    return best


def get_layout(name: str) -> Layout:
    """The registered layout ``name`` (every module of ``foundation.formats`` imported first)."""
    from domainfm.shared.foundation import formats

    for module in pkgutil.iter_modules(formats.__path__):
        importlib.import_module(f"{formats.__name__}.{module.name}")
    return LAYOUTS.get(name)
