"""A tiny stand-in for SatVision-TOA's release: a DeepSpeed SimMIM checkpoint in pytorch-caney's layout.

The real release (Hugging Face ``nasa-cisto-data-science-group/satvision-toa-giant-patch8-window8-128``,
arXiv 2411.17000) is 5.3 GB; docs, tests and demos need the same file layout at a width a CPU runs in
seconds. :func:`write_satvision_release` builds a random timm SwinV2 with periodic norms (domainfm's
``satvision_toa_giant`` spec at tiny widths, SwinV2: arXiv 2111.09883) and saves it the way pytorch-caney's
DeepSpeed run saves SatVision-TOA: ``{"module": {...}, "buffer_names": [...], ...}`` with the encoder under
``encoder.*`` in Microsoft's SwinV2 keys (each stage's ``downsample`` at its end, not at the start of the
next as timm has it; the relative-position and attention-mask buffers included), the SimMIM
``encoder.mask_token`` and ``decoder.0`` (1x1 conv to ``32^2 x 14``, then PixelShuffle(32)), plus the
pytorch-caney YAML config (``MODEL.SWINV2.*``, ``NORM_PERIOD``, ``DATA.IMG_SIZE``). pytorch-caney is not
needed; ``tests/shared/foundation/test_satvision_layout.py`` checks the layout against pytorch-caney's
own SwinV2.

Study code: library modules never import it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from torch import nn

from domainfm.domains.remote_sensing.bands import SATVISION_BANDS
from domainfm.shared.backbones import create_backbone

WEIGHTS = "mp_rank_00_model_states.pt"
CONFIG = "mim_pretrain_swinv2_satvision_tiny.yaml"
BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def caney_key(timm_key: str) -> str:
    """A timm SwinV2 key as pytorch-caney names it: ``layers.S.downsample`` (timm) is ``layers.S-1.downsample``."""
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", timm_key)


def write_satvision_release(
    folder: Path,
    img_size: int = 64,
    embed_dim: int = 16,
    depths: tuple[int, ...] = (2, 2, 4, 2),
    num_heads: tuple[int, ...] = (1, 2, 4, 8),
    window_size: int = 4,
    norm_period: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Path, Path]:
    """Writes ``folder/mp_rank_00_model_states.pt`` and its pytorch-caney YAML; returns both paths.

    Args:
        folder: Output folder (created).
        img_size: Chip side (SatVision-TOA: 128).
        embed_dim: First-stage width (SatVision-TOA giant: 512).
        depths: Blocks per stage (giant: 2, 2, 42, 2).
        num_heads: Heads per stage (giant: 16, 32, 64, 128).
        window_size: Attention window (giant: 8).
        norm_period: An extra norm closes every ``norm_period``-th block of a stage (giant: 6).
        seed: Seed of the random weights.
        dtype: Tensor dtype on disk (the release is bfloat16).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone = create_backbone(
        "satvision_toa_giant", in_chans=len(SATVISION_BANDS), img_size=img_size, embed_dim=embed_dim,
        depths=depths, num_heads=num_heads, window_size=window_size, extra_norm_period=norm_period,
    )  # fmt: skip
    with torch.no_grad():  # SwinV2 starts its post-norms at zero (blocks = identity): draw them as after training
        for module in backbone.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.05)
    model = backbone.model
    module: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        module["encoder." + caney_key(key)] = tensor.to(dtype)
    for key, tensor in model.named_buffers():
        if key.endswith(BUFFERS) and tensor is not None:  # persistent in pytorch-caney, recomputed by timm
            module["encoder." + key] = tensor.clone()
    stride = img_size // (img_size // backbone.model.patch_embed.patch_size[0] // 2 ** (len(depths) - 1))
    module["encoder.mask_token"] = (torch.randn(1, 1, embed_dim) * 0.02).to(dtype)
    decoder = nn.Conv2d(backbone.embed_dim, stride**2 * len(SATVISION_BANDS), 1)
    module["decoder.0.weight"] = decoder.weight.detach().to(dtype)
    module["decoder.0.bias"] = decoder.bias.detach().to(dtype)
    weights = folder / WEIGHTS
    torch.save(
        {
            "module": module,
            "buffer_names": [k for k in module if k.endswith(BUFFERS)],
            "ds_config": {"bf16": {"enabled": dtype == torch.bfloat16}, "zero_optimization": {"stage": 2}},
            "ds_version": "0.14.0",
            "optimizer": None,
            "global_steps": 0,
        },
        weights,
    )
    config = {
        "MODEL": {
            "TYPE": "swinv2",
            "NAME": "mim_satvision_pretrain-tiny",
            "DROP_PATH_RATE": 0.1,
            "SWINV2": {
                "IN_CHANS": len(SATVISION_BANDS),
                "EMBED_DIM": embed_dim,
                "DEPTHS": list(depths),
                "NUM_HEADS": list(num_heads),
                "WINDOW_SIZE": window_size,
                "NORM_PERIOD": norm_period,
            },
        },
        "DATA": {"IMG_SIZE": img_size, "MASK_PATCH_SIZE": 8, "MASK_RATIO": 0.6},
    }
    config_path = folder / CONFIG
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return weights, config_path
