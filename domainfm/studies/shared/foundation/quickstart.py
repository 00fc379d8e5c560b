"""Quickstart section for foundation weights: two publisher layouts converted and checked against the original.

A tiny UNI (timm ViT-L/16 layout, LayerScale) and a tiny SatVision-TOA release (pytorch-caney's DeepSpeed
layout, bf16, with its SimMIM decoder) are written as their publishers ship them, converted with
``domainfm models convert``'s engine, and reloaded with :func:`load_backbone`. The UNI row compares the
converted encoder with the original timm model on the same input (max abs difference); both rows list what
the converted file carries (tensors, extras kept beside the encoder, the input transform).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch

from domainfm.shared.backbones import load_backbone
from domainfm.shared.foundation.convert import ConversionReport, convert_checkpoint
from domainfm.shared.report import SectionResult

TINY_UNI = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32}
TOLERANCE = 1e-5


def _uni_release(folder: Path, seed: int) -> tuple[Path, Path, torch.nn.Module]:
    """A tiny UNI as its publisher ships it: a timm state dict (``pytorch_model.bin``) and ``config.json``."""
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, dynamic_img_size=True, **TINY_UNI
    ).eval()
    for block in model.blocks:  # LayerScale at 1e-5 would hide a wrong block: make it count
        torch.nn.init.normal_(block.ls1.gamma, std=0.5)
        torch.nn.init.normal_(block.ls2.gamma, std=0.5)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    config = folder / "config.json"
    config.write_text(json.dumps({"architecture": "vit_large_patch16_224", "model_args": TINY_UNI}))
    return folder / "pytorch_model.bin", config, model


def _row(report: ConversionReport, **extra: Any) -> dict[str, Any]:
    return {
        "model": report.model,
        "tensors": report.tensors,
        "kept beside": ", ".join(report.extras) or "-",
        "dropped": len(report.dropped),
        "input": report.transform.describe(),
        **extra,
    }


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """Converts the two tiny releases and checks them (see the module docstring)."""
    from domainfm.studies.remote_sensing.satvision_release import write_satvision_release

    weights, config, original = _uni_release(out_dir / "uni_release", seed)
    uni = convert_checkpoint("uni", weights, out_dir / "uni.safetensors", config)
    x = torch.randn(2, 3, TINY_UNI["img_size"], TINY_UNI["img_size"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        difference = (load_backbone(uni.out).eval()(x) - original(x)).abs().max().item()
    release, release_config = write_satvision_release(out_dir / "satvision_release", img_size=64, dtype=torch.bfloat16)
    satvision = convert_checkpoint("satvision_toa_giant", release, out_dir / "satvision.safetensors", release_config)
    reloaded = load_backbone(satvision.out).eval()
    with torch.no_grad():
        features = reloaded(torch.randn(1, 14, 64, 64))
    table = [
        _row(uni, check=f"max abs diff to the timm original {difference:.1e}"),
        _row(satvision, check=f"reloaded: {tuple(features.shape)} features"),
    ]
    ok = difference < TOLERANCE and "mask_token" in satvision.extras and features.shape[0] == 1
    summary = (
        f"UNI (timm layout) converted and reloaded: max abs difference to the original timm model {difference:.1e} "
        f"(tolerance {TOLERANCE:g}); SatVision-TOA (pytorch-caney DeepSpeed layout, bf16) converted with its "
        f"SimMIM decoder and mask token kept beside the encoder. Real weights: `domainfm models list`, docs/models.md."
    )
    return SectionResult(
        "Foundation weights: convert a publisher's file",
        summary,
        table=table,
        metrics={"uni_max_abs_diff": difference, "satvision_tensors": satvision.tensors},
        ok=ok,
    )
