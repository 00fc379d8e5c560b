"""timm's own layout: UNI, UNI2-h, Virchow(2), H-optimus, Prov-GigaPath ship timm state dicts.

Keys are timm's (after a wrapper prefix such as ``module.`` or ``model.``); a classifier head is dropped by
name. ``--config`` is the ``config.json`` a timm hub folder ships (its ``model_args``: width, depth, size).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout, strip_prefix
from domainfm.shared.foundation.sources import TensorSource, hf_config


def _timm_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config = config or hf_config(path)
    return dict(config.get("model_args", {} if "architecture" in config else config))


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
