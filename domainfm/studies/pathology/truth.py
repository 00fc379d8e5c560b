"""Questions tests ask of a phantom slide's ground truth: the grid tiles a perfect tissue detector keeps.

The sidecar format itself (reading it, classes under a rectangle) is library code in
:mod:`domainfm.domains.pathology.region_labels`.
"""

from __future__ import annotations

import math

import numpy as np

from domainfm.domains.pathology.region_labels import _truth_geometry


def _grid_origins(extent: int, tile: float, step: float) -> np.ndarray:
    """Origins ``floor(k * step)`` of the tiles of one axis that fit: ``k * step + tile <= extent``."""
    if tile > extent:
        return np.zeros(0, np.int64)
    count = math.floor((extent - tile) / step + 1e-9) + 1
    return np.floor(np.arange(count) * step + 1e-9).astype(np.int64)


def _integral_at(table: np.ndarray, ys: np.ndarray, xs: np.ndarray, ds: int) -> np.ndarray:
    """Bilinear lookup of a summed-area table of cells at level-0 points (exact for per-cell constants)."""
    fy, fx = ys / ds, xs / ds
    iy = np.minimum(np.floor(fy).astype(int), table.shape[0] - 2)
    ix = np.minimum(np.floor(fx).astype(int), table.shape[1] - 2)
    wy, wx = (fy - iy)[:, None], (fx - ix)[None, :]
    return (
        table[np.ix_(iy, ix)] * (1 - wy) * (1 - wx)
        + table[np.ix_(iy, ix + 1)] * (1 - wy) * wx
        + table[np.ix_(iy + 1, ix)] * wy * (1 - wx)
        + table[np.ix_(iy + 1, ix + 1)] * wy * wx
    )


def truth_tissue_grid(truth: dict, tile_level0: float, step_level0: float, min_tissue: float) -> np.ndarray:
    """Level-0 top-left corners of the grid tiles whose non-background fraction is at least ``min_tissue``.

    Tiles are laid row-major with origins ``floor(k * step_level0)`` (``k = 0, 1, ...``) along each axis
    while ``k * step_level0 + tile_level0 <= `` the slide's extent; their tissue fractions are exact
    (summed-area table of the region map) and equal :func:`truth_class_fractions`' ``1 - fractions[0]``.

    Args:
        truth: A truth dict (see :func:`truth_class_fractions`).
        tile_level0: Tile side (level-0 px).
        step_level0: Grid step (level-0 px).
        min_tissue: Minimum tissue fraction (0-1).

    Returns:
        ``int64`` array ``[N, 2]`` of ``(x, y)``.
    """
    if tile_level0 <= 0 or step_level0 <= 0:
        raise ValueError(f"tile ({tile_level0}) and step ({step_level0}) must be positive")
    regions, ds, slide_w, slide_h = _truth_geometry(truth)
    xs, ys = _grid_origins(slide_w, tile_level0, step_level0), _grid_origins(slide_h, tile_level0, step_level0)
    if not len(xs) or not len(ys):
        return np.zeros((0, 2), np.int64)
    table = np.zeros((regions.shape[0] + 1, regions.shape[1] + 1))
    table[1:, 1:] = (regions > 0).cumsum(0).cumsum(1) * float(ds * ds)
    x_max, y_max = min(slide_w, regions.shape[1] * ds), min(slide_h, regions.shape[0] * ds)
    x_edges = np.clip(np.concatenate([xs, xs + tile_level0]), 0, x_max)
    y_edges = np.clip(np.concatenate([ys, ys + tile_level0]), 0, y_max)
    area = _integral_at(table, y_edges, x_edges, ds)
    nx, ny = len(xs), len(ys)
    tissue = area[ny:, nx:] - area[ny:, :nx] - area[:ny, nx:] + area[:ny, :nx]
    keep = tissue / float(tile_level0) ** 2 >= min_tissue - 1e-9
    rows, cols = np.nonzero(keep)
    return np.stack([xs[cols], ys[rows]], axis=1).astype(np.int64)
