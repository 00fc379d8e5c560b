"""Tissue detection on a slide thumbnail and the QC picture of what was tiled.

The default of CLAM, slideflow and eva (``shared/methods/pluto.md`` section 3): HSV saturation of a
low-resolution thumbnail, median blur, Otsu threshold (never below a floor, so a slide that is all
background is not split in two by noise), morphological closing, removal of small objects, and filling
of small holes that tissue encloses (TRIDENT's 60 px / 5000 px at 1.25x, i.e. 8 microns per pixel,
scaled to the thumbnail's resolution; background connected to the thumbnail's border is never a hole).
A tile is kept when its tissue fraction reaches ``min_tissue``.

An image with almost no glass (less than ``min_glass_fraction`` of bright, unsaturated pixels: an all-tissue
patch of a patch dataset, or a crop inside the tissue) has no background for Otsu to find; it would split
tissue from tissue. There every pixel that is neither glass-like nor blank (black) is tissue.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import filters, morphology
from skimage.filters import rank
from skimage.segmentation import find_boundaries

from domainfm.shared.outputs import partial_path

# scikit-image loads submodules lazily and that loader is not thread-safe: slides are tiled by parallel
# threads, so everything used is bound here, at import, in one thread.
_OTSU, _CLOSING, _DISK = filters.threshold_otsu, morphology.closing, morphology.disk
_MEDIAN, _SQUARE = rank.median, morphology.footprint_rectangle

REFERENCE_MPP = 8.0  # 1.25x: the resolution TRIDENT's area thresholds are given at


@dataclass(frozen=True)
class TissueParams:
    """Tissue detector settings (recorded in the store)."""

    min_saturation: int = 15
    median: int = 7
    close_radius: int = 2
    min_object_px_at_8mpp: int = 60
    max_hole_px_at_8mpp: int = 5000
    min_tissue: float = 0.5
    min_glass_fraction: float = 0.05  # below this much bright, grey glass the image is all tissue (a patch)
    glass_value: int = 200  # HSV value (brightness) at or above which an unsaturated pixel is glass
    blank_value: int = 10  # HSV value at or below which a pixel is blank (black padding), never tissue

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def tissue_mask(thumbnail: np.ndarray, thumb_mpp: float, params: TissueParams | None = None) -> np.ndarray:
    """Boolean tissue mask of an ``[h, w, 3]`` uint8 thumbnail whose pixels are ``thumb_mpp`` microns."""
    params = params or TissueParams()
    saturation, value = _saturation_value(thumbnail)
    glass = (saturation <= params.min_saturation) & (value >= params.glass_value)
    if glass.mean() < params.min_glass_fraction:  # no glass: Otsu would split tissue from tissue
        return ~glass & (value > params.blank_value)
    del glass, value  # only the saturation is used from here on: each mask-sized array freed when done
    values = saturation
    del saturation
    if params.median > 1:  # a histogram-based rank filter: O(1) per pixel in the window size
        values = _MEDIAN(values, _SQUARE((params.median | 1, params.median | 1)))
    threshold = params.min_saturation
    if values.max() > values.min():
        threshold = max(threshold, float(_OTSU(hist=_histogram_uint8(values))))
    mask = values > threshold
    del values
    if params.close_radius > 0:
        mask = _CLOSING(mask, _DISK(params.close_radius))
    scale = (REFERENCE_MPP / thumb_mpp) ** 2
    mask = remove_small_objects(mask, max(1, int(params.min_object_px_at_8mpp * scale)))
    return fill_enclosed_holes(mask, max(1, int(params.max_hole_px_at_8mpp * scale)))


def _saturation_value(thumbnail: np.ndarray, rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's HSV saturation and value of an ``[h, w, 3]`` thumbnail, converted ``rows`` rows at a time.

    Per pixel, so the same values as one conversion, without a whole HSV image and its Pillow copy (44 MB
    at a 40k-px slide's 2,500-px thumbnail) beside the thumbnail.
    """
    saturation = np.empty(thumbnail.shape[:2], np.uint8)
    value = np.empty(thumbnail.shape[:2], np.uint8)
    for start in range(0, thumbnail.shape[0], rows):
        part = np.asarray(Image.fromarray(np.ascontiguousarray(thumbnail[start : start + rows])).convert("HSV"))
        saturation[start : start + rows] = part[..., 1]
        value[start : start + rows] = part[..., 2]
    return saturation, value


