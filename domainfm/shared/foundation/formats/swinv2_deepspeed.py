"""pytorch-caney's DeepSpeed SimMIM checkpoint of a Microsoft-layout SwinV2 (SatVision-TOA's release).

SatVision-TOA (NASA GSFC, arXiv 2411.17000) is published as DeepSpeed's ``mp_rank_00_model_states.pt``:
the model's state dict under ``module``, holding pytorch-caney's SimMIM model (SimMIM: Xie et al., arXiv
2111.09886):

* ``encoder.*``: Microsoft's SwinV2 (Liu et al., arXiv 2111.09883) as pytorch-caney builds it: each stage's
  blocks then its ``downsample`` (PatchMerging), persistent buffers ``relative_position_index``,
  ``relative_coords_table`` and ``attn_mask``, and a LayerNorm ``norm3`` closing every ``NORM_PERIOD``-th
  block of each stage;
* ``encoder.mask_token`` (``[1, 1, embed_dim]``), the SimMIM mask token;
* ``decoder.0.weight/bias``: SimMIM's 1x1 convolution to ``stride^2 x channels`` (then PixelShuffle).

domainfm rebuilds the encoder as timm's plain SwinV2 with periodic norms
(:mod:`domainfm.shared.backbones.periodic_norm`). Keys go through timm's own
``swin_transformer_v2.checkpoint_filter_fn``, which recognises Microsoft's layout (``layers.0.downsample``
present), moves each ``downsample`` to the start of the next stage, and skips the buffers timm recomputes;
those are reported as dropped. The mask token and the decoder are kept beside the backbone as extras
(``mask_token``, ``decoder.0.weight``, ``decoder.0.bias``), so SimMIM pretraining can continue; a
classifier head (``encoder.head.*``) is dropped. Tensors are read one at a time from the memory-mapped file.

``--config`` is pytorch-caney's YAML (``MODEL.SWINV2.EMBED_DIM``, ``DEPTHS``, ``NUM_HEADS``, ``WINDOW_SIZE``,
``PATCH_SIZE``, ``IN_CHANS``, ``NORM_PERIOD``, ``DATA.IMG_SIZE``; defaults as in pytorch-caney's
``configs/config.py``); without it, a single ``*.yaml`` beside the weights is read, else the catalogue's
full-size architecture is assumed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from domainfm.shared.foundation.layouts import Layout, SourceWeights, TargetModel, register_layout
from domainfm.shared.foundation.sources import ConversionError, TensorSource, read_config

ENCODER = "encoder."
MASK_TOKEN = "encoder.mask_token"
DECODER = "decoder."
RECOMPUTED = ("relative_position_index", "relative_coords_table", "attn_mask")
RECOMPUTED_REASON = "buffer recomputed by timm (relative position index, coordinates table, shifted-window mask)"


def _caney_config(path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The YAML config given, else the one ``*.yaml`` beside the weights; ``({}, "")`` when neither."""
    if config:
        return config, "--config"
    folder = path if path.is_dir() else path.parent
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    if len(found) == 1:
        return read_config(found[0]), str(found[0])
    return {}, ""


