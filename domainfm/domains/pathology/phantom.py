"""Phantom whole-slide images: pyramidal Aperio SVS files of H&E-like tissue with a ground-truth region map.

No PyPI package ships a whole-slide image, so tests, the quickstart, the tutorial and the tiling benchmark
write their own: a tiled, JPEG-compressed, pyramidal TIFF laid out as an Aperio ScanScope writes it, which
OpenSlide opens as vendor ``aperio`` with ``openslide.mpp-x``/``mpp-y`` and ``openslide.objective-power``.

Layout (what OpenSlide's aperio driver expects): the first IFD is level 0, tiled, its ImageDescription
starting with ``Aperio Image Library`` and carrying ``|AppMag = ..|MPP = ..`` key-value pairs; the second
IFD is a small *stripped* thumbnail (OpenSlide's associated image ``thumbnail``); every further tiled IFD
is a pyramid level, each 4x smaller than the one before, down to ~512 px on the longer side.

The scene: a few irregular tissue blobs covering 40-60% of the slide on near-white glass (low HSV
saturation, so Otsu on saturation finds the tissue), split by a warped Voronoi partition into tumor,
stroma, lymphocytes and fat (no tumor when ``tumor=False``). Each class has its own periodic 512x512
texture, coloured with the Beer-Lambert stain model from Ruifrok's H&E optical densities, with sizes in
microns so they scale with the slide's mpp:

* tumor: large, dense, purple, slightly elliptic nuclei with chromatin texture on pink cytoplasm;
* stroma: wavy pink fibres with sparse thin spindle nuclei;
* lymphocytes: dense small round dark-blue nuclei;
* fat: near-white vacuoles with pink walls and a few flat nuclei. Fat counts as tissue in the truth,
  so it is drawn detectable: vacuoles smaller than real adipocytes (~30 um across instead of 50-150 um)
  with thick (~5 um) deep-pink walls give fat a mean HSV saturation of ~0.26, over ten times the glass's
  (~0.02) and most of the other tissue's (~0.33), so Otsu on a thumbnail's saturation puts fat with the
  tissue, clear of the threshold (thin walls, ~0.12, fall on the glass's side of it; ~0.19 right on it).

The ground truth is the class map on a grid of ``truth_downsample`` level-0 pixels per cell (8, doubled
while the map would exceed 2048 cells a side); a level-0 pixel ``(x, y)`` shows the texture of class
``regions[y // ds, x // ds]`` exactly. It is written beside the slide as ``FILE.svs.truth.npz``
(:func:`read_truth`); :func:`truth_class_fractions` and :func:`truth_tissue_grid` answer the questions a
tiler's tests ask of it.

Writing is fast and memory bounded: level 0 is rendered one band of tile rows at a time (a gather from
the packed textures, :func:`render_band`, in a background thread one band ahead), each band's tiles are
JPEG-encoded by a thread pool straight from the RGBA pixels and handed to ``tifffile`` as an iterator of
encoded tiles, and each band is 4x4 block-averaged into level 1 (1/16 of the pixels, an ``np.memmap``
beside the output when over 256 MB); the lower levels are averaged from level 1. Memory therefore grows
with the slide's width (a few bands) and level 1, not with level 0: a 20000x20000 slide peaks under
0.5 GB. Level 0 uses 4:2:0 chroma subsampling (as tifffile does by default), the lower levels 4:4:4.
Both files appear atomically (temporary name, then ``os.replace``), so a killed run leaves nothing that
looks complete.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "tumor", "stroma", "lymphocytes", "fat")
TRUTH_SUFFIX = ".truth.npz"

PERIOD = 512  # texture period (px); a power of two so that pixel -> texel is a shift and a mask
PERIOD_BITS = 9
APERIO_HEADER = "Aperio Image Library v12.0.0 \r\n"
MIN_LEVEL_SIDE = 512  # pyramid levels are added while their longer side is at least this
LEVEL_STEP = 4
# JPEG chroma subsampling: 4:2:0 at level 0 (small files, error ~2 grey levels); 4:4:4 on the lower
# levels, whose pixels are dense with detail (4:2:0 would cost ~5 grey levels there)
LEVEL0_CHROMA = (2, 2)
MEMMAP_BYTES = 256 * 2**20  # level 1 larger than this lives in a temporary np.memmap
MAX_TRUTH_SIDE = 2048
GLASS = np.array([242.0, 240.0, 244.0])  # near-white slide background (RGB)
# Ruifrok & Johnston optical-density vectors of haematoxylin and eosin (R, G, B)
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])


@dataclass
class PhantomSlide:
    """A phantom slide on disk.

    Attributes:
        path: The ``.svs`` file.
        truth_path: Its ground truth, ``path`` + :data:`TRUTH_SUFFIX`.
        size: ``(width, height)`` of level 0 in pixels.
        mpp: Microns per level-0 pixel, or None when the slide carries none.
        downsamples: Downsample of each pyramid level, e.g. ``[1, 4, 16]``.
    """

    path: Path
    truth_path: Path
    size: tuple[int, int]
    mpp: float | None
    downsamples: list[int]


# ---------------------------------------------------------------------------------------------- textures


def _blurred_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Periodic Gaussian-blurred white noise of ``shape``, zero mean and unit standard deviation.

    The blur (``sigma`` px, or ``(rows, cols)``) is applied in the Fourier domain, which wraps around by
    construction and costs the same for any ``sigma``.
    """
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]
    transfer = np.exp(-2 * np.pi**2 * ((sy * fy) ** 2 + (sx * fx) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * transfer, s=shape)
    return (field - field.mean()) / (field.std() + 1e-9)


def _periodic_noise(rng: np.random.Generator, sigma: float | tuple[float, float]) -> np.ndarray:
    """Blurred noise on the periodic texture grid (:func:`_blurred_noise`)."""
    return _blurred_noise(rng, (PERIOD, PERIOD), sigma)


def _draw_nuclei(
    canvas: np.ndarray,
    rng: np.random.Generator,
    count: int,
    radius_px: tuple[float, float],
    aspect: tuple[float, float],
    density: tuple[float, float],
    angle: Callable[[int], np.ndarray] | None = None,
) -> None:
    """Draws ``count`` anti-aliased filled ellipses of stain density into a periodic ``canvas`` (max-blend).

    Args:
        canvas: Periodic ``[PERIOD, PERIOD]`` density map, modified in place.
        rng: Random generator.
        count: Number of ellipses.
        radius_px: Range of the semi-major axis (px).
        aspect: Range of the minor/major axis ratio.
        density: Range of the peak stain density.
        angle: Draws ``n`` orientations (radians); uniform when None.
    """
    centres = rng.uniform(0, PERIOD, (count, 2))
    majors = rng.uniform(*radius_px, count)
    minors = majors * rng.uniform(*aspect, count)
    angles = angle(count) if angle is not None else rng.uniform(0, np.pi, count)
    peaks = rng.uniform(*density, count)
    half = math.ceil(majors.max()) + 2
    offsets = np.arange(-half, half + 1)
    corner = np.floor(centres).astype(int)
    dy = (offsets[None, :] + (corner[:, 0] - centres[:, 0])[:, None])[:, :, None]  # [n, side, 1]
    dx = (offsets[None, :] + (corner[:, 1] - centres[:, 1])[:, None])[:, None, :]  # [n, 1, side]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    u = (dx * cos + dy * sin) / majors[:, None, None]
    v = (dy * cos - dx * sin) / minors[:, None, None]
    masks = np.clip((1.0 - np.sqrt(u * u + v * v)) * minors[:, None, None] + 0.5, 0.0, 1.0) * peaks[:, None, None]
    rows = ((corner[:, 0, None] + offsets) % PERIOD)[:, :, None]
    cols = ((corner[:, 1, None] + offsets) % PERIOD)[:, None, :]
    np.maximum.at(canvas, (np.broadcast_to(rows, masks.shape), np.broadcast_to(cols, masks.shape)), masks)


def _count(fraction: float, radius_px: float) -> int:
    """Number of discs of ``radius_px`` that cover ``fraction`` of the texture (before overlap)."""
    return max(1, round(fraction * PERIOD * PERIOD / (np.pi * radius_px**2)))


def _tumor(rng: np.random.Generator, um: float) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin densities of tumor: large dense nuclei on pink cytoplasm."""
    radius = (4.0 * um, 6.0 * um)
    nuclei = np.zeros((PERIOD, PERIOD))
    _draw_nuclei(nuclei, rng, _count(0.55, 5.0 * um), radius, (0.65, 1.0), (0.8, 1.25))
    chromatin = 0.75 + 0.25 * _periodic_noise(rng, max(0.8, 0.4 * um))
    eosin = 0.38 + 0.06 * _periodic_noise(rng, 6 * um)
    return nuclei * chromatin, eosin * (1.0 - 0.5 * (nuclei > 0.3))


def _stroma(rng: np.random.Generator, um: float) -> tuple[np.ndarray, np.ndarray]:
    """Stroma: wavy pink collagen fibres with sparse thin spindle nuclei along them."""
    fibres = _periodic_noise(rng, (0.6 * um, 10 * um))
    yy, xx = np.mgrid[0:PERIOD, 0:PERIOD]
    wave = np.round(6 * um * np.sin(2 * np.pi * 2 * xx / PERIOD + rng.uniform(0, 2 * np.pi))).astype(int)
    fibres = fibres[(yy + wave) % PERIOD, xx]
    eosin = 0.18 + 0.55 * np.clip(0.5 + 0.35 * fibres, 0.0, 1.0)
    nuclei = np.zeros((PERIOD, PERIOD))
    spindles = _count(0.05, 3.0 * um)
    _draw_nuclei(nuclei, rng, spindles, (4.0 * um, 6.0 * um), (0.2, 0.3), (0.9, 1.3), lambda n: rng.normal(0, 0.2, n))
    return nuclei, eosin


def _lymphocytes(rng: np.random.Generator, um: float) -> tuple[np.ndarray, np.ndarray]:
    """Lymphocytes: dense small round dark-blue nuclei."""
    nuclei = np.zeros((PERIOD, PERIOD))
    _draw_nuclei(nuclei, rng, _count(0.75, 3.0 * um), (2.6 * um, 3.4 * um), (0.85, 1.0), (1.5, 2.0))
    chromatin = 0.9 + 0.1 * _periodic_noise(rng, max(0.8, 0.4 * um))
    return nuclei * chromatin, 0.22 + 0.05 * _periodic_noise(rng, 4 * um)


def _candidate_centres(
    centres: np.ndarray, spacing: float, yy: np.ndarray, xx: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Centres that can be a pixel's nearest or second-nearest, as ``(y, x)`` scalars or per-pixel maps.

    Jittered by under a third of the spacing, a pixel's two nearest centres lie within two lattice cells
    of its own; with more than 5 cells a side only those 25 are tried, else every centre.
    """
    per_side = centres.shape[0]
    if per_side <= 5:
        yield from ((cy, cx) for cy, cx in centres.reshape(-1, 2))
        return
    row, col = (yy // spacing).astype(int), (xx // spacing).astype(int)
    for di in range(-2, 3):
        for dj in range(-2, 3):
            neighbour = centres[(row + di) % per_side, (col + dj) % per_side]
            yield neighbour[..., 0], neighbour[..., 1]


def _fat(rng: np.random.Generator, um: float) -> tuple[np.ndarray, np.ndarray]:
    """Fat: white vacuoles (periodic Voronoi cells) with pink rims and a few flat nuclei on them."""
    per_side = max(2, round(PERIOD / (30.0 * um)))  # a jittered lattice of cells ~30 um apart
    spacing = PERIOD / per_side
    lattice = (np.stack(np.mgrid[0:per_side, 0:per_side], -1) + 0.5) * spacing
    centres = lattice + rng.uniform(-0.3, 0.3, lattice.shape) * spacing  # [per_side, per_side, 2]
    cells = per_side * per_side
    yy, xx = np.mgrid[0:PERIOD, 0:PERIOD].astype(np.float32)
    nearest = np.full((PERIOD, PERIOD), np.inf, np.float32)
    second = np.full((PERIOD, PERIOD), np.inf, np.float32)
    for cy, cx in _candidate_centres(centres, spacing, yy, xx):
        dy = (yy - cy + PERIOD / 2) % PERIOD - PERIOD / 2
        dx = (xx - cx + PERIOD / 2) % PERIOD - PERIOD / 2
        dist = np.sqrt(dy * dy + dx * dx)
        second = np.minimum(second, np.maximum(nearest, dist))
        nearest = np.minimum(nearest, dist)
    gap = second - nearest  # ~ twice the distance to the cell wall
    rim = np.clip(1.0 - (gap - 5.0 * um) / (0.8 * um), 0.0, 1.0)  # walls ~5 um thick
    eosin = 0.06 + 1.1 * rim * (1.0 + 0.15 * _periodic_noise(rng, 2 * um))
    nuclei = np.zeros((PERIOD, PERIOD))
    _draw_nuclei(nuclei, rng, max(1, cells // 3), (3.0 * um, 4.0 * um), (0.25, 0.35), (0.8, 1.1))
    return nuclei * (rim > 0.2), eosin


def _glass(rng: np.random.Generator) -> np.ndarray:
    """Background texture: near-white glass with faint noise (RGB float)."""
    faint = 1.2 * _periodic_noise(rng, 20)[..., None] + rng.normal(0, 1.5, (PERIOD, PERIOD, 3))
    return GLASS + faint


def slide_stain(rng: np.random.Generator, variation: float) -> tuple[np.ndarray, np.ndarray]:
    """This slide's haematoxylin and eosin optical-density vectors: Ruifrok's, varied as labs and scanners do.

    Each stain's strength is scaled by ``exp(U(-v, v))`` and its colour turned by up to ``v / 2`` radians
    towards a random direction (``v`` = ``variation``; 0 gives the reference vectors). So mean colour alone
    does not identify a tissue class across slides; texture does.
    """
    vectors = []
    for reference in (HEMATOXYLIN, EOSIN):
        unit = reference / np.linalg.norm(reference)
        other = rng.normal(size=3)
        other -= other.dot(unit) * unit
        other /= np.linalg.norm(other)
        angle = rng.uniform(-variation, variation) / 2
        turned = np.abs(np.cos(angle) * unit + np.sin(angle) * other)
        vectors.append(turned * np.linalg.norm(reference) * np.exp(rng.uniform(-variation, variation)))
    return vectors[0], vectors[1]


def _stain(
    rng: np.random.Generator, hematoxylin: np.ndarray, eosin: np.ndarray, stain: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """RGB (float) of stain densities by Beer-Lambert absorption on the glass, with faint noise."""
    density = hematoxylin[..., None] * stain[0] + np.clip(eosin, 0, None)[..., None] * stain[1]
    return GLASS * np.exp(-density) + rng.normal(0, 2.0, (PERIOD, PERIOD, 3))


def class_textures(seed: int, mpp: float | None, stain_variation: float = 0.6) -> np.ndarray:
    """One periodic ``[PERIOD, PERIOD, 3]`` uint8 RGB texture per class of :data:`CLASS_NAMES`.

    Args:
        seed: Random seed.
        mpp: Microns per pixel; sizes (nuclei, fibres, vacuoles) are set in microns. None renders as at
            0.25 um/px; the scale is clamped to 0.2-1.0 um/px so that structures fit the texture period.
        stain_variation: Per-slide variation of stain strength and colour (:func:`slide_stain`).

    Returns:
        ``uint8`` array ``[len(CLASS_NAMES), PERIOD, PERIOD, 3]``.
    """
    um = 1.0 / float(np.clip(0.25 if mpp is None else mpp, 0.2, 1.0))  # pixels per micron
    rng = np.random.default_rng([seed, 7919])
    stain = slide_stain(np.random.default_rng([seed, 104729]), stain_variation)
    layers = [_glass(rng)] + [_stain(rng, *draw(rng, um), stain) for draw in (_tumor, _stroma, _lymphocytes, _fat)]
    return np.clip(np.round(np.stack(layers)), 0, 255).astype(np.uint8)


def pack_textures(textures: np.ndarray) -> np.ndarray:
    """Textures (:func:`class_textures`) as one flat ``uint32`` table of RGBA texels, for fast gathers.

    Args:
        textures: ``uint8`` ``[classes, PERIOD, PERIOD, 3]``.

    Returns:
        ``uint32`` ``[classes * PERIOD * PERIOD]``, indexed by ``(class << 18) | (row << 9) | column``.
    """
    rgba = np.concatenate([textures, np.full((*textures.shape[:3], 1), 255, np.uint8)], axis=-1)
    return np.ascontiguousarray(rgba).view(np.uint32).reshape(-1)


def render_band(lut: np.ndarray, regions: np.ndarray, y0: int, height: int, width: int, ds: int) -> np.ndarray:
    """Level-0 pixels of rows ``y0 .. y0 + height`` and columns ``0 .. width`` of the slide, packed RGBA.

    Pixel ``(x, y)`` is texel ``(y % PERIOD, x % PERIOD)`` of class ``regions[y // ds, x // ds]``'s
    texture (indices past the map's edge are clamped to it, so padding repeats the edge classes).

    Args:
        lut: Packed textures (:func:`pack_textures`).
        regions: Class map ``[rows, cols]`` (uint8).
        y0: First row (level 0).
        height: Number of rows.
        width: Number of columns (level 0, padded to whole tiles).
        ds: Level-0 pixels per region cell.

    Returns:
        ``uint32`` array ``[height, width]`` of RGBA texels (:func:`rgb` views it as ``[height, width, 3]``).
    """
    ys = np.arange(y0, y0 + height)
    xs = np.arange(width)
    cells = regions[np.minimum(ys // ds, regions.shape[0] - 1)]
    cells = cells.take(np.minimum(xs // ds, regions.shape[1] - 1), axis=1)
    index = cells.astype(np.int32) << (2 * PERIOD_BITS)
    index |= ((ys % PERIOD) << PERIOD_BITS).astype(np.int32)[:, None]
    index |= (xs % PERIOD).astype(np.int32)[None, :]
    return lut.take(index)


def rgb(packed: np.ndarray) -> np.ndarray:
    """The ``uint8`` ``[..., 3]`` RGB view of packed RGBA pixels (``uint32``, bytes R, G, B, A in memory)."""
    return packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]


# ---------------------------------------------------------------------------------------------- regions


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Dense ``[n_out, n_in]`` linear-interpolation matrix stretching ``n_in`` samples over ``n_out``."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    low = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - low).astype(np.float32)
    matrix = np.zeros((n_out, n_in), np.float32)
    matrix[np.arange(n_out), low] = 1 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], coarse: int = 24) -> np.ndarray:
    """A smooth random field of unit scale over ``shape``: coarse smoothed noise, bilinearly upsampled."""
    field = _blurred_noise(rng, (coarse, coarse), 1.5)
    return _interp_matrix(coarse, shape[0]) @ field.astype(np.float32) @ _interp_matrix(coarse, shape[1]).T


def _tissue_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A few irregular blobs (noisy rotated ellipses) covering 42-58% of ``shape``, clear of the edges."""
    rows, cols = shape
    v = ((np.arange(rows, dtype=np.float32) + 0.5) / rows)[:, None]
    u = ((np.arange(cols, dtype=np.float32) + 0.5) / cols)[None, :]
    score = np.full(shape, -np.inf, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.18, 0.35, 2)
        theta = rng.uniform(0, np.pi)
        a = ((u - cx) * np.cos(theta) + (v - cy) * np.sin(theta)) / rx
        b = (-(u - cx) * np.sin(theta) + (v - cy) * np.cos(theta)) / ry
        score = np.maximum(score, 1.0 - a * a - b * b)
    score += 0.45 * _smooth_field(rng, shape)
    margin = np.minimum(np.minimum(u, 1 - u), np.minimum(v, 1 - v))  # keep tissue off the slide's edge
    score -= 4.0 * np.clip(0.06 - margin, 0, None) / 0.06
    coverage = rng.uniform(0.42, 0.58)
    return score > np.quantile(score, 1.0 - coverage)


def _voronoi(rng: np.random.Generator, tissue: np.ndarray, count: int) -> np.ndarray:
    """Label (0..count-1) of the nearest of ``count`` random tissue seeds, in smoothly warped coordinates."""
    rows, cols = tissue.shape
    warp = 0.08 * max(rows, cols)
    py = np.arange(rows, dtype=np.float32)[:, None] + warp * _smooth_field(rng, tissue.shape)
    px = np.arange(cols, dtype=np.float32)[None, :] + warp * _smooth_field(rng, tissue.shape)
    seeds = rng.choice(np.flatnonzero(tissue), count, replace=False)
    best = np.full(tissue.shape, np.inf, np.float32)
    label = np.zeros(tissue.shape, np.uint8)
    for k, flat in enumerate(seeds):
        r, c = divmod(int(flat), cols)
        dist = np.square(py - py[r, c]) + np.square(px - px[r, c])
        closer = dist < best
        best[closer] = dist[closer]
        label[closer] = k
    return label


def _assign_classes(rng: np.random.Generator, areas: np.ndarray, tumor: bool) -> np.ndarray:
    """Class of each Voronoi cell: every tissue class present, tumor (when drawn) 15-50% of the tissue."""
    classes = np.array([1, 2, 3, 4] if tumor else [2, 3, 4])
    weights = np.array([0.35, 0.3, 0.15, 0.2] if tumor else [0.5, 0.25, 0.25])
    total = max(areas.sum(), 1)
    for _ in range(200):
        draw = np.concatenate([classes, rng.choice(classes, len(areas) - len(classes), p=weights)])
        rng.shuffle(draw)
        shares = np.array([areas[draw == c].sum() / total for c in classes])
        if shares.min() >= 0.05 and (not tumor or 0.15 <= shares[0] <= 0.5):
            return draw
    return draw


def draw_regions(seed: int, size: tuple[int, int], tumor: bool = True) -> tuple[np.ndarray, int]:
    """The ground-truth class map of a slide.

    Args:
        seed: Random seed.
        size: ``(width, height)`` of level 0.
        tumor: Whether tumor regions are drawn.

    Returns:
        ``(regions, truth_downsample)``: ``uint8`` class ids ``[ceil(H / ds), ceil(W / ds)]`` and ``ds``.
    """
    width, height = size
    ds = 8
    while max(width, height) > MAX_TRUTH_SIDE * ds:
        ds *= 2
    shape = (math.ceil(height / ds), math.ceil(width / ds))
    rng = np.random.default_rng([seed, 104729])
    tissue = _tissue_mask(rng, shape)
    count = 8 + int(2 * math.sqrt(width * height) / 4096)
    label = _voronoi(rng, tissue, count)
    areas = np.bincount(label[tissue], minlength=count)
    lut = _assign_classes(rng, areas, tumor).astype(np.uint8)
    return np.where(tissue, lut[label], 0).astype(np.uint8), ds


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


# ---------------------------------------------------------------------------------------------- pyramid


def _block_mean4(packed: np.ndarray) -> np.ndarray:
    """Rounded 4x4 block mean of packed RGBA pixels ``[4h, 4w]`` -> ``[h, w]`` (``uint32``).

    Channels are averaged two at a time in 16-bit lanes of a uint32 (R and B, then G and A): a sum of 16
    bytes fits a lane, so no carry crosses channels.
    """
    height, width = packed.shape[0] // LEVEL_STEP, packed.shape[1] // LEVEL_STEP
    out = np.zeros((height, width), np.uint32)
    for shift in (0, 8):
        lanes = (packed >> shift) & np.uint32(0x00FF00FF) if shift else packed & np.uint32(0x00FF00FF)
        rows = lanes[0::4] + lanes[1::4]
        rows += lanes[2::4]
        rows += lanes[3::4]
        blocks = rows.reshape(height, width, LEVEL_STEP)
        total = blocks[..., 0] + blocks[..., 1]
        total += blocks[..., 2]
        total += blocks[..., 3]
        total += np.uint32(0x00080008)
        out |= ((total >> 4) & np.uint32(0x00FF00FF)) << shift
    return out


def _downsample_into(src: np.ndarray, dst: np.ndarray, chunk_rows: int = 1024) -> None:
    """Fills packed ``dst`` with the 4x block mean of packed ``src`` (edges replicated), by row chunks."""
    height, width = dst.shape
    for r0 in range(0, height, chunk_rows):
        r1 = min(height, r0 + chunk_rows)
        part = src[LEVEL_STEP * r0 : LEVEL_STEP * r1, : LEVEL_STEP * width]
        pad_rows = LEVEL_STEP * (r1 - r0) - part.shape[0]
        pad_cols = LEVEL_STEP * width - part.shape[1]
        if pad_rows or pad_cols:
            part = np.pad(part, ((0, pad_rows), (0, pad_cols)), mode="edge")
        dst[r0:r1] = _block_mean4(part)


def _level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """``(width, height)`` of each pyramid level: 4x steps while the longer side is >= MIN_LEVEL_SIDE."""
    sizes = [(width, height)]
    while True:
        w, h = math.ceil(sizes[-1][0] / LEVEL_STEP), math.ceil(sizes[-1][1] / LEVEL_STEP)
        if max(w, h) < MIN_LEVEL_SIDE:
            return sizes
        sizes.append((w, h))


def _allocate(shape: tuple[int, int], folder: Path, stack: ExitStack) -> np.ndarray:
    """A packed-RGBA ``uint32`` array: in memory, or a temporary memmap in ``folder`` when large."""
    if 4 * math.prod(shape) <= MEMMAP_BYTES:
        return np.empty(shape, np.uint32)
    handle, name = tempfile.mkstemp(dir=folder, prefix=".phantom-", suffix=".level")
    os.close(handle)
    stack.callback(os.unlink, name)
    return np.memmap(name, np.uint32, "w+", shape=shape)


def _aperio_description(width: int, height: int, tile: int, quality: int, mpp: float | None) -> str:
    """ImageDescription of level 0 as an Aperio ScanScope writes it (OpenSlide reads its ``key = value``s)."""
    fields = [f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if mpp is not None:
        fields.append(f"AppMag = {40 if mpp <= 0.3 else 20 if mpp <= 0.6 else 10}")
    fields += ["StripeWidth = 2048", "ScanScope ID = DOMAINFM", "Filename = phantom", "Title = domainfm phantom"]
    if mpp is not None:
        fields.append(f"MPP = {float(mpp)!r}")
    return "|".join(fields)


def _put(channel: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts ``item`` unless ``stop`` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Runs ``items`` in a background thread, up to ``depth`` ahead; its exceptions re-raise here.

    Rendering the next band (NumPy gathers, which release the GIL) so overlaps tifffile's JPEG threads.
    """
    channel: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(channel, (item, None), stop):
                    return
            _put(channel, (None, StopIteration()), stop)
        except BaseException as error:  # handed to the consumer, which re-raises it
            _put(channel, (None, error), stop)

    thread = threading.Thread(target=produce, name="phantom-render", daemon=True)
    thread.start()
    try:
        while True:
            item, error = channel.get()
            if isinstance(error, StopIteration):
                return
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        thread.join()


def _jpeg(tile: np.ndarray, quality: int, subsampling: tuple[int, int]) -> bytes:
    """One YCbCr JPEG tile (as tifffile writes ``photometric="rgb"``) from an RGBA ``[t, t, 4]`` view.

    libjpeg-turbo reads the RGBX pixels directly (the stream is identical to encoding the RGB), which
    saves NumPy's slow 4-to-3-byte copy of every tile.
    """
    import imagecodecs

    spaces = imagecodecs.JPEG8.CS
    return imagecodecs.jpeg_encode(
        tile, level=quality, colorspace=spaces.EXT_RGBX, outcolorspace=spaces.YCbCr, subsampling=subsampling
    )


def _tile_row(packed: np.ndarray, tile: int) -> list[np.ndarray]:
    """The RGBA ``[tile, tile, 4]`` tiles of a packed band of tile rows (edges padded by replication)."""
    height, width = packed.shape
    if height % tile or width % tile:
        pad = ((0, -height % tile), (0, -width % tile))
        packed = np.pad(packed, pad, mode="edge")
    pixels = packed.view(np.uint8).reshape(*packed.shape, 4)
    return [pixels[:, x0 : x0 + tile] for x0 in range(0, packed.shape[1], tile)]


def _encoded(
    rows: Iterator[list[np.ndarray]], quality: int, subsampling: tuple[int, int], pool: ThreadPoolExecutor
) -> Iterator[bytes]:
    """JPEG bytes of every tile, row by row, each row encoded by the pool while the next is produced."""
    for row in rows:
        futures = [pool.submit(_jpeg, tile, quality, subsampling) for tile in row]
        for future in futures:
            yield future.result()


class _Writer:
    """Writes one phantom SVS: level 0 from bands, level 1 accumulated on the way, then the rest."""

    def __init__(self, regions: np.ndarray, ds: int, lut: np.ndarray, size: tuple[int, int], tile: int) -> None:
        self.regions, self.ds, self.lut, self.tile = regions, ds, lut, tile
        self.width, self.height = size
        self.padded = (math.ceil(self.width / tile) * tile, math.ceil(self.height / tile) * tile)
        self.level1 = np.zeros((0, 0), np.uint32)

    def bands(self) -> Iterator[np.ndarray]:
        """Renders level 0 band by band (packed RGBA), averaging each into level 1."""
        width_p, height_p = self.padded
        for y0 in range(0, height_p, self.tile):
            band = render_band(self.lut, self.regions, y0, self.tile, width_p, self.ds)
            start = y0 // LEVEL_STEP
            self.level1[start : start + self.tile // LEVEL_STEP] = _block_mean4(band)
            yield band

    def level0_rows(self, on_band: Callable[[], None]) -> Iterator[list[np.ndarray]]:
        """Yields level 0's tile rows, the next band rendering in the background meanwhile."""
        with closing(_prefetch(self.bands())) as bands:
            for band in bands:
                on_band()
                yield _tile_row(band, self.tile)


def _level_rows(packed: np.ndarray, tile: int) -> Iterator[list[np.ndarray]]:
    """Tile rows of a packed pyramid level."""
    for y0 in range(0, packed.shape[0], tile):
        yield _tile_row(packed[y0 : y0 + tile], tile)


def _thumbnail(level: np.ndarray) -> np.ndarray:
    """An RGB thumbnail of at most 1024 px on its longer side from a (small) packed pyramid level."""
    pixels = rgb(np.asarray(level))
    factor = max(1, math.ceil(max(level.shape) / 1024))
    if factor == 1:
        return np.ascontiguousarray(pixels)
    h, w = (level.shape[0] // factor) * factor, (level.shape[1] // factor) * factor
    blocks = pixels[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _write_svs(
    target: Path, writer: _Writer, mpp: float | None, quality: int, progress: bool, name: str, stack: ExitStack
) -> list[int]:
    """Writes the pyramid to ``target``, showing ``name`` on the progress bar; returns the level downsamples."""
    import tifffile

    width, height, tile = writer.width, writer.height, writer.tile
    sizes = _level_sizes(width, height)
    width_p, height_p = writer.padded
    writer.level1 = _allocate((height_p // LEVEL_STEP, width_p // LEVEL_STEP), target.parent, stack)
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}, "metadata": None}
    tiled = {"dtype": np.uint8, "tile": (tile, tile)}
    pool = stack.enter_context(ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))))
    bar, update = _progress_bar(progress, math.ceil(height / tile), name)
    with bar, tifffile.TiffWriter(target, bigtiff=width * height * 3 > 2**31) as tw:
        description = _aperio_description(width, height, tile, quality, mpp)
        rows = writer.level0_rows(update)
        with closing(rows), closing(_encoded(rows, quality, LEVEL0_CHROMA, pool)) as level0:
            tw.write(
                level0, shape=(height, width, 3), description=description, subsampling=LEVEL0_CHROMA, **tiled, **jpeg
            )
        levels = [writer.level1]
        for w, h in sizes[2:]:
            levels.append(_allocate((h, w), target.parent, stack))
            _downsample_into(levels[-2], levels[-1])
        w, h = sizes[-1] if len(sizes) > 1 else (math.ceil(width / LEVEL_STEP), math.ceil(height / LEVEL_STEP))
        thumb = _thumbnail(levels[max(0, len(sizes) - 2)][:h, :w])
        header = f"{APERIO_HEADER}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - "
        tw.write(thumb, description=header, rowsperstrip=thumb.shape[0], **jpeg)
        for k, (w, h) in enumerate(sizes[1:], start=1):
            description = f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) -> {w}x{h}"
            data = _encoded(_level_rows(levels[k - 1][:h, :w], tile), quality, (1, 1), pool)
            description = f"{description} JPEG/RGB Q={quality}"
            tw.write(data, shape=(h, w, 3), description=description, subsampling=(1, 1), **tiled, **jpeg)
    return [LEVEL_STEP**k for k in range(len(sizes))]


def _progress_bar(show: bool, total: int, name: str) -> tuple[Any, Callable[[], None]]:
    """A rich progress bar over the level-0 bands (a no-op when not shown)."""
    if not show:
        return nullcontext(), lambda: None
    from rich.progress import Progress

    bar = Progress(transient=False)
    task = bar.add_task(f"phantom {name}", total=total)
    return bar, lambda: bar.advance(task)


def _validate(size: tuple[int, int], mpp: float | None, tile: int, quality: int) -> None:
    """Raises ValueError on arguments no slide can be written with."""
    if min(size) < 256:
        raise ValueError(f"phantom slide size must be at least 256 px a side, got {size[0]}x{size[1]}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel (or None), got {mpp}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (TIFF), got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, got {quality}")


def _save_truth(target: Path, regions: np.ndarray, ds: int, size: tuple[int, int], mpp: float | None,
                tumor_present: bool, seed: int) -> None:  # fmt: skip
    """Writes the truth npz to ``target`` (a temporary name; the caller moves it)."""
    with open(target, "wb") as handle:
        np.savez_compressed(
            handle,
            regions=regions,
            truth_downsample=np.int64(ds),
            class_names=np.array(CLASS_NAMES),
            mpp=np.float64(np.nan if mpp is None else mpp),
            size=np.array(size, np.int64),
            slide_label=np.int64(tumor_present),
            seed=np.int64(seed),
        )


def write_phantom_slide(
    out: Path,
    size: int | tuple[int, int] = 4096,
    seed: int = 0,
    mpp: float | None = 0.25,
    tumor: bool = True,
    tile: int = 256,
    quality: int = 85,
    progress: bool = False,
) -> PhantomSlide:
    """Writes a phantom Aperio SVS to ``out`` and its ground truth to ``out`` + :data:`TRUTH_SUFFIX`.

    Args:
        out: The ``.svs`` path (its folder is created).
        size: Level-0 side, or ``(width, height)``; at least 256 each.
        seed: Random seed (layout, classes and textures).
        mpp: Microns per level-0 pixel, or None for a slide without ``MPP`` and ``AppMag``.
        tumor: Whether tumor regions are drawn (``slide_label`` 1) or not (0).
        tile: TIFF tile side (multiple of 16).
        quality: JPEG quality (1-100).
        progress: Show a progress bar over level-0 bands.

    Returns:
        The slide written.

    Raises:
        ValueError: If the size is under 256, mpp is not positive, or tile/quality are invalid.
    """
    dims = (int(size), int(size)) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))
    _validate(dims, mpp, tile, quality)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = out.with_name(out.name + TRUTH_SUFFIX)
    regions, ds = draw_regions(seed, dims, tumor)
    writer = _Writer(regions, ds, pack_textures(class_textures(seed, mpp)), dims, tile)
    stem = f".{out.name}.{os.getpid()}"
    partial_svs, partial_truth = out.with_name(stem + ".partial"), out.with_name(stem + ".truth.partial")
    try:
        _save_truth(partial_truth, regions, ds, dims, mpp, bool((regions == 1).any()), seed)
        with ExitStack() as stack:
            downsamples = _write_svs(partial_svs, writer, mpp, quality, progress, out.name, stack)
        os.replace(partial_truth, truth_path)
        os.replace(partial_svs, out)
    finally:
        for leftover in (partial_svs, partial_truth):
            leftover.unlink(missing_ok=True)
    return PhantomSlide(out, truth_path, dims, None if mpp is None else float(mpp), downsamples)
