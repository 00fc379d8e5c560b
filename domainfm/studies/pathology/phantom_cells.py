"""Phantom H&E fields with cells: nuclei of three types and glands, with exact instance truth.

The instance-segmentation counterpart of the phantom slide (:mod:`.phantom`), for the nuclei/gland head
(:mod:`domainfm.domains.pathology.instances`): no registry package ships instance-labelled histology, so
tests and the study draw their own. A field is a plain RGB picture at a given mpp, as nuclei datasets
(MoNuSeg, PanNuke, Lizard) and gland sets (GlaS) ship them, with two instance label maps (one id per
object, 0 = background) and the class of each id:

* **glands** (class ``gland``): an elliptic lumen (near-white) inside a ring of pale-purple epithelium;
  the gland instance is lumen + epithelium, as GlaS annotates glands;
* **nuclei**: ``epithelial`` nuclei line each gland's ring (ellipses 4 x 2.8 um, long axis radial, paler,
  with chromatin texture), ``lymphocyte`` nuclei are small dark discs (radius 2.8 um) and ``stromal``
  nuclei thin spindles (5.5 x 1.4 um) in the pink stroma between glands.

Sizes are in microns, so they scale with the mpp; colours follow the Beer-Lambert model with Ruifrok's H&E
optical densities, varied per field (:func:`~.phantom_tissue.slide_stain`). Nuclei may touch but never
overlap (a new nucleus is placed only on free pixels), objects cut by the field's edge are kept (clipped),
and every id in a label map is one connected object: the truth is exact by construction.

:func:`write_cell_phantom` writes a folder as such datasets ship::

    OUT/images/cells_000.png        RGB field
    OUT/nuclei/cells_000.tif        uint16 nucleus instance ids
    OUT/glands/cells_000.tif        uint16 gland instance ids
    OUT/nuclei.csv, OUT/glands.csv  image,id,class rows

:func:`write_cell_slide` writes one field as a small whole slide instead: a tiled, pyramidal TIFF
(lossless, so level 0 is the field pixel for pixel; each further level halves the one before by 2 x 2
means) with its mpp in the TIFF resolution tags (OpenSlide reads it as a ``generic-tiff`` slide and
``openslide.mpp-x``), and the nucleus truth beside it (``SLIDE.tif.cells.npz``: the id map, whose pixel
``(row, col)`` is level-0 pixel ``(x=col, y=row)``, so each object's level-0 polygon is exact, and its
classes). With ``gap`` the nuclei keep a margin of stroma between them.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainfm.studies.pathology.phantom_tissue import GLASS, _blurred_noise, slide_stain

NUCLEUS_CLASSES = ("epithelial", "lymphocyte", "stromal")
GLAND_CLASSES = ("gland",)
# semi-axes (um) and haematoxylin density of each nucleus type
NUCLEUS_SHAPES = {"epithelial": (4.0, 2.8, 0.85), "lymphocyte": (2.8, 2.8, 1.6), "stromal": (5.5, 1.4, 1.15)}


@dataclass
class CellField:
    """One phantom field and its truth.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB.
        nuclei: ``[H, W]`` int32 nucleus ids (0 background, 1..n).
        nucleus_class: ``[n + 1]`` int64 class index into :data:`NUCLEUS_CLASSES` per id (entry 0 is -1).
        glands: ``[H, W]`` int32 gland ids.
        gland_class: ``[m + 1]`` int64 (0 = ``gland``; entry 0 is -1).
        mpp: Microns per pixel.
    """

    image: np.ndarray
    nuclei: np.ndarray
    nucleus_class: np.ndarray
    glands: np.ndarray
    gland_class: np.ndarray
    mpp: float


def _ellipse(shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float) -> tuple:
    """Pixel rows, cols (inside the image) of the ellipse with semi-axes ``a`` (along ``angle``) and ``b``."""
    reach = math.ceil(max(a, b)) + 1
    y0, y1 = max(0, math.floor(cy) - reach), min(shape[0], math.ceil(cy) + reach + 1)
    x0, x1 = max(0, math.floor(cx) - reach), min(shape[1], math.ceil(cx) + reach + 1)
    if y0 >= y1 or x0 >= x1:
        return np.zeros(0, int), np.zeros(0, int)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return yy[inside], xx[inside]


def _place_glands(rng: np.random.Generator, shape: tuple[int, int], um: float, count: int) -> list[tuple]:
    """Non-overlapping glands ``(cy, cx, lumen_a, lumen_b, angle, wall)`` (px)."""
    glands: list[tuple] = []
    wall = 8.0 * um
    for _ in range(60 * max(1, count)):
        if len(glands) == count:
            break
        a, b = rng.uniform(9, 16) * um, rng.uniform(6, 10) * um
        cy, cx = rng.uniform(-0.1, 1.1) * shape[0], rng.uniform(-0.1, 1.1) * shape[1]
        far = all(math.hypot(cy - g[0], cx - g[1]) > a + g[2] + 2 * wall + 3 * um for g in glands)
        if far:
            glands.append((cy, cx, a, b, rng.uniform(0, math.pi), wall))
    return glands


def _add_nucleus(
    nuclei: np.ndarray, rows: np.ndarray, cols: np.ndarray, min_pixels: int, halo: tuple | None = None
) -> bool:
    """Paints a nucleus with the next id when all its pixels are free and enough lie inside; returns success.

    ``halo`` (rows, cols of the nucleus grown by the gap) must be free of other nuclei too.
    """
    if len(rows) < min_pixels or nuclei[rows, cols].any():
        return False
    if halo is not None and nuclei[halo].any():
        return False
    nuclei[rows, cols] = nuclei.max() + 1
    return True


def render_cells(
    seed: int,
    size: int | tuple[int, int] = 256,
    mpp: float = 0.5,
    glands: int = 2,
    lymphocytes: float = 0.004,
    stromal: float = 0.002,
    stain_variation: float = 0.3,
    gap: float = 0.0,
) -> CellField:
    """Draws one phantom field (see the module docstring).

    Args:
        seed: Random seed.
        size: Side in pixels, or ``(height, width)``.
        mpp: Microns per pixel.
        glands: Glands attempted (fewer when they do not fit).
        lymphocytes: Lymphocytes per um^2 of stroma attempted.
        stromal: Stromal nuclei per um^2 of stroma attempted.
        stain_variation: Per-field stain variation (0: Ruifrok's reference vectors).
        gap: Microns of stroma kept between any two nuclei (0: nuclei may touch); the draws are the same.
    """
    rng = np.random.default_rng(seed)
    shape = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    um = 1.0 / mpp
    grow = gap * um

    def halo(cy: float, cx: float, a: float, b: float, angle: float) -> tuple | None:
        return _ellipse(shape, cy, cx, a + grow, b + grow, angle) if grow > 0 else None

    gland_ids = np.zeros(shape, np.int32)
    nuclei = np.zeros(shape, np.int32)
    classes: list[int] = [-1]
    hema = 0.06 + 0.03 * _blurred_noise(rng, shape, 3 * um)
    eosin = 0.42 + 0.12 * _blurred_noise(rng, shape, (0.6 * um, 4 * um))
    gland_list = [g for g in _place_glands(rng, shape, um, glands)]
    kept = 0
    for cy, cx, a, b, angle, wall in gland_list:
        rows, cols = _ellipse(shape, cy, cx, a + wall, b + wall, angle)
        if not len(rows):
            continue
        kept += 1
        gland_ids[rows, cols] = kept
        hema[rows, cols], eosin[rows, cols] = 0.18, 0.30  # epithelium
        lumen = _ellipse(shape, cy, cx, a, b, angle)
        hema[lumen], eosin[lumen] = 0.01, 0.04
        # epithelial nuclei along the ring's middle, long axis radial
        ring_a, ring_b = a + wall / 2, b + wall / 2
        steps = max(6, int(2 * math.pi * math.sqrt((ring_a**2 + ring_b**2) / 2) / (2 * 2.8 * um + 1.5)))
        for t in np.linspace(0, 2 * math.pi, steps, endpoint=False) + rng.uniform(0, 1):
            px, py = ring_a * math.cos(t), ring_b * math.sin(t)
            ny = cy + px * math.sin(angle) + py * math.cos(angle)
            nx = cx + px * math.cos(angle) - py * math.sin(angle)
            radial = angle + math.atan2(py * ring_a, px * ring_b)
            long, short, _ = NUCLEUS_SHAPES["epithelial"]
            rows, cols = _ellipse(shape, ny, nx, long * um * 0.9, short * um, radial)
            if _add_nucleus(nuclei, rows, cols, 4, halo(ny, nx, long * um * 0.9, short * um, radial)):
                classes.append(NUCLEUS_CLASSES.index("epithelial"))
    area_um2 = float((gland_ids == 0).sum()) / um**2
    for name, density in (("lymphocyte", lymphocytes), ("stromal", stromal)):
        long, short, _ = NUCLEUS_SHAPES[name]
        for _ in range(int(rng.poisson(density * area_um2))):
            for _attempt in range(6):
                cy, cx = rng.uniform(-2, shape[0] + 2), rng.uniform(-2, shape[1] + 2)
                scale = rng.uniform(0.85, 1.15)
                axes = (long * um * scale, short * um * scale, rng.uniform(0, math.pi))
                rows, cols = _ellipse(shape, cy, cx, *axes)
                if len(rows) and gland_ids[rows, cols].any():
                    continue
                if _add_nucleus(nuclei, rows, cols, 4, halo(cy, cx, *axes)):
                    classes.append(NUCLEUS_CLASSES.index(name))
                    break
    nucleus_class = np.array(classes, np.int64)
    chromatin = _blurred_noise(rng, shape, 0.5 * um)
    inside = nuclei > 0
    density = np.array([NUCLEUS_SHAPES[n][2] for n in NUCLEUS_CLASSES])[nucleus_class[nuclei[inside]]]
    hema[inside] = density * (1 + 0.18 * chromatin[inside])
    eosin[inside] *= 0.5
    stain = slide_stain(rng, stain_variation)
    optical = np.clip(hema, 0, None)[..., None] * stain[0] + np.clip(eosin, 0, None)[..., None] * stain[1]
    pixels = GLASS * np.exp(-optical) + rng.normal(0, 2.5, (*shape, 3))
    image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return CellField(image, nuclei, nucleus_class, gland_ids, np.array([-1] + [0] * kept, np.int64), float(mpp))


def _write_labels(path: Path, ids: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, ids.astype(np.uint16), compression="zlib")


def write_cell_phantom(
    out: Path, images: int = 8, size: int = 256, seed: int = 0, mpp: float = 0.5, glands: int = 2
) -> list[str]:
    """Writes ``images`` phantom fields as a nuclei + gland instance dataset (layout in the module docstring).

    Returns:
        The image stems written.
    """
    from PIL import Image

    out = Path(out)
    for folder in ("images", "nuclei", "glands"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, int, str]]] = {"nuclei": [], "glands": []}
    stems = []
    for k in range(images):
        field = render_cells(seed * 100_003 + k, size, mpp, glands)
        stem = f"cells_{k:03d}"
        stems.append(stem)
        Image.fromarray(field.image).save(out / "images" / f"{stem}.png")
        _write_labels(out / "nuclei" / f"{stem}.tif", field.nuclei)
        _write_labels(out / "glands" / f"{stem}.tif", field.glands)
        rows["nuclei"] += [(stem, i, NUCLEUS_CLASSES[c]) for i, c in enumerate(field.nucleus_class) if i]
        rows["glands"] += [(stem, i, GLAND_CLASSES[c]) for i, c in enumerate(field.gland_class) if i]
    for name, table in rows.items():
        partial = out / f".{name}.csv.{os.getpid()}"
        with open(partial, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "id", "class"])
            writer.writerows(table)
        os.replace(partial, out / f"{name}.csv")
    (out / "mpp.txt").write_text(f"{mpp}\n")
    return stems


CELL_TRUTH_SUFFIX = ".cells.npz"


@dataclass
class CellSlide:
    """A phantom slide with nuclei (:func:`write_cell_slide`): its path, its truth file and the field drawn."""

    path: Path
    truth: Path
    field: CellField


def _halve(image: np.ndarray) -> np.ndarray:
    """2 x 2 block means (rounded) of an ``[H, W, 3]`` uint8 picture, the odd last row or column dropped."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    blocks = image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).astype(np.uint16).sum((1, 3))
    return ((blocks + 2) // 4).astype(np.uint8)


def write_cell_slide(
    out: Path,
    size: int | tuple[int, int] = 512,
    mpp: float = 0.5,
    seed: int = 0,
    glands: int = 0,
    gap: float = 0.0,
    stain_variation: float = 0.3,
    tile: int = 128,
) -> CellSlide:
    """Writes a phantom field of ``size`` (``(height, width)``) as a pyramidal TIFF slide and its nucleus truth.

    Args:
        out: The ``.tif`` path (its folder is created).
        size: Level-0 side, or ``(height, width)``.
        mpp: Microns per level-0 pixel (recorded in the resolution tags).
        seed: Random seed of :func:`render_cells`.
        glands: Glands attempted.
        gap: Microns kept free between nuclei (:func:`render_cells`).
        stain_variation: Per-field stain variation.
        tile: TIFF tile side (a multiple of 16).

    Returns:
        The slide, its truth file (``out`` + :data:`CELL_TRUTH_SUFFIX`) and the field.
    """
    import tifffile

    from domainfm.shared.outputs import partial_path

    field = render_cells(seed, size, mpp, glands, stain_variation=stain_variation, gap=gap)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = out.with_name(out.name + CELL_TRUTH_SUFFIX)
    levels = [field.image]
    while min(levels[-1].shape[:2]) >= 2 * tile:
        levels.append(_halve(levels[-1]))
    if len(levels) < 2:
        levels.append(_halve(field.image))  # a slide has a pyramid (a one-level TIFF is a picture)
    staged, staged_truth = partial_path(out), partial_path(truth)
    try:
        with tifffile.TiffWriter(staged) as tif:
            for k, level in enumerate(levels):
                per_cm = 1e4 / (mpp * 2**k)
                tif.write(level, tile=(tile, tile), photometric="rgb", compression="zlib", subfiletype=1 if k else 0,
                          resolution=(per_cm, per_cm), resolutionunit="CENTIMETER", metadata=None)  # fmt: skip
        with open(staged_truth, "wb") as handle:
            np.savez_compressed(handle, nuclei=field.nuclei, nucleus_class=field.nucleus_class,
                                class_names=np.array(NUCLEUS_CLASSES), mpp=np.float64(mpp))  # fmt: skip
        os.replace(staged_truth, truth)
        os.replace(staged, out)
    finally:
        for leftover in (staged, staged_truth):
            leftover.unlink(missing_ok=True)
    return CellSlide(out, truth, field)
