"""Converters from a publisher's file layout to the timm keys of domainfm's backbone.

A layout is a function ``(source, config, target) -> SourceWeights``: it reads the publisher's tensors
(:class:`~domainfm.shared.foundation.sources.TensorSource`), renames (and where the maths asks, fuses)
them to the keys of the timm model domainfm builds, and accounts for every source tensor: used by the
backbone, kept beside it as an extra (a SimMIM decoder and mask token, a CLIP projection), or dropped
with a reason (a classifier head, buffers the architecture recomputes). :func:`domainfm.shared.foundation.
convert.convert_checkpoint` then checks the result against the model strictly, so nothing is ignored.

Layouts here: ``timm`` (timm's own keys, UNI / Virchow / H-optimus / GigaPath files). Further layouts
(Hugging Face ViT and DINOv2, DINOv2's GitHub layout, open_clip, SatVision-TOA's DeepSpeed file) register
themselves with :func:`register_layout`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.foundation.sources import TensorSource
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


def _timm_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    return dict(config.get("model_args", config))


def _convert_timm(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    source = TensorSource(path, unwrap=tuple(config.get("unwrap", ())))
    prefix = strip_prefix(list(source), set(target.shapes))
    weights = SourceWeights()
    for key in source:
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name in target.shapes:
            weights.backbone[name] = _lazy(source, key)
        elif name.split(".", 1)[0] in ("head", "fc", "classifier", "head_dist"):
            weights.dropped[key] = "classifier head (domainfm builds the encoder without one)"
        else:
            weights.backbone[name] = _lazy(source, key)  # left for the strict check to name
    return weights


def _lazy(source: TensorSource, key: str) -> Callable[[], torch.Tensor]:
    return lambda: source[key]


register_layout(
    Layout(
        "timm",
        "a timm state dict (.safetensors/.bin/.pth) under timm's own keys; --config: timm model_args "
        "(the pretrained_cfg/config.json a timm hub folder ships) when the width differs from the catalogue's",
        _timm_arch,
        _convert_timm,
    )
)
