"""open_clip's CLIP with a timm image trunk -> timm ViT plus the projection: BiomedCLIP's layout.

BiomedCLIP (Zhang et al., arXiv 2303.00915) ships ``open_clip_pytorch_model.bin`` and
``open_clip_config.json`` (``model_cfg.vision_cfg``: ``timm_model_name: vit_base_patch16_224``,
``timm_pool: ""``, ``timm_proj: linear``). open_clip's ``TimmModel`` then keeps the trunk's own pooling
(timm's ``token``: the class token after the final norm) and applies ``head.proj`` (no bias), so
``encode_image(x) = trunk(x) @ proj.T``. Keys:

* ``visual.trunk.*``: timm's own keys -> the backbone;
* ``visual.head.proj.weight`` ``[E, D]`` -> extra ``proj`` (the image embedding is ``Backbone(x) @ proj.T``);
* everything else (the text tower ``text.*`` -- PubMedBERT for BiomedCLIP -- or a native CLIP text tower's
  top-level keys, ``logit_scale``, ``logit_bias``) -> extras under ``text.`` (``logit_scale`` keeps its
  name), so zero-shot classification can use them later; nothing is dropped but a classifier head.

The trunk's architecture is read from the config's ``timm_model_name`` (its width, depth, heads, patch,
MLP ratio and input size, read off timm's registered model built on the meta device: open_clip's
``TimmModel`` builds the trunk at timm's default size, whatever ``image_size`` says). Other
``timm_pool``/``timm_proj`` settings (attention pooling, an MLP projection) are refused with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from domainfm.shared.foundation.formats._common import lazy, mlp_ratio_for
from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout
from domainfm.shared.foundation.sources import ConversionError, TensorSource, read_config

CONFIG_FILES = ("open_clip_config.json", "config.json")
TRUNK = "visual.trunk."


def open_clip_vision_cfg(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``vision_cfg`` from ``--config`` or the ``open_clip_config.json`` beside the weights."""
    if not config:
        folder = path if path.is_dir() else path.parent
        found = next((folder / name for name in CONFIG_FILES if (folder / name).is_file()), None)
        if found is None:
            raise ConversionError(
                f"{path}: no open_clip_config.json beside the weights; give --config open_clip_config.json "
                "(the model's own config names its timm trunk)"
            )
        config = read_config(found)
    model_cfg = config.get("model_cfg", config)
    vision = model_cfg.get("vision_cfg")
    if not isinstance(vision, dict) or "timm_model_name" not in vision:
        raise ConversionError(
            f"{path}: the open_clip config has no vision_cfg.timm_model_name; the open_clip layout converts "
            "CLIP models whose image tower is a timm trunk (BiomedCLIP)"
        )
    pool, proj = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
    if pool not in ("", None) or proj != "linear":
        raise ConversionError(
            f"{path}: vision_cfg timm_pool={pool!r}, timm_proj={proj!r}; the open_clip layout converts the trunk's "
            "own pooling followed by a linear projection (timm_pool '', timm_proj 'linear'), as BiomedCLIP"
        )
    return vision


def _open_clip_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    import timm

    vision = open_clip_vision_cfg(path, config)
    try:
        with torch.device("meta"):
            trunk = timm.create_model(vision["timm_model_name"], pretrained=False, num_classes=0)
    except RuntimeError as error:  # timm: unknown model
        raise ConversionError(f"{path}: timm does not know the trunk {vision['timm_model_name']!r}: {error}") from error
    width = int(trunk.embed_dim)
    # open_clip's TimmModel builds the trunk at timm's own size (it does not pass image_size to timm)
    size = trunk.patch_embed.img_size
    return {
        "embed_dim": width,
        "depth": len(trunk.blocks),
        "num_heads": int(trunk.blocks[0].attn.num_heads),
        "patch_size": int(trunk.patch_embed.patch_size[0]),
        "mlp_ratio": mlp_ratio_for(int(trunk.blocks[0].mlp.fc1.out_features), width),
        "img_size": int(size if isinstance(size, int) else size[0]),
    }


def _convert_open_clip(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    source = TensorSource(path, unwrap=tuple(config.get("unwrap", ())))
    keys = list(source)
    prefix = next((p for p in ("", "module.") if any(k.startswith(p + TRUNK) for k in keys)), None)
    if prefix is None:
        raise ConversionError(
            f"{path} has no visual.trunk.* keys: not an open_clip model with a timm image trunk "
            f"(first keys: {', '.join(keys[:6])})"
        )
    weights = SourceWeights()
    for key in keys:
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name.startswith(TRUNK):
            trunk_key = name[len(TRUNK) :]
            if trunk_key.split(".", 1)[0] == "head" and trunk_key not in target.shapes:
                weights.dropped[key] = "trunk classifier head (open_clip resets it; domainfm builds none)"
            else:
                weights.backbone[trunk_key] = lazy(source, key)
        elif name == "visual.head.proj.weight":
            weights.extras["proj"] = lazy(source, key)
        elif name == "visual.head.proj.bias":
            weights.extras["proj_bias"] = lazy(source, key)
        elif name.startswith("visual."):
            weights.backbone[name] = lazy(source, key)  # an image-tower tensor this layout does not know: named
        elif name in ("logit_scale", "logit_bias"):
            weights.extras[name] = lazy(source, key)
        else:
            weights.extras[name if name.startswith("text.") else "text." + name] = lazy(source, key)
    weights.notes.append("image embedding = Backbone(x) @ extra proj.T (open_clip encode_image, unnormalised)")
    return weights


register_layout(
    Layout(
        "open_clip",
        "an open_clip CLIP with a timm image trunk (open_clip_pytorch_model.bin + open_clip_config.json): "
        "visual.trunk -> backbone, visual.head.proj -> extra proj, the text tower and logit_scale kept as extras",
        _open_clip_arch,
        _convert_open_clip,
    )
)