def _caney_arch(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``create_backbone`` arguments from a pytorch-caney config (keys of ``pytorch_caney/configs/config.py``)."""
    config, where = _caney_config(path, config)
    if not config:
        return {}
    model = config.get("MODEL") or {}
    swin = model.get("SWINV2") or {}
    if not swin:
        raise ConversionError(
            f"config {where} has no MODEL.SWINV2 section; give the pytorch-caney YAML the weights were trained "
            "with (e.g. mim_pretrain_swinv2_satvision_giant_128_onecycle_100ep.yaml)"
        )
    if swin.get("APE"):
        raise ConversionError(f"config {where}: MODEL.SWINV2.APE (absolute position embedding) is not supported")
    if swin.get("PATCH_NORM") is False:
        raise ConversionError(f"config {where}: MODEL.SWINV2.PATCH_NORM false is not supported (timm always norms)")
    if swin.get("NORM_STAGE"):
        raise ConversionError(f"config {where}: MODEL.SWINV2.NORM_STAGE (a norm closing each stage) is not supported")
    arch: dict[str, Any] = {}
    for key, name, kind in (
        ("EMBED_DIM", "embed_dim", int),
        ("DEPTHS", "depths", list),
        ("NUM_HEADS", "num_heads", list),
        ("WINDOW_SIZE", "window_size", int),
        ("PATCH_SIZE", "patch_size", int),
        ("MLP_RATIO", "mlp_ratio", float),
        ("QKV_BIAS", "qkv_bias", bool),
        ("NORM_PERIOD", "extra_norm_period", int),
    ):
        if key in swin:
            arch[name] = [int(v) for v in swin[key]] if kind is list else kind(swin[key])
    windows = swin.get("PRETRAINED_WINDOW_SIZES")
    if windows and any(windows):
        arch["pretrained_window_sizes"] = [int(v) for v in windows]
    in_chans = swin.get("IN_CHANS", model.get("IN_CHANS"))
    if in_chans is not None:
        arch["in_chans"] = int(in_chans)
    if "DROP_PATH_RATE" in model:
        arch["drop_path_rate"] = float(model["DROP_PATH_RATE"])
    size = (config.get("DATA") or {}).get("IMG_SIZE")
    if size is not None:
        arch["img_size"] = int(size)
    return arch


def _lazy(source: TensorSource, key: str) -> Callable[[], torch.Tensor]:
    return lambda: source[key]


def _model_prefix(source: TensorSource) -> str:
    """What precedes ``encoder.`` in the keys (nothing in the release; ``model.`` under a Lightning wrapper)."""
    for key in source:
        if key.endswith("encoder.patch_embed.proj.weight"):
            return key[: -len("encoder.patch_embed.proj.weight")]
    return ""


def _convert_caney(path: Path, config: dict[str, Any], target: TargetModel) -> SourceWeights:
    from timm.models.swin_transformer_v2 import checkpoint_filter_fn

    source = TensorSource(path, unwrap=("module",))
    prefix = _model_prefix(source)
    weights = SourceWeights()
    if prefix:
        weights.notes.append(f"model keys found under {prefix!r}")
    encoder: dict[str, torch.Tensor] = {}  # timm-side placeholder (meta, the source's shape) per encoder key
    for key in source:
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name == MASK_TOKEN:
            weights.extras["mask_token"] = _lazy(source, key)
        elif name.startswith(DECODER):
            weights.extras[name] = _lazy(source, key)
        elif name.startswith(ENCODER + "head."):
            weights.dropped[key] = "classifier head (domainfm builds the encoder without one)"
        elif name.startswith(ENCODER):
            encoder[name[len(ENCODER) :]] = torch.empty(source.shape(key), device="meta")
        else:
            weights.backbone[name] = _lazy(source, key)  # left for the strict check to name
    if not encoder:
        raise ConversionError(
            f"{source.path} has no encoder.* tensors under 'module'; it is not a pytorch-caney SimMIM checkpoint "
            "(SatVision-TOA's mp_rank_00_model_states.pt)"
        )
    stem = encoder.get("patch_embed.proj.weight")
    # the stub has the source's own kernel shape, so timm never resamples: a wrong patch size fails strictly
    stub = SimpleNamespace(patch_embed=SimpleNamespace(proj=SimpleNamespace(weight=stem)))
    renamed = checkpoint_filter_fn(dict(encoder), stub)
    source_of = {id(tensor): ENCODER + name for name, tensor in encoder.items()}
    kept = set()
    for name, tensor in renamed.items():
        original = prefix + source_of[id(tensor)]
        kept.add(original)
        weights.backbone[name] = _lazy(source, original)
    for name in encoder:
        original = prefix + ENCODER + name
        if original not in kept:
            recomputed = any(part in name for part in RECOMPUTED)
            weights.dropped[original] = RECOMPUTED_REASON if recomputed else "skipped by timm's SwinV2 filter"
    return weights


register_layout(
    Layout(
        "satvision_deepspeed",
        "pytorch-caney's DeepSpeed SimMIM checkpoint (mp_rank_00_model_states.pt: module -> encoder.*, "
        "encoder.mask_token, decoder.*); --config: the pytorch-caney YAML it was trained with",
        _caney_arch,
        _convert_caney,
    )
)
