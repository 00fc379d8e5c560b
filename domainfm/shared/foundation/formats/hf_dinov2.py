"""Hugging Face ``Dinov2Model`` (transformers) -> timm ViT: RAD-DINO's and Phikon-v2's layout.

DINOv2 (Oquab et al., arXiv 2304.07193) as transformers stores it; RAD-DINO (Perez-Garcia et al., arXiv
2401.10815) and Phikon-v2 (Filiot et al., arXiv 2409.09173) ship such folders (``model.safetensors`` +
``config.json``). Keys (optionally under ``dinov2.``):

* ``embeddings.cls_token`` / ``position_embeddings`` / ``patch_embeddings.projection`` -> ``cls_token`` /
  ``pos_embed`` (class position included, as in timm's DINOv2 models) / ``patch_embed.proj``;
* ``encoder.layer.i.norm1/norm2`` -> ``blocks.i.norm1/norm2``; ``attention.attention.{query,key,value}``
  -> fused ``attn.qkv`` (built lazily); ``attention.output.dense`` -> ``attn.proj``;
  ``layer_scale1/2.lambda1`` -> ``ls1/ls2.gamma``; ``mlp.fc1/fc2`` -> ``mlp.fc1/fc2``, or with
  ``use_swiglu_ffn`` ``mlp.weights_in/weights_out`` -> timm ``SwiGLUPacked``'s ``mlp.fc1/fc2`` (gate first,
  as both compute ``silu(x1) * x2``); final ``layernorm`` -> ``norm``;
* ``embeddings.mask_token`` (``[1, D]``) is kept as extra ``mask_token`` (``[D]``: what
  ``Backbone.forward_features(mask=..., mask_token=...)`` takes, for continued DINOv2/iBOT pretraining).

The embedding is the class token of ``last_hidden_state`` (after the final LayerNorm; ``pooler_output``
is the same tensor): timm's ``token`` pooling. ``config.json`` gives ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``mlp_ratio``, ``patch_size``, ``image_size``,
``layerscale_value``, ``qkv_bias``, ``layer_norm_eps`` (1e-6, timm's; another value is refused) and
``use_swiglu_ffn`` (its hidden width is rounded as DINOv2 rounds it). Position embeddings are converted as
stored, for ``image_size``; other input sizes interpolate them (timm and transformers interpolate
differently, so outputs agree exactly at the native size only). ``Dinov2WithRegistersModel`` files are
refused with the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from domainfm.shared.foundation.formats._common import (
    hf_prefix,
    lazy,
    lazy_apply,
    map_hf_blocks,
    mlp_ratio_for,
    published_names,
    route_rest,
)
from domainfm.shared.foundation.formats.hf_vit import TOP, hf_config_for
from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout
from domainfm.shared.foundation.sources import ConversionError, TensorSource

BLOCK = {
    **{f"norm{i}.{p}": f"norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")},
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    **{f"mlp.{fc}.{p}": f"mlp.{fc}.{p}" for fc in ("fc1", "fc2") for p in ("weight", "bias")},
    **{f"mlp.weights_in.{p}": f"mlp.fc1.{p}" for p in ("weight", "bias")},
    **{f"mlp.weights_out.{p}": f"mlp.fc2.{p}" for p in ("weight", "bias")},
    **{f"mlp.down_proj.{p}": f"mlp.fc2.{p}" for p in ("weight", "bias")},  # transformers v5 in-memory SwiGLU
}


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU hidden width: ``int(width * mlp_ratio)``, two thirds of it, rounded up to 8."""
    return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _dinov2_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config = hf_config_for(path, config, "dinov2")
    eps = float(config.get("layer_norm_eps", 1e-6))
    if abs(eps - 1e-6) > 1e-12:
        raise ConversionError(f"{path}: layer_norm_eps {eps:g} in config.json; timm's DINOv2 blocks use 1e-6")
    if config.get("hidden_act", "gelu") != "gelu" and not config.get("use_swiglu_ffn", False):
        raise ConversionError(f"{path}: hidden_act {config['hidden_act']!r} is not GELU, which timm's ViT uses")
    width = int(config.get("hidden_size", 768))
    ratio = float(config.get("mlp_ratio", 4))
    arch: dict[str, Any] = {
        "embed_dim": width,
        "depth": int(config.get("num_hidden_layers", 12)),
        "num_heads": int(config.get("num_attention_heads", 12)),
        "patch_size": int(config.get("patch_size", 14)),
        "img_size": int(config.get("image_size", 518)),
        "in_chans": int(config.get("num_channels", 3)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "init_values": float(config.get("layerscale_value", 1.0)),
        "reg_tokens": 0,  # Dinov2Model has none; its class token's position is in the position embedding
        "no_embed_class": False,
    }
    # SwiGLUPacked's fc1 packs both halves: its mlp_ratio is twice the (rounded) hidden width over the width.
    arch["mlp_ratio"] = mlp_ratio_for(2 * swiglu_hidden(width, ratio), width) if config.get("use_swiglu_ffn") else ratio
    return arch


def _convert_dinov2(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    source = TensorSource(path)
    prefix = hf_prefix(source, "embeddings.cls_token", ("dinov2.", "model."))
    names = published_names(list(source), prefix)
    if "embeddings.register_tokens" in names:
        raise ConversionError(
            f"{path} is a Dinov2WithRegistersModel (embeddings.register_tokens); the hf_dinov2 layout converts "
            "Dinov2Model. Save it with the original DINOv2 code's keys and use --layout dinov2_github."
        )
    weights = SourceWeights()
    used: set[str] = set()
    for name, timm_key in TOP.items():
        if name in names:
            weights.backbone[timm_key] = lazy(source, names[name])
            used.add(name)
    map_hf_blocks(names, source, weights, BLOCK, used)
    _v5_swiglu(names, source, weights, used)
    if "embeddings.mask_token" in names:
        weights.extras["mask_token"] = lazy_apply(source, names["embeddings.mask_token"], lambda t: t.reshape(-1))
        used.add("embeddings.mask_token")
    route_rest(source, prefix, used, weights, "pooler (the published embedding is the class token)")
    weights.notes.append("query/key/value fused into timm's qkv; LayerScale lambda1 -> gamma")
    return weights


def _v5_swiglu(names: dict[str, str], source: TensorSource, weights: SourceWeights, used: set[str]) -> None:
    """The in-memory SwiGLU of transformers v5 (``gate_proj``, ``up_proj``) -> packed ``fc1`` (gate rows first)."""
    for name in list(names):
        if ".mlp.gate_proj." not in name:
            continue
        up = name.replace(".gate_proj.", ".up_proj.")
        index, kind = name.split(".")[2], name.rsplit(".", 1)[1]
        keys = [names[name], names[up]]
        weights.backbone[f"blocks.{index}.mlp.fc1.{kind}"] = lambda keys=keys: torch.cat([source[k] for k in keys])
        used.update((name, up))


register_layout(
    Layout(
        "hf_dinov2",
        "a Hugging Face Dinov2Model folder (model.safetensors or pytorch_model.bin + config.json); query/key/"
        "value fused into timm's qkv, LayerScale lambda1 -> gamma, mask_token kept beside the backbone",
        _dinov2_arch,
        _convert_dinov2,
    )
)
