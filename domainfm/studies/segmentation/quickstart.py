"""Quickstart section for segmentation: GMS vs the UNet on the two-site phantom, with QC pictures.

A small run of ``domainfm segmentation compare`` (GMS, Huo et al., AAAI 2025, arXiv 2403.18198): a tiny
VAE trained on site A's images, GMS and a MONAI UNet trained on site A with the same budget, both scored
on the test splits of site A and site B.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from domainfm.shared.report import SectionResult
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.segmentation.workflow import compare_on_phantom


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """Runs the phantom comparison at a size that takes about two minutes on two CPU cores."""
    rows = compare_on_phantom(
        out_dir / "study",
        n=80,
        size=64,
        vae_epochs=6,
        mapper={"base": 16, "groups": 8},
        epochs=6,
        warmup_epochs=1,
        seed=seed,
        device=str(device),
        progress=False,
    )
    train_images = int((TileStore(out_dir / "study" / "site_a.zarr").index["split"] == SPLITS["train"]).sum())
    figures = []
    for kind in ("gms", "unet"):
        for site in ("site_a", "site_b"):
            source = out_dir / "study" / kind / f"{site}_test.png"
            shutil.copyfile(source, out_dir / f"{kind}_{site}_test.png")
            figures.append(f"{kind}_{site}_test.png")
    summary = (
        "GMS (a latent mapper between a frozen tiny VAE's image and mask latents) and a MONAI UNet, both trained "
        f"for 6 epochs on {train_images} phantom images of site A (ultrasound-like speckle), scored on the test "
        "images of site A and of site B (another texture and contrast). A check of the machinery at toy scale; "
        "`domainfm segmentation compare --config configs/segmentation/compare_phantom.yaml` runs the study "
        "reported in docs/segmentation.md."
    )
    metrics = {f"{r['model']}_dice_a_to_a": r["dice_a_to_a"] for r in rows}
    ok = len(rows) == 2 and all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    return SectionResult("Segmentation (GMS)", summary, rows, figures, metrics, ok)
