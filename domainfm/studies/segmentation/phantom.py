"""Phantom segmentation data: lesion-like shapes on textured backgrounds, exact masks, two "sites".

Each image holds one lesion: a star-shaped region whose radius varies with angle by a few random
harmonics (lobulated, like the breast-ultrasound lesions of BUS/BUSI on which GMS reports its largest
gains, arXiv 2403.18198). The mask is the region itself, so it is exact. Two sites differ the way two
scanners do:

* ``site_a``: ultrasound-like: smooth echogenicity with multiplicative speckle, a dark (hypoechoic) lesion
  with a bright rim;
* ``site_b``: another texture and contrast: fibrous oriented stripes with additive noise, a lower-contrast
  lesion without a rim, a different gamma and a colour tint.

A model trained on one site and tested on the other measures cross-domain robustness (the paper's
BUSI -> BUS experiment).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from domainfm.domains.segmentation.shapes import lesion_mask

SITES = ("site_a", "site_b")


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(0, 1, (size, size)), sigma)
    return field / (field.std() + 1e-8)


def render(mask: np.ndarray, site: str, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image of ``mask`` as seen at ``site``."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    size = mask.shape[0]
    if site == "site_a":
        tissue = 0.55 + 0.12 * _smooth(rng, size, size / 8)
        tissue = np.where(mask, tissue * rng.uniform(0.3, 0.45), tissue)
        rim = binary_dilation(mask, iterations=2) & ~mask
        tissue = tissue + 0.18 * rim
        speckle = gaussian_filter(rng.rayleigh(1.0, (size, size)), 0.7)
        grey = tissue * speckle / speckle.mean()
        image = np.repeat(grey[None], 3, axis=0)
    elif site == "site_b":
        yy, xx = np.mgrid[0:size, 0:size] / size
        angle = rng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * rng.uniform(5, 9) * (np.cos(angle) * xx + np.sin(angle) * yy))
        tissue = 0.55 + 0.1 * _smooth(rng, size, size / 5) + 0.07 * stripes
        tissue = np.where(mask, tissue - rng.uniform(0.22, 0.3), tissue)
        grey = np.clip(gaussian_filter(tissue, 1.0) + rng.normal(0, 0.07, (size, size)), 0, 1) ** 0.7
        image = grey[None] * np.array([1.0, 0.85, 0.95])[:, None, None]
    else:
        raise ValueError(f"unknown site {site!r}; choose from {SITES}")
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def write_phantom(out: Path, n: int = 120, size: int = 64, seed: int = 0, sites: tuple[str, ...] = SITES) -> dict:
    """Writes ``out/<site>/images/case_NNNN.png`` and ``out/<site>/masks/case_NNNN.png`` for each site.

    Returns what was written (also saved as ``out/phantom.json``).
    """
    from PIL import Image

    out = Path(out)
    written: dict = {"n": n, "size": size, "seed": seed, "sites": {}}
    for offset, site in enumerate(sites):
        rng = np.random.default_rng([seed, offset])
        images, masks = out / site / "images", out / site / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        fractions = []
        for i in range(n):
            mask = lesion_mask(rng, size)
            Image.fromarray(render(mask, site, rng)).save(images / f"case_{i:04d}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"case_{i:04d}.png")
            fractions.append(float(mask.mean()))
        written["sites"][site] = {
            "images": str(images),
            "masks": str(masks),
            "mean_foreground": float(np.mean(fractions)),
        }
    (out / "phantom.json").write_text(json.dumps(written, indent=2))
    return written
