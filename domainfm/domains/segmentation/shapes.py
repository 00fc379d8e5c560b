"""Lesion-like shapes: lobulated star-shaped regions, the masks GMS' VAE learns to reconstruct.

A shape's radius varies with angle by a few random harmonics (lobulated, like the breast-ultrasound
lesions of BUS/BUSI, arXiv 2403.18198). The VAE warm-up (:func:`.train.random_shapes`) draws them, and
the phantom images of :mod:`domainfm.studies.segmentation.phantom` put one on each image.
"""

from __future__ import annotations

import numpy as np


def lesion_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A lobulated star-shaped region (bool ``[size, size]``)."""
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    radius = rng.uniform(0.12, 0.24) * size
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    angle = np.arctan2(yy - cy, xx - cx)
    boundary = np.ones_like(angle)
    for k in range(2, 6):
        boundary += rng.uniform(0, 0.12) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) < radius * boundary
