"""Hugging Face ``ViTModel`` (transformers) -> timm ViT: Phikon's layout.

Phikon (Filiot et al. 2023, medRxiv doi:10.1101/2023.07.21.23292757; iBOT ViT-B/16) ships a
``ViTModel`` folder: ``model.safetensors``/``pytorch_model.bin`` and ``config.json``. Keys (optionally
under ``vit.``, as in ``ViTForImageClassification``):

* ``embeddings.cls_token`` / ``position_embeddings`` / ``patch_embeddings.projection`` -> ``cls_token`` /
  ``pos_embed`` / ``patch_embed.proj`` (the class token's position is in ``pos_embed``, as in timm);
* ``encoder.layer.i.attention.attention.{query,key,value}`` -> fused ``blocks.i.attn.qkv`` (built lazily,
  rows in q, k, v order), ``attention.output.dense`` -> ``attn.proj``, ``layernorm_before/after`` ->
  ``norm1/norm2``, ``intermediate.dense``/``output.dense`` -> ``mlp.fc1/fc2``; final ``layernorm`` -> ``norm``;
* ``pooler.*`` (a tanh projection of the class token that the published embedding does not use) and a
  ``classifier.*`` head are dropped; ``embeddings.mask_token`` (when present) is kept as extra ``mask_token``.

The embedding is the class token of ``last_hidden_state`` (after the final LayerNorm): timm's ``token``
pooling. ``config.json`` gives the architecture: ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``intermediate_size`` (-> ``mlp_ratio``), ``image_size``, ``patch_size``,
``qkv_bias``. Its ``layer_norm_eps`` (1e-12 in ``ViTModel``; timm's default is 1e-6) is not a timm argument
that JSON metadata can hold: the backbone spec carries it (``phikon``: 1e-12), and a config whose eps is
not 1e-12 is refused rather than converted to a model that differs slightly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.shared.foundation.formats._common import (
    hf_prefix,
    lazy,
    map_hf_blocks,
    mlp_ratio_for,
    published_names,
    route_rest,
)
from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout
from domainfm.shared.foundation.sources import ConversionError, TensorSource, hf_config

SPEC_EPS = 1e-12
BLOCK = {
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    # transformers v5 in-memory names
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def hf_config_for(path: Path, config: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The transformers config (``--config`` or ``config.json`` beside the weights), checked for its type."""
    config = config or hf_config(path)
    if not config:
        raise ConversionError(
            f"{path}: no config.json beside the weights; give the model folder or --config config.json "
            "(the architecture is read from it)"
        )
    found = config.get("model_type")
    if found is not None and found != model_type:
        raise ConversionError(
            f"{path}: config.json is a {found!r} model, not {model_type!r}; this is not the layout of that file "
            "(`domainfm models show NAME` names the layout; --layout picks another)"
        )
    return config


def _vit_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config = hf_config_for(path, config, "vit")
    eps = float(config.get("layer_norm_eps", 1e-12))
    if abs(eps - SPEC_EPS) > 1e-15:
        raise ConversionError(
            f"{path}: config.json has layer_norm_eps {eps:g}; the hf_vit layout rebuilds ViTModel's 1e-12 "
            "(the backbone spec's LayerNorm). Convert a model with another eps through a spec that carries it."
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{path}: hidden_act {config['hidden_act']!r} is not GELU, which timm's ViT uses")
    width = int(config.get("hidden_size", 768))
    return {
        "embed_dim": width,
        "depth": int(config.get("num_hidden_layers", 12)),
        "num_heads": int(config.get("num_attention_heads", 12)),
        "mlp_ratio": mlp_ratio_for(int(config.get("intermediate_size", 4 * width)), width),
        "patch_size": int(config.get("patch_size", 16)),
        "img_size": int(config.get("image_size", 224)),
        "in_chans": int(config.get("num_channels", 3)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
    }


def _convert_vit(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    source = TensorSource(path)
    prefix = hf_prefix(source, "embeddings.cls_token", ("vit.", "model."))
    names = published_names(list(source), prefix)
    weights = SourceWeights()
    used: set[str] = set()
    for name, timm_key in TOP.items():
        if name in names:
            weights.backbone[timm_key] = lazy(source, names[name])
            used.add(name)
    map_hf_blocks(names, source, weights, BLOCK, used)
    if "embeddings.mask_token" in names:
        weights.extras["mask_token"] = lazy(source, names["embeddings.mask_token"])
        used.add("embeddings.mask_token")
    route_rest(
        source, prefix, used, weights, "ViTModel pooler (tanh projection; the published embedding is the class token)"
    )
    weights.notes.append("query/key/value fused into timm's qkv; LayerNorm eps 1e-12 as in ViTModel")
    return weights


register_layout(
    Layout(
        "hf_vit",
        "a Hugging Face ViTModel folder (model.safetensors or pytorch_model.bin + config.json); query/key/value "
        "are fused into timm's qkv; the pooler is dropped",
        _vit_arch,
        _convert_vit,
    )
)