def _histogram_uint8(values: np.ndarray, rows: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's ``histogram(values, source_range="image")`` of a uint8 image, counted in row blocks.

    Counts and bin centres from the image's minimum to its maximum, ``rows`` rows at a time. Handed to
    ``threshold_otsu(hist=...)``: the same threshold, without the int64 copy of the whole image that
    scikit-image's own histogram makes (50 MB at a 40k-px slide's 2,500-px thumbnail).
    """
    counts = component_sizes(values, 255, rows)  # occurrences of each value 0..255
    present = np.flatnonzero(counts)
    low, high = int(present[0]), int(present[-1])
    return counts[low : high + 1], np.arange(low, high + 1)


def component_sizes(labels: np.ndarray, count: int, rows: int = 512) -> np.ndarray:
    """Pixels per label (or value) ``0..count`` of an integer image, ``rows`` rows at a time.

    ``np.bincount`` of the whole image first converts it to int64: on a 40k-px slide's 2,500-px mask that
    copy (50 MB) was the tiler's largest memory cost that grows with the slide.
    """
    sizes = np.zeros(count + 1, np.int64)
    for start in range(0, labels.shape[0], rows):
        sizes += np.bincount(labels[start : start + rows].ravel(), minlength=count + 1)
    return sizes


def remove_small_objects(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``skimage.morphology.remove_small_objects(mask, max_size=max_size)``, in less memory.

    4-connected objects of at most ``max_size`` pixels are removed; the sizes are counted in row blocks
    (:func:`component_sizes`).
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.copy()
    small = component_sizes(labels, count) <= max_size
    small[0] = False
    return mask & ~small[labels]


def fill_enclosed_holes(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Fills holes of at most ``max_size`` pixels that tissue encloses; background touching the border stays.

    (On a small slide the whole glass area can be smaller than the hole limit; it is never a hole.)
    """
    holes, count = ndimage.label(~mask)
    if count == 0:
        return mask
    sizes = component_sizes(holes, count)
    fill = sizes <= max_size
    fill[0] = False
    fill[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    return mask | fill[holes]


def tissue_fractions(mask: np.ndarray, downsample: float, coords: np.ndarray, side_level0: float) -> np.ndarray:
    """Tissue fraction of each square tile (level-0 top-left ``coords`` ``[N, 2]``, side in level-0 px).

    Tiles are measured on the mask (pixel ``i`` covers level-0 ``[i*downsample, (i+1)*downsample)``) with
    a summed-area table; the part of a tile outside the mask counts as background.
    """
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    # int32 and summed in place: one table of the mask's size, not four int64 temporaries (about 140 MB at a
    # 40k-px slide's 2,500-px mask); exact, since a thumbnail has at most 8192**2 < 2**31 pixels
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int32)
    inner = table[1:, 1:]
    inner[...] = mask
    np.cumsum(inner, axis=0, out=inner)
    np.cumsum(inner, axis=1, out=inner)
    h, w = mask.shape
    x0 = np.clip(np.round(coords[:, 0] / downsample).astype(np.int64), 0, w)
    y0 = np.clip(np.round(coords[:, 1] / downsample).astype(np.int64), 0, h)
    x1 = np.clip(np.round((coords[:, 0] + side_level0) / downsample).astype(np.int64), 0, w)
    y1 = np.clip(np.round((coords[:, 1] + side_level0) / downsample).astype(np.int64), 0, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = np.maximum(1.0, (side_level0 / downsample) ** 2)
    return np.clip(inside / area, 0.0, 1.0).astype(np.float32)


def _legend_font(size: int) -> Any:
    """Pillow's bundled scalable font at ``size`` px (its fixed bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def write_qc_png(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    downsample: float,
    grids: dict[float, tuple[np.ndarray, float]],
    out: Path,
    title: str,
    max_side: int = 1600,
) -> Path:
    """Thumbnail with the tissue outline (green) and each scale's kept tiles (one colour per mpp), atomically.

    Args:
        thumbnail: ``[h, w, 3]`` uint8.
        mask: Tissue mask of the same size.
        downsample: Level-0 px per thumbnail px.
        grids: ``mpp -> (kept level-0 coords [N, 2], tile side in level-0 px)``.
        out: PNG path.
        title: First line of the legend.
        max_side: The picture is scaled up (or down) to this longer side.
    """
    colours = [(0, 90, 255), (255, 140, 0), (200, 0, 200), (0, 170, 170)]
    scale = max_side / max(thumbnail.shape[:2])
    picture = Image.fromarray(thumbnail).resize(
        (max(1, round(thumbnail.shape[1] * scale)), max(1, round(thumbnail.shape[0] * scale))), Image.NEAREST
    )
    outline = np.asarray(Image.fromarray(find_boundaries(mask, mode="inner")).resize(picture.size, Image.NEAREST))
    pixels = np.array(picture)
    pixels[outline] = (0, 200, 0)
    picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    legend = [title]
    for i, (mpp, (coords, side)) in enumerate(sorted(grids.items())):
        colour = colours[i % len(colours)]
        k = scale / downsample
        for x, y in coords:
            draw.rectangle([x * k, y * k, (x + side) * k - 1, (y + side) * k - 1], outline=colour)
        legend.append(f"{mpp:g} mpp: {len(coords)} tiles")
    font = _legend_font(max(12, max_side // 60))
    line_height = font.size + 4 if hasattr(font, "size") else 12
    width = max(draw.textlength(line, font=font) for line in legend)
    draw.rectangle([0, 0, 10 + width, 6 + line_height * len(legend)], fill=(255, 255, 255))
    for i, line in enumerate(legend):
        colour = (0, 0, 0) if i == 0 else colours[(i - 1) % len(colours)]
        draw.text((5, 3 + line_height * i), line, fill=colour, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)  # unique to this run: never a user's own file
    picture.save(partial, format="PNG", compress_level=3)  # twice as fast to write as the default 6, 20 % larger
    os.replace(partial, out)
    return out
