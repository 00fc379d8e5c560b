"""Stable-Diffusion VAE weights -> the SD-layout MONAI ``AutoencoderKL`` of :mod:`.vae`, and back.

GMS (arXiv 2403.18198) uses the first stage of Stable Diffusion 2 frozen. Its weights are not
redistributed with domainfm and nothing downloads: point ``--sd-vae`` at a local copy, either

* a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``), e.g. the
  ``vae/`` folder of ``stabilityai/stable-diffusion-2``; or
* one file with diffusers keys (``encoder.down_blocks...``) or the original LDM keys
  (``encoder.down.0.block.0...``, also inside a full SD checkpoint under ``first_stage_model.``).

The conversion is a table of module renames generated from the config (no guessing by shape): it maps
every diffusers key one-to-one, squeezes LDM's 1x1-conv attention weights into linear ones, and splits
SD's joint ``quant_conv`` into MONAI's mean and log-variance convolutions (both exact, see :mod:`.vae`).
:func:`monai_to_diffusers` is its inverse; the tests check the round trip and that the converted MONAI
model computes what ``diffusers.AutoencoderKL`` computes with the same weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from domainfm.domains.segmentation.vae import SD_VAE, VAEConfig, create_vae
from domainfm.shared.backbones.checkpoint import StateDict, read_state_dict
from domainfm.shared.errors import DomainfmError

RESNET = {"norm1": "norm1", "conv1": "conv1.conv", "norm2": "norm2", "conv2": "conv2.conv"}
RESNET_SHORTCUT = {"conv_shortcut": "nin_shortcut.conv"}
ATTENTION = {"group_norm": "norm", "to_q": "attn.to_q", "to_k": "attn.to_k", "to_v": "attn.to_v"}
ATTENTION_OUT = {"to_out.0": "attn.out_proj"}
OLD_DIFFUSERS_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
IGNORED_PREFIXES = ("loss.", "model_ema.")


class SDVAEError(DomainfmError, ValueError):
    """A file that is not an SD-layout VAE, or does not fit the requested shape."""


def _module_pairs(config: VAEConfig) -> list[tuple[str, str, dict[str, str]]]:
    """``(diffusers prefix, MONAI prefix, leaf renames)`` for every module, in network order."""
    levels, blocks = len(config.channels), config.num_res_blocks
    pairs: list[tuple[str, str, dict[str, str]]] = []
    conv = {"": "conv"}

    def resnet(diffusers: str, monai: str, shortcut: bool) -> None:
        pairs.append((diffusers, monai, {**RESNET, **(RESNET_SHORTCUT if shortcut else {})}))

    def mid(half: str, start: int) -> int:
        resnet(f"{half}.mid_block.resnets.0", f"{half}.blocks.{start}", False)
        pairs.append((f"{half}.mid_block.attentions.0", f"{half}.blocks.{start + 1}", {**ATTENTION, **ATTENTION_OUT}))
        resnet(f"{half}.mid_block.resnets.1", f"{half}.blocks.{start + 2}", False)
        return start + 3

    # encoder: conv_in, levels of res blocks (+ downsample), mid block, norm, SiLU, conv_out
    pairs.append(("encoder.conv_in", "encoder.blocks.0", conv))
    k, width = 1, config.channels[0]
    for level in range(levels):
        for j in range(blocks):
            resnet(f"encoder.down_blocks.{level}.resnets.{j}", f"encoder.blocks.{k}", width != config.channels[level])
            width, k = config.channels[level], k + 1
        if level < levels - 1:
            pairs.append((f"encoder.down_blocks.{level}.downsamplers.0.conv", f"encoder.blocks.{k}.conv", conv))
            k += 1
    k = mid("encoder", k)
    pairs += [
        ("encoder.conv_norm_out", f"encoder.blocks.{k}", {}),
        ("encoder.conv_out", f"encoder.blocks.{k + 2}", conv),
    ]
    # decoder: conv_in, mid block, levels (lowest resolution first) of res blocks (+ upsample), norm, SiLU, conv_out
    pairs.append(("decoder.conv_in", "decoder.blocks.0", conv))
    k = mid("decoder", 1)
    reversed_channels = list(reversed(config.channels))
    width = reversed_channels[0]
    for level in range(levels):
        for j in range(blocks + 1):
            shortcut = width != reversed_channels[level]
            resnet(f"decoder.up_blocks.{level}.resnets.{j}", f"decoder.blocks.{k}", shortcut)
            width, k = reversed_channels[level], k + 1
        if level < levels - 1:
            pairs.append((f"decoder.up_blocks.{level}.upsamplers.0.conv", f"decoder.blocks.{k}.postconv", conv))
            k += 1
    pairs += [
        ("decoder.conv_norm_out", f"decoder.blocks.{k}", {}),
        ("decoder.conv_out", f"decoder.blocks.{k + 2}", conv),
    ]
    pairs.append(("post_quant_conv", "post_quant_conv", conv))
    return pairs


def _key_table(config: VAEConfig) -> dict[str, str]:
    """Diffusers parameter key -> MONAI parameter key, for everything but ``quant_conv``."""
    table = {}
    for diffusers, monai, leaves in _module_pairs(config):
        for leaf_d, leaf_m in (leaves or {"": ""}).items():
            for kind in ("weight", "bias"):
                d = ".".join(p for p in (diffusers, leaf_d, kind) if p)
                table[d] = ".".join(p for p in (monai, leaf_m, kind) if p)
    return table


def diffusers_to_monai(state: StateDict, config: VAEConfig = SD_VAE) -> StateDict:
    """Converts a diffusers-layout VAE state dict to the keys of :func:`.vae.create_vae` ``(config)``."""
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    table, latent = _key_table(config), config.latent_channels
    converted: StateDict = {}
    for key in list(state):
        if key in table:
            converted[table[key]] = state.pop(key)
    for kind in ("weight", "bias"):
        joint = state.pop(f"quant_conv.{kind}", None)
        if joint is not None:
            converted[f"quant_conv_mu.conv.{kind}"] = joint[:latent].clone()
            converted[f"quant_conv_log_sigma.conv.{kind}"] = joint[latent:].clone()
    if state:
        raise SDVAEError(f"{len(state)} keys have no place in the VAE, e.g. {sorted(state)[:6]}")
    return converted


def monai_to_diffusers(state: StateDict, config: VAEConfig = SD_VAE) -> StateDict:
    """Inverse of :func:`diffusers_to_monai`."""
    inverse = {m: d for d, m in _key_table(config).items()}
    converted = {inverse[k]: v for k, v in state.items() if k in inverse}
    for kind in ("weight", "bias"):
        mean, log_var = state[f"quant_conv_mu.conv.{kind}"], state[f"quant_conv_log_sigma.conv.{kind}"]
        converted[f"quant_conv.{kind}"] = torch.cat([mean, log_var])
    return converted


def ldm_to_diffusers(state: StateDict, levels: int) -> StateDict:
    """Original LDM/CompVis VAE keys -> diffusers keys (1x1-conv attention weights become linear)."""
    rules = [
        (r"^(encoder|decoder)\.mid\.block_([12])\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
        (r"^(encoder|decoder)\.mid\.attn_1\.([qkv])\.", lambda m: f"{m[1]}.mid_block.attentions.0.to_{m[2]}."),
        (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (
            r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
            lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.",
        ),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0."),
        (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
    ]
    converted = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if ".attentions.0." in key and key.endswith("weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        converted[key] = value
    return converted


def _normalise_diffusers_keys(state: StateDict) -> StateDict:
    """Drops wrapper prefixes, converts LDM and pre-0.14 diffusers names to current diffusers names."""
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    if any(k.startswith("encoder.down.") for k in state):
        levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
        state = ldm_to_diffusers(state, levels)
    renamed = {}
    for key, value in state.items():
        for old, new in OLD_DIFFUSERS_ATTENTION.items():
            key = key.replace(f".attentions.0.{old}.", f".attentions.0.{new}.")
        renamed[key] = value
    return renamed


def infer_config(state: StateDict, norm_num_groups: int = 32, scaling_factor: float = 0.18215) -> VAEConfig:
    """The :class:`VAEConfig` a diffusers-layout state dict was built with (from its shapes)."""
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks.")})
    if not levels or "post_quant_conv.weight" not in state:
        raise SDVAEError("no encoder.down_blocks.* or post_quant_conv keys: not a Stable-Diffusion VAE")
    channels = tuple(int(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels)
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")})
    return VAEConfig(
        channels=channels,
        num_res_blocks=blocks,
        latent_channels=int(state["post_quant_conv.weight"].shape[0]),
        norm_num_groups=norm_num_groups,
        in_channels=int(state["encoder.conv_in.weight"].shape[1]),
        scaling_factor=scaling_factor,
    )


def load_sd_vae(
    path: str | Path, norm_num_groups: int = SD_VAE.norm_num_groups, scaling_factor: float = SD_VAE.scaling_factor
) -> tuple[torch.nn.Module, VAEConfig]:
    """Builds the SD-layout MONAI VAE from local SD VAE weights (see the module docstring).

    Widths, depth and channels are read from the weights' shapes; GroupNorm groups and the latent scaling
    factor cannot be, so they come from a diffusers ``config.json`` when there is one, else from the
    arguments (SD's 32 and 0.18215 by default).
    """
    path = Path(path)
    norm_groups, scaling = norm_num_groups, scaling_factor
    if path.is_dir():
        config_file = path / "config.json"
        if config_file.is_file():
            meta = json.loads(config_file.read_text())
            norm_groups = int(meta.get("norm_num_groups", norm_groups))
            scaling = float(meta.get("scaling_factor", scaling))
        weights = [path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
        found = [w for w in weights if w.is_file()]
        if not found:
            raise SDVAEError(f"{path} holds no diffusion_pytorch_model.safetensors or .bin: not a diffusers VAE folder")
        path = found[0]
    state = _normalise_diffusers_keys(read_state_dict(path))
    try:
        config = infer_config(state, norm_groups, scaling)
        converted = diffusers_to_monai(state, config)
    except (SDVAEError, KeyError) as error:
        raise SDVAEError(f"{path}: {error}. Give a diffusers VAE folder or an SD/LDM VAE checkpoint.") from error
    vae = create_vae(config)
    expected = vae.state_dict()
    missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
    shapes = [k for k, v in converted.items() if k in expected and expected[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise SDVAEError(
            f"{path} does not fit an SD-layout VAE of {config}: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}, shape mismatches {shapes[:6]}"
        )
    vae.load_state_dict(converted)
    return vae, config
