"""Nuclei and glands over whole slides: overlapping tiles, objects merged across tile edges, QuPath GeoJSON.

``domainfm pathology predict`` with an instance segmenter (:mod:`.instances`) on a whole slide runs
:func:`predict_instance_slide`. The slide is cut as ``domainfm pathology tile --overlap`` cuts it, at the
segmenter's training mpp (:func:`.slide_inputs.slide_tiles`, the walk ``predict`` and ``explain`` share:
same grid, tissue detector and region reader) into *regions* of :data:`REGION_TILES` x
:data:`REGION_TILES` training tiles (fewer when the slide is smaller), with ``overlap`` region pixels shared
by neighbours (default an eighth of the region). Each tissue region goes through the deployed network (its
``window`` geometry slides the training tile over the region, Gaussian-blended, as for a picture: the tile
as the store holds it, standardised, encoder, HoVer-Net-style head) and the watershed
(:func:`.instances.instances_from_maps`) on its own, batch by batch. Regions several tiles wide are what
HoVer-Net and CellViT infer on (CellViT: 1024 px): the network's maps are blended across its windows inside
a region, so the region's edges, where context is missing, are fewer.

The tiler cuts whole squares only; where its last column or row stops short of the slide's right or
bottom edge, one more column or row of regions flush with that edge is read too (:func:`grid_axes`), so
no strip of tissue goes unsearched.

**Merging across region edges: one owner per object, by its centroid.** An object near a region's edge is
seen by every region that reaches it, clipped by some of them. Each object is kept only from the region
that *owns* its centroid: among the tissue regions whose square contains the centroid, the one whose
centre is nearest. On a full grid that is the region whose central part (the square inset by half the
overlap on every side shared with a neighbour) contains the centroid: the central parts tile the slide
without gaps or overlaps, so every object is written once. This is HoVer-Net's and CellViT's rule: HoVer-Net
(Graham et al. 2019, its whole-slide inference) keeps from each tile only the instances of its valid
centre and processes the seams again, and CellViT (Hörst et al., Medical Image Analysis 94, 2024;
1024-px tiles with 64 px of overlap) marks cells by their position in the tile's margin and keeps each
margin cell from one tile, removing the others' copies by polygon overlap. We keep the first rule and not
the polygon-IoU merge: it needs no polygon index across regions (each region's objects are decided when it
is done, so polygons stream to the file and memory stays bounded), it is exact for objects no larger
than the margin, and a centroid decides ownership whatever the object's shape. Where a neighbour is not a
tissue region, the region owns its margin too (nearest tissue region), so no object near the tissue's
border is lost. The rule needs ``overlap`` (in the segmenter's pixels) at least the largest object's diameter:
an object whose centroid lies in a region's central part then lies wholly inside that region. Objects that
still touch an edge shared with a tissue neighbour (larger than the margin) are counted in the
``cut_objects`` column; a nonzero count asks for a larger ``--overlap``.

**Outputs** for a slide ``NAME`` (coordinates: level-0 pixels, origin top-left, x right, y down):

* ``geojson/NAME.geojson``: a FeatureCollection written object by object (never held in memory), one
  QuPath *detection* per object (:func:`.instance_geojson.object_features`: the contour scaled from the
  segmenter's pixels to level 0, ``classification`` with a name and colour, ``measurements`` with the
  ``score``, the mean type probability); a ``domainfm`` member records the slide, mpp, tile and overlap.
  QuPath: *File > Import objects*.
* ``overlays/NAME.png``: the QC picture: the thumbnail with a dot per object in its class colour, and, at
  the segmenter's resolution, the tile with the most objects with their contours.
* a row of ``predictions.csv``: tissue tiles, objects and objects per class, the tissue area (the tissue
  mask of the thumbnail, in mm^2), objects (nuclei) per mm^2 of tissue overall and per class, cut objects,
  the tile mpp, the scan's mpp and the overlap.

Memory holds a few batches of tiles and their maps, the thumbnail, a boolean per grid cell and one tile
for the QC crop; never a slide-sized instance map. Resume and staging are the shared predict runner's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from domainfm.domains.pathology.slide_inputs import SlideInputs
from domainfm.shared.deploy.card import Deployable, predict_array
from domainfm.shared.predict import InputFile, Outputs

KIND = "pathology.instances"
INSTANCE_SLIDES = SlideInputs(kinds=(KIND,))  # the slide formats (and pyramidal TIFFs) an instance model reads
REGION_TILES = 4  # a region is 4 x 4 training tiles (1024 px for 256-px tiles, CellViT's region)
DEFAULT_OVERLAP = 1 / 8  # of the region (128 px of 1024; CellViT: 64 of 1024, HoVer-Net's margins: 92 of 256)


def region_size(tile_px: int, side_px: int) -> int:
    """The region side: :data:`REGION_TILES` training tiles, fewer when the slide is smaller; at least one tile.

    ``side_px`` is the slide's shorter side in pixels at the model's mpp.
    """
    for k in range(REGION_TILES, 1, -1):
        if k * tile_px <= side_px:
            return k * tile_px
    return tile_px


def default_overlap(region_px: int, overlap: int | None) -> int:
    """``overlap`` checked against the region (``[0, region_px / 2]``), or an eighth of the region."""
    from domainfm.domains.pathology.slides import SlideError

    value = round(region_px * DEFAULT_OVERLAP) if overlap is None else int(overlap)
    if not 0 <= value <= region_px // 2:
        raise SlideError(f"--overlap {value} does not fit {region_px}-px regions; use 0 to {region_px // 2}")
    return value


def grid_axes(width: int, height: int, side: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 x and y of the region grid: the tiler's, and one more flush with the right or bottom edge.

    The tiler (:func:`.tiling.grid_origins`) cuts whole tiles only; where its last one stops short of the
    slide's edge, the extra column or row covers the strip it leaves out, so objects there are found too.
    """
    from domainfm.domains.pathology.tiling import grid_origins

    origins = grid_origins(width, height, side, step)
    axes = []
    for values, extent in ((np.unique(origins[:, 0]), width), (np.unique(origins[:, 1]), height)):
        last = int(np.floor(extent - side))
        axes.append(np.append(values, last) if len(values) and last > values[-1] else values)
    return axes[0], axes[1]


