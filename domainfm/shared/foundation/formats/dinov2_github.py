"""The original DINOv2 code's layout (facebookresearch/dinov2, torch hub) -> timm ViT.

DINOv2 (Oquab et al., arXiv 2304.07193) checkpoints saved by its own ``DinoVisionTransformer`` (the
``dinov2_vit*14(_reg)`` hub weights, and models trained with that code, e.g. H-optimus-0's original
``checkpoint.pth`` from github.com/bioptimus/releases, if it is in this layout) hold:

* ``cls_token`` ``[1, 1, D]``, ``pos_embed`` ``[1, 1 + N, D]`` (the class token's position first),
  ``register_tokens`` ``[1, R, D]`` with registers (Darcet et al., arXiv 2309.16588), ``mask_token``
  ``[1, D]``, ``patch_embed.proj``, ``norm``;
* ``blocks.i.*`` (or ``blocks.c.i.*`` when trained with ``block_chunks``: chunk ``c`` holds global block
  ``i``), with ``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1/fc2`` or, for
  the SwiGLU FFN, ``mlp.w12``/``mlp.w3`` (timm ``SwiGLUPacked``'s ``fc1``/``fc2``: both compute
  ``silu(x1) * x2``), ``ls2.gamma``.

With registers, timm builds the model with ``no_embed_class=True`` (neither class nor registers take a
position) and the class token absorbs its position: ``cls_token + pos_embed[:, 0]``, ``pos_embed[:, 1:]``
(as timm's own ``_convert_dinov2`` does). Without registers the layout is timm's as is. ``mask_token`` is
kept as extra ``mask_token`` (``[D]``); keys outside the backbone (a training checkpoint's ``dino_head``)
are dropped by name.

The architecture is read from the tensors (width, depth, patch size, input size from ``pos_embed``,
registers, SwiGLU hidden width); the number of heads is not stored in any tensor: ``--config``
``{"num_heads": H}`` gives it, else width / 64 (every published DINOv2 uses 64-wide heads). ``--config``
may also give ``unwrap`` (keys to descend into, e.g. ``["teacher"]``) and any timm argument.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from domainfm.shared.foundation.formats._common import lazy, lazy_apply, mlp_ratio_for
from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout
from domainfm.shared.foundation.sources import ConversionError, TensorSource

PREFIXES = ("", "module.", "backbone.", "teacher.backbone.", "model.", "encoder.")
CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
SWIGLU = {"mlp.w12.weight": "mlp.fc1.weight", "mlp.w12.bias": "mlp.fc1.bias"}
SWIGLU |= {"mlp.w3.weight": "mlp.fc2.weight", "mlp.w3.bias": "mlp.fc2.bias"}


def _source(path: Path, config: dict[str, Any]) -> tuple[TensorSource, str]:
    source = TensorSource(path, unwrap=tuple(config.get("unwrap", ())))
    for prefix in PREFIXES:
        if prefix + "cls_token" in source and prefix + "pos_embed" in source:
            return source, prefix
    raise ConversionError(
        f"{path} has no cls_token and pos_embed (under {', '.join(repr(p) for p in PREFIXES)}): it is not a "
        f"DINOv2 GitHub-layout state dict (first keys: {', '.join(list(source)[:6])}); a training checkpoint "
        'needs --config with {"unwrap": ["teacher"]} (or the key that holds the model)'
    )


def _block_name(name: str) -> tuple[int, str] | None:
    """``(global index, sub-key)`` of a block key, chunked or not; ``None`` for other keys."""
    match = CHUNKED.match(name) or BLOCK.match(name)
    if not match:
        return None
    index, rest = int(match.groups()[-2]), match.groups()[-1]
    return index, SWIGLU.get(rest, rest)


def _github_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    source, prefix = _source(path, config)
    shape = {key[len(prefix) :]: source.shape(key) for key in source if key.startswith(prefix)}
    width = shape["cls_token"][-1]
    patch = shape["patch_embed.proj.weight"]
    blocks = [found for found in map(_block_name, shape) if found]
    depth = 1 + max(index for index, _ in blocks)
    hidden = next(shape[name] for name in shape if (found := _block_name(name)) and found[1] == "mlp.fc1.weight")
    registers = shape.get("register_tokens", (1, 0))[1]
    grid = math.isqrt(shape["pos_embed"][1] - 1)
    arch: dict[str, Any] = {
        "embed_dim": width,
        "depth": depth,
        "num_heads": max(1, width // 64),
        "patch_size": patch[-1],
        "in_chans": patch[1],
        "img_size": grid * patch[-1],
        "mlp_ratio": mlp_ratio_for(hidden[0], width),
        "reg_tokens": registers,
        "no_embed_class": registers > 0,
    }
    if not any(rest == "ls1.gamma" for _, rest in blocks):
        arch["init_values"] = None
    arch.update({k: v for k, v in config.get("model_args", config).items() if k not in ("unwrap", "architecture")})
    return arch


def _convert_github(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    source, prefix = _source(path, config)
    weights = SourceWeights()
    registers = prefix + "register_tokens" in source
    cls_key, pos_key = prefix + "cls_token", prefix + "pos_embed"
    for key in source:
        if not key.startswith(prefix):
            weights.dropped[key] = "outside the backbone (a training checkpoint's heads or optimiser state)"
            continue
        name = key[len(prefix) :]
        block = _block_name(name)
        if block is not None:
            weights.backbone[f"blocks.{block[0]}.{block[1]}"] = lazy(source, key)
        elif name == "cls_token" and registers:
            weights.backbone["cls_token"] = lambda: source[cls_key] + source[pos_key][:, :1]
        elif name == "pos_embed" and registers:
            weights.backbone["pos_embed"] = lazy_apply(source, key, lambda t: t[:, 1:])
        elif name == "register_tokens":
            weights.backbone["reg_token"] = lazy(source, key)
        elif name == "mask_token":
            weights.extras["mask_token"] = lazy_apply(source, key, lambda t: t.reshape(-1))
        elif name.split(".", 1)[0] in ("head", "dino_head", "ibot_head"):
            weights.dropped[key] = "head outside the encoder (domainfm builds the encoder without one)"
        else:
            weights.backbone[name] = lazy(source, key)  # timm's name already, or left for the strict check
    if registers:
        weights.notes.append("registers: class token absorbs its position (timm no_embed_class), as timm converts")
    return weights


register_layout(
    Layout(
        "dinov2_github",
        "a state dict of the original DINOv2 code (facebookresearch/dinov2: cls_token, pos_embed, "
        "register_tokens, blocks[.chunk].i, mlp.w12/w3); architecture read from the tensors, --config "
        '{"num_heads": H} when heads are not 64 wide',
        _github_arch,
        _convert_github,
    )
)
