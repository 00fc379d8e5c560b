"""Phantom tissue: H&E-like class textures, per-slide stain variation and the class region map.

Part of the phantom slide generator (:mod:`.phantom`): each class has its own periodic 512x512 texture,
coloured with the Beer-Lambert stain model from Ruifrok & Johnston's H&E optical densities (varied per
slide, :func:`slide_stain`), with sizes in microns so they scale with the slide's mpp; the region map is a
few irregular tissue blobs split by a warped Voronoi partition into classes (see :mod:`.phantom`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

PERIOD = 512  # texture period (px); a power of two so that pixel -> texel is a shift and a mask
PERIOD_BITS = 9
MAX_TRUTH_SIDE = 2048
GLASS = np.array([242.0, 240.0, 244.0])  # near-white slide background (RGB)
# Ruifrok & Johnston optical-density vectors of haematoxylin and eosin (R, G, B)
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])


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
