"""Pictures of predictions at the input's own size: a mask or class map drawn over the input.

Inside a predicted region the picture is tinted (alpha 0.4) in the class's colour and the region's
boundary (pixels of the region with a 4-neighbour outside it) is drawn solid, so small and thin objects
stay visible; background pixels are left as they are. Colours follow matplotlib's ``tab10`` cycle, class 0
being background. PNGs carry a ``Software`` text chunk (``domainfm predict``) and are written through the
caller's staged path (:class:`domainfm.shared.predict.Outputs`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ALPHA = 0.4
SOFTWARE = "domainfm predict"


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` ([H, W] bool) with at least one 4-neighbour outside it (the image edge counts as inside)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def palette(n: int) -> np.ndarray:
    """``n`` RGB uint8 colours from matplotlib's ``tab10`` cycle."""
    from matplotlib import colormaps

    colours = colormaps["tab10"](np.arange(n) % 10)[:, :3]
    return (colours * 255 + 0.5).astype(np.uint8)


def overlay_labels(picture: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """``picture`` ([H, W, 3] uint8) with every class > 0 of ``labels`` ([H, W] int) tinted and outlined."""
    if picture.shape[:2] != labels.shape:
        raise ValueError(f"picture {picture.shape[:2]} and labels {labels.shape} differ in size")
    n_classes = int(n_classes or labels.max() + 1)
    colours = palette(max(n_classes, 2) + 1)[1:]  # class 1 gets the first colour of the cycle
    result = picture.astype(np.float32).copy()
    for value in range(1, n_classes):
        region = labels == value
        if not region.any():
            continue
        colour = colours[value - 1].astype(np.float32)
        result[region] = (1 - ALPHA) * result[region] + ALPHA * colour
        result[boundary(region)] = colour
    return np.clip(result + 0.5, 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """``array`` (uint8 [H, W] or [H, W, 3]) as a PNG marked as written by ``domainfm predict``."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SOFTWARE)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", pnginfo=info)
    return Path(path)