def edge_regions(xs: np.ndarray, ys: np.ndarray, regular: np.ndarray) -> np.ndarray:
    """The corners ``[M, 2]`` of the grid ``xs`` x ``ys`` that are not among the tiler's ``regular`` ones."""
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    every = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.int64)
    known = {tuple(c) for c in np.asarray(regular, np.int64).tolist()}
    extra = [c for c in every.tolist() if tuple(c) not in known]
    return np.array(extra, np.int64).reshape(-1, 2)


class TileOwners:
    """Which tissue region owns a level-0 point: the nearest-centred tissue region containing it (module docstring).

    Args:
        xs: Level-0 x of the grid's columns (increasing; :func:`grid_axes`).
        ys: Level-0 y of its rows.
        side: Region side (level 0).
        coords: Top-left corners ``[N, 2]`` of the tissue regions (on the grid).
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, side: float, coords: np.ndarray) -> None:
        self.xs, self.ys = np.asarray(xs, np.int64), np.asarray(ys, np.int64)
        self.side = float(side)
        self.tissue = np.zeros((len(self.ys), len(self.xs)), bool)
        if len(coords):
            rows, cols = self.cell(coords)
            self.tissue[rows, cols] = True

    def cell(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid ``(rows, cols)`` of tiles with top-left ``coords`` ``[N, 2]``."""
        coords = np.asarray(coords).reshape(-1, 2)
        cols, rows = np.searchsorted(self.xs, coords[:, 0]), np.searchsorted(self.ys, coords[:, 1])
        if (cols >= len(self.xs)).any() or (rows >= len(self.ys)).any():
            raise ValueError("tile corners off the slide's tile grid")
        if (self.xs[cols] != coords[:, 0]).any() or (self.ys[rows] != coords[:, 1]).any():
            raise ValueError("tile corners off the slide's tile grid")
        return rows, cols

    def owners(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the owning tile of each level-0 point ``[n, 2]`` (x, y); -1 where none holds it."""
        points = np.asarray(points, np.float64).reshape(-1, 2)
        n = len(points)
        best = np.full(n, np.inf)
        rows, cols = np.full(n, -1), np.full(n, -1)
        last_col = np.searchsorted(self.xs, points[:, 0], side="right") - 1
        last_row = np.searchsorted(self.ys, points[:, 1], side="right") - 1
        first_col = np.searchsorted(self.xs, points[:, 0] - self.side, side="right")  # x0 + side > x
        first_row = np.searchsorted(self.ys, points[:, 1] - self.side, side="right")
        span_rows = int((last_row - first_row).max(initial=0)) + 1
        span_cols = int((last_col - first_col).max(initial=0)) + 1
        for dr in range(span_rows):
            for dc in range(span_cols):
                r, c = last_row - dr, last_col - dc
                valid = (r >= 0) & (c >= 0) & (r >= first_row) & (c >= first_col)
                rr, cc = np.clip(r, 0, None), np.clip(c, 0, None)
                x0, y0 = self.xs[cc], self.ys[rr]
                inside = valid & self.tissue[rr, cc]
                half = self.side / 2
                distance = (points[:, 0] - x0 - half) ** 2 + (points[:, 1] - y0 - half) ** 2
                better = inside & (distance < best)
                best = np.where(better, distance, best)
                rows, cols = np.where(better, r, rows), np.where(better, c, cols)
        return rows, cols

    def shared_edges(self, row: int, col: int) -> tuple[bool, bool, bool, bool]:
        """Whether the tile's left, top, right and bottom neighbours are tissue tiles (their tiles reach over)."""

        def tissue(r: int, c: int) -> bool:
            return 0 <= r < self.tissue.shape[0] and 0 <= c < self.tissue.shape[1] and bool(self.tissue[r, c])

        return tissue(row, col - 1), tissue(row - 1, col), tissue(row, col + 1), tissue(row + 1, col)


class FeatureStream:
    """Writes a GeoJSON FeatureCollection feature by feature: ``{"type", "domainfm": members, "features": [...]}``."""

    def __init__(self, handle: IO[str], members: dict[str, Any]) -> None:
        self.handle, self.count = handle, 0
        head = json.dumps({"type": "FeatureCollection", **members})[:-1]
        handle.write(head + ', "features": [\n')

    def write(self, features: list[dict[str, Any]]) -> None:
        """Appends ``features``."""
        for feature in features:
            self.handle.write((",\n" if self.count else "") + json.dumps(feature))
            self.count += 1

    def close(self) -> None:
        """Ends the collection."""
        self.handle.write("\n]}\n")


def tile_objects(
    maps: np.ndarray, min_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[slice, slice] | None]]:
    """One tile's instances: ``(ids, classes, scores, centroids [n, 2] (col, row) in pixel units, boxes)``.

    Centroids are the mean pixel centre (``index + 0.5``) of each object.
    """
    from scipy import ndimage

    from domainfm.domains.pathology.instances import instances_from_maps

    ids, classes, scores = instances_from_maps(maps, min_size)
    n = int(ids.max())
    if not n:
        return ids, classes, scores, np.zeros((0, 2)), []
    labels = np.arange(1, n + 1)
    centres = np.array(ndimage.center_of_mass(np.ones(ids.shape), ids, labels), np.float64).reshape(-1, 2)
    return ids, classes, scores, centres[:, ::-1] + 0.5, ndimage.find_objects(ids)


