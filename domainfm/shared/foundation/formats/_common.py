"""Helpers the layouts share: lazy tensors, lazily fused tensors, the Hugging Face ViT-block renaming.

Not a layout itself (it registers nothing). Tensors are handed to the writer as callables, so a fused
``qkv`` is built only when it is written and released right after.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from domainfm.shared.foundation.layouts import SourceWeights
from domainfm.shared.foundation.sources import ConversionError, TensorSource

Lazy = Callable[[], torch.Tensor]


def lazy(source: TensorSource, key: str) -> Lazy:
    """The tensor ``key`` of ``source``, read when called."""
    return lambda: source[key]


def lazy_cat(source: TensorSource, keys: list[str], dim: int = 0) -> Lazy:
    """The tensors ``keys`` of ``source`` concatenated along ``dim``, built when called."""
    return lambda: torch.cat([source[key] for key in keys], dim=dim)


def lazy_apply(source: TensorSource, key: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> Lazy:
    """``fn`` of the tensor ``key`` of ``source``, computed when called."""
    return lambda: fn(source[key])


def hf_prefix(source: TensorSource, anchor: str, candidates: tuple[str, ...]) -> str:
    """The wrapper prefix (``""``, ``vit.``, ``dinov2.``, ...) under which ``anchor`` is found."""
    for prefix in ("", *candidates):
        if prefix + anchor in source:
            return prefix
    found = ", ".join(list(source)[:6])
    raise ConversionError(
        f"{source.path} has no {anchor!r} (nor under {', '.join(candidates)}): it is not in this layout "
        f"(first keys: {found}); check `domainfm models show` for the file the model's publisher ships"
    )


# Hugging Face ViT/DINOv2 attention and MLP under transformers' in-memory names (v5), mapped to the names the
# published files use (``save_pretrained`` writes those), so a state dict saved from memory converts as well.
_V5_NAMES: tuple[tuple[str, str], ...] = (
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
)


def published_names(keys: list[str], prefix: str) -> dict[str, str]:
    """Published key -> source key, for keys under ``prefix`` (in-memory v5 names renamed to published)."""
    names: dict[str, str] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for pattern, replacement in _V5_NAMES:
            name = re.sub(pattern, replacement, name)
        names[name] = key
    return names


def map_hf_blocks(
    names: Mapping[str, str],
    source: TensorSource,
    weights: SourceWeights,
    block_map: Mapping[str, str],
    used: set[str],
) -> None:
    """Renames ``encoder.layer.i.*`` to timm's ``blocks.i.*``; query/key/value are fused into ``qkv``.

    Args:
        names: Published key -> source key.
        source: The file.
        weights: Filled in place.
        block_map: Published sub-key (after ``encoder.layer.i.``) -> timm sub-key (after ``blocks.i.``).
        used: Published keys consumed (filled in place).
    """
    layer = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
    for name in names:
        match = layer.match(name)
        if not match:
            continue
        index, rest = match.groups()
        if rest in block_map:
            weights.backbone[f"blocks.{index}.{block_map[rest]}"] = lazy(source, names[name])
            used.add(name)
        elif rest.startswith("attention.attention.query."):
            kind = rest.rsplit(".", 1)[1]
            parts = [f"encoder.layer.{index}.attention.attention.{p}.{kind}" for p in ("query", "key", "value")]
            missing = [part for part in parts if part not in names]
            if missing:
                raise ConversionError(f"{source.path}: {', '.join(missing)} missing (query, key and value are fused)")
            weights.backbone[f"blocks.{index}.attn.qkv.{kind}"] = lazy_cat(source, [names[p] for p in parts])
            used.update(parts)


def mlp_ratio_for(hidden: int, width: int) -> float:
    """The ``mlp_ratio`` for which timm's ``int(width * mlp_ratio)`` is exactly ``hidden``."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def route_rest(source: TensorSource, prefix: str, used: set[str], weights: SourceWeights, pooler: str) -> None:
    """Routes every tensor of a Hugging Face model not yet ``used``.

    The pooler and a classifier head are dropped (``pooler`` says why); anything else goes to the backbone
    under its own name, for the strict check to name.
    """
    for key in source:
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name in used:
            continue
        if name is not None and name.startswith("pooler."):
            weights.dropped[key] = pooler
        elif key.split(".", 1)[0] in ("classifier", "head"):
            weights.dropped[key] = "classifier head (domainfm builds the encoder without one)"
        else:
            weights.backbone[name or key] = lazy(source, key)  # left for the strict check to name
