"""Region-label sidecars: the class map beside a slide (``FILE.truth.npz``) and the classes under a tile.

``FILE.svs.truth.npz`` holds the class map on a grid of ``truth_downsample`` level-0 pixels per cell
(class ids into :data:`CLASS_NAMES`); :func:`truth_class_fractions` gives the classes under a level-0
rectangle. Tiling (``--truth_labels``) and slide MIL (``--labels truth``) read these sidecars; whatever
writes them (the phantom slides of :mod:`domainfm.studies.pathology.phantom`, or annotations converted to
this layout) supplies the labels, and the library never imports the writer.
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