def _cut(box: tuple[slice, slice] | None, shape: tuple[int, int], shared: tuple[bool, bool, bool, bool]) -> bool:
    """Whether an object with bounding ``box`` touches a tile edge shared with a tissue neighbour."""
    if box is None:
        return False
    left, top, right, bottom = shared
    rows, cols = box
    return bool(
        (left and cols.start == 0)
        or (top and rows.start == 0)
        or (right and cols.stop == shape[1])
        or (bottom and rows.stop == shape[0])
    )


class _QC:
    """What the QC picture needs, bounded: object dots on the thumbnail and the tile with the most objects."""

    def __init__(self, thumbnail: np.ndarray, downsample: float) -> None:
        self.thumbnail, self.downsample = thumbnail, float(downsample)
        self.marks = np.zeros(thumbnail.shape[:2], np.uint8)  # 0: none, else 1 + class (at most 255 classes)
        self.crop: tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]] | None = None
        self.crop_count = 0

    def add(self, points: np.ndarray, classes: np.ndarray) -> None:
        if not len(points):
            return
        cols = np.clip((points[:, 0] / self.downsample).astype(np.int64), 0, self.marks.shape[1] - 1)
        rows = np.clip((points[:, 1] / self.downsample).astype(np.int64), 0, self.marks.shape[0] - 1)
        self.marks[rows, cols] = np.clip(classes, 0, None) + 1

    def offer(self, tile: np.ndarray, ids: np.ndarray, classes: np.ndarray, kept: int, corner: tuple) -> None:
        if kept > self.crop_count:
            self.crop_count, self.crop = kept, (tile.transpose(1, 2, 0).copy(), ids.copy(), classes.copy(), corner)

    def write(self, path: Path, names: list[str], counts: np.ndarray, title: str) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from scipy import ndimage

        from domainfm.domains.pathology.instance_geojson import PALETTE
        from domainfm.domains.pathology.instance_train import draw_contours
        from domainfm.shared.predict.pictures import SOFTWARE

        palette = np.array(PALETTE, np.uint8)
        sparse = 0 < np.count_nonzero(self.marks) < 0.02 * self.marks.size  # dots grow only where they stay apart
        dots = ndimage.grey_dilation(self.marks, size=(3, 3)) if sparse else self.marks
        marked = self.thumbnail.copy()
        shown = dots > 0  # blended, so the tissue shows through dense objects
        marked[shown] = (0.4 * marked[shown] + 0.6 * palette[(dots[shown] - 1) % len(palette)]).astype(np.uint8)
        fig = Figure(figsize=(10.5, 4.6), dpi=110, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.4])
        axes[0].imshow(marked, interpolation="nearest")
        axes[0].set_title("objects on the thumbnail", fontsize=8)
        if self.crop is not None:
            image, ids, classes, (x, y) = self.crop
            axes[1].imshow(draw_contours(image, ids, classes), interpolation="nearest")
            axes[1].set_title(f"region at level-0 ({x:.0f}, {y:.0f}): {self.crop_count} objects", fontsize=8)
        for ax in axes:
            ax.set_axis_off()
        colours = palette / 255.0
        handles = [
            Patch(color=colours[k % len(palette)], label=f"{name} ({counts[k]})") for k, name in enumerate(names)
        ]
        axes[2].legend(handles=handles, loc="center left", fontsize=7, frameon=False, title="class (objects)")
        fig.suptitle(title, fontsize=8)
        fig.savefig(path, format="png", dpi=110, metadata={"Software": SOFTWARE})


