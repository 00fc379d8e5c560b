"""Ground truth of phantom slides: the class map beside each slide and the questions tests ask of it.

``FILE.svs.truth.npz`` holds the class map on a grid of ``truth_downsample`` level-0 pixels per cell
(class ids into :data:`CLASS_NAMES`); :func:`truth_class_fractions` gives the classes under a level-0
rectangle and :func:`truth_tissue_grid` the grid tiles a perfect tissue detector would keep.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "tumor", "stroma", "lymphocytes", "fat")
TRUTH_SUFFIX = ".truth.npz"


# ---------------------------------------------------------------------------------------------- truth


def read_truth(path: Path) -> dict:
    """Loads the ground truth of a phantom slide.

    Args:
        path: The slide (``FILE.svs``, whose ``FILE.svs.truth.npz`` is read) or the ``.npz`` itself.

    Returns:
        ``regions`` (uint8 class ids per cell), ``truth_downsample`` (int, level-0 px per cell),
        ``class_names`` (tuple of str), ``mpp`` (float, NaN when the slide has none), ``size``
        (``(width, height)``), ``slide_label`` (1 when tumor is present, else 0) and ``seed`` (int).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + TRUTH_SUFFIX)
    with np.load(path, allow_pickle=False) as npz:
        return {
            "regions": npz["regions"],
            "truth_downsample": int(npz["truth_downsample"]),
            "class_names": tuple(str(name) for name in npz["class_names"]),
            "mpp": float(npz["mpp"]),
            "size": tuple(int(v) for v in npz["size"]),
            "slide_label": int(npz["slide_label"]),
            "seed": int(npz["seed"]),
        }


def _truth_geometry(truth: dict) -> tuple[np.ndarray, int, int, int]:
    """``(regions, ds, width, height)`` of a truth dict; the size defaults to the map's extent."""
    regions = np.asarray(truth["regions"])
    ds = int(truth["truth_downsample"])
    width, height = truth.get("size", (regions.shape[1] * ds, regions.shape[0] * ds))
    return regions, ds, int(width), int(height)


def _overlaps(start: float, stop: float, ds: int) -> tuple[int, np.ndarray]:
    """First cell and per-cell overlap lengths of the interval ``[start, stop)`` on a grid of ``ds``."""
    first = math.floor(start / ds)
    edges = np.arange(first, math.ceil(stop / ds) + 1, dtype=np.float64) * ds
    return first, np.minimum(edges[1:], stop) - np.maximum(edges[:-1], start)


def truth_class_fractions(truth: dict, x: int, y: int, width: float, height: float) -> np.ndarray:
    """Fraction of each class inside a level-0 rectangle, from the region map (exact, area weighted).

    Area outside the slide counts as background.

    Args:
        truth: A truth dict (:func:`read_truth`), or any dict with ``regions`` and ``truth_downsample``
            (and optionally ``size``, which defaults to the map's extent).
        x: Left edge (level 0).
        y: Top edge (level 0).
        width: Width (level 0).
        height: Height (level 0).

    Returns:
        ``float64`` array of ``len(CLASS_NAMES)`` fractions summing to 1.

    Raises:
        ValueError: If the rectangle is empty.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"empty rectangle {width}x{height}")
    regions, ds, slide_w, slide_h = _truth_geometry(truth)
    x0, x1 = np.clip([x, x + width], 0, min(slide_w, regions.shape[1] * ds))
    y0, y1 = np.clip([y, y + height], 0, min(slide_h, regions.shape[0] * ds))
    fractions = np.zeros(max(len(CLASS_NAMES), int(regions.max(initial=0)) + 1))
    if x1 > x0 and y1 > y0:
        c0, wx = _overlaps(float(x0), float(x1), ds)
        r0, wy = _overlaps(float(y0), float(y1), ds)
        cells = regions[r0 : r0 + len(wy), c0 : c0 + len(wx)]
        fractions += np.bincount(cells.ravel(), np.outer(wy, wx).ravel(), minlength=len(fractions))
    fractions[0] += width * height - fractions.sum()
    return fractions / (width * height)


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