def _read(path: Path, tiles: Any, coords: np.ndarray) -> Any:
    """Regions at ``coords`` off the tiler's grid, read as :func:`.slide_inputs.slide_tiles` reads its own."""
    from domainfm.domains.pathology import tiling

    if not len(coords):
        return
    reader = tiling.RegionReader(Path(path), tiles.params.threads)
    try:
        yield from tiling.read_tiles(reader, tiles.plan.info, coords, tiles.mpp, tiles.side, tiles.params)
    finally:
        reader.close()


def predict_instance_slide(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    *,
    assume_mpp: float | None = None,
    min_tissue: float = 0.5,
    min_size: int = 6,
    batch: int = 16,
    overlap: int | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Finds the nuclei/glands of one slide; writes its GeoJSON and QC picture; returns its row (module docstring)."""
    from tqdm.auto import tqdm

    from domainfm.domains.pathology.instance_geojson import object_features
    from domainfm.domains.pathology.slide_inputs import card_mpp, slide_tiles
    from domainfm.domains.pathology.slides import SlideError, slide_info
    from domainfm.domains.pathology.tiling import footprint, grid_origins, open_slide
    from domainfm.domains.pathology.tissue import tissue_fractions

    card = deployable.card
    names = list(card.build["class_names"])
    model_px = int(card.build.get("tile_px") or card.spatial_shape[0])
    slide = open_slide(Path(item.path))
    try:
        shorter = min(slide.dimensions)
        scan_mpp = slide_info(slide, item.path, assume_mpp).mpp
    finally:
        slide.close()
    tile_px = region_size(model_px, int(shorter * scan_mpp / card_mpp(card)))
    overlap = default_overlap(tile_px, overlap)
    device = device or torch.device("cpu")
    per_batch = max(1, batch * model_px**2 // tile_px**2)  # regions per batch: about ``batch`` tiles of pixels
    with slide_tiles(item.path, card, mpp=None, min_tissue=min_tissue, batch=per_batch, assume_mpp=assume_mpp,
                     require_tissue=False, overlap=overlap, tile_px=tile_px) as tiles:  # fmt: skip
        plan, coords, side = tiles.plan, tiles.coords, tiles.side
        info = plan.info
        if side > min(info.width, info.height):
            raise SlideError(
                f"{item.path}: the slide ({info.width}x{info.height} px at {info.mpp:g} mpp) is smaller than one "
                f"tile ({side:.0f} px at {tiles.mpp:g} mpp); predict it as a picture"
            )
        step = footprint(info, tiles.mpp, tiles.params)[1]
        xs, ys = grid_axes(info.width, info.height, side, step)
        extra = edge_regions(xs, ys, grid_origins(info.width, info.height, side, step))
        if len(extra):  # the regions flush with the right and bottom edges, where they hold tissue
            extra = extra[tissue_fractions(plan.mask, plan.thumb_downsample, extra, side) >= min_tissue]
        coords = np.concatenate([coords, extra]).astype(np.int64)
        owners = TileOwners(xs, ys, side, coords)
        downsample = side / tile_px
        members = {"domainfm": {"slide": item.key, "objects": "detections", "region_px": tile_px, "mpp": tiles.mpp,
                                "slide_mpp": info.mpp, "overlap_px": overlap, "region_side_level0": side,
                                "coordinates": "level-0 pixels, origin top-left"}}  # fmt: skip
        counts = np.zeros(len(names), np.int64)
        cut = 0
        qc = _QC(plan.thumbnail, plan.thumb_downsample)
        start = 0
        with open(outputs.path("geojson", ".geojson"), "w", encoding="utf-8") as handle:
            stream = FeatureStream(handle, members)
            bar = tqdm(total=len(coords), desc=item.key, unit="tile", leave=False, disable=not progress)
            with contextlib.closing(bar), torch.no_grad():
                for raw in itertools.chain(tiles.batches, _read(item.path, tiles, extra)):
                    maps = predict_array(deployable, raw, device)
                    for k in range(len(raw)):
                        x0, y0 = (float(v) for v in coords[start + k])
                        row, col = (int(v[0]) for v in owners.cell(coords[start + k]))
                        ids, classes, scores, centres, boxes = tile_objects(maps[k], min_size)
                        points = np.stack([x0 + centres[:, 0] * downsample, y0 + centres[:, 1] * downsample], 1)
                        own_rows, own_cols = owners.owners(points)
                        kept = np.flatnonzero((own_rows == row) & (own_cols == col)) + 1
                        owned = np.where(np.isin(ids, kept), ids, 0)
                        stream.write(object_features(owned, classes, scores, names, (x0, y0), downsample))
                        shared = owners.shared_edges(row, col)
                        cut += sum(_cut(boxes[i - 1], ids.shape, shared) for i in kept)
                        counts += np.bincount(np.clip(classes[kept], 0, None), minlength=len(names))[: len(names)]
                        qc.add(points[kept - 1], classes[kept])
                        qc.offer(raw[k], owned, classes, len(kept), (x0, y0))
                    start += len(raw)
                    bar.update(len(raw))
            stream.close()
        if start != len(coords):
            raise SlideError(f"{item.path}: read {start} of {len(coords)} tiles")
        tissue_mm2 = float(plan.mask.sum()) * (plan.thumb_downsample * info.mpp) ** 2 / 1e6
        total = int(counts.sum())
        title = (f"{item.key}: {total} objects in {len(coords)} tissue regions at {tiles.mpp:g} mpp ({tile_px} px, "
                 f"overlap {overlap}), scan {info.mpp:g} mpp ({info.mpp_source})")  # fmt: skip
        qc.write(outputs.path("overlays", ".png"), names, counts, title)

    def density(n: int) -> float | None:
        return round(n / tissue_mm2, 3) if tissue_mm2 > 0 else None

    return {
        "type": "slide_instances",
        "tiles": len(coords),
        "objects": total,
        **{f"objects_{name}": int(n) for name, n in zip(names, counts, strict=True)},
        "tissue_mm2": round(tissue_mm2, 6),
        "objects_per_mm2": density(total),
        **{f"per_mm2_{name}": density(int(n)) for name, n in zip(names, counts, strict=True)},
        "cut_objects": int(cut),
        "mpp": tiles.mpp,
        "slide_mpp": info.mpp,
        "mpp_source": info.mpp_source,
        "region_px": tile_px,
        "overlap": overlap,
        "width": info.width,
        "height": info.height,
        "geojson": f"geojson/{item.stem}.geojson",
    }
