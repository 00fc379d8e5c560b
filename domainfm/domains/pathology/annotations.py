"""Tile labels from a user's annotations: GeoJSON polygons, a label mask per slide, a CSV, or class folders.

``pathology tile --labels FILE`` reads, per slide (coordinates are level-0 pixels throughout):

* **GeoJSON polygons** (``.geojson``/``.json``: a FeatureCollection, or QuPath's list of features): the class
  is ``properties.classification.name`` (QuPath) or ``properties.name``; a tile takes the class whose
  polygons cover at least ``overlap`` of its area (shapely ``STRtree``), else it is unlabelled (-1).
  Polygons of one class are merged first, so overlapping annotations are not counted twice; features
  without a class or without area (points, lines) label nothing.
* **A label mask** (``.png``/``.tif``/``.tiff``/``.bmp``): class ids at ``mask_downsample`` level-0 pixels
  per mask pixel; a tile takes the most frequent id under it (255 = unlabelled; a 0/255 mask is refused, as
  it is ambiguous). Class ``k`` is named ``"k"``.
* **A CSV** with a key column (``slide`` or ``image``; file name, stem or path) and ``label``; with ``x,y``
  columns each row is a point (a tile corner, or any point inside a tile) and a tile takes the most frequent
  label of the points inside it; without them every tile of the listed image takes its label.
* **Class folders** (patch sets, ``folder/<class>/*.png``): every tile of an image takes its folder's class.

``--labels`` may be one file (for a CSV, or when tiling one slide) or a folder of files named by slide
(``<stem>.geojson``, ``<name>.geojson``, ``<stem>.png``, ...). The ordered class list goes into the store's
``label_names``, which ``pathology probe``, ``train`` and ``mil`` read, as they read phantom truth labels.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.shared.errors import DomainfmError

POLYGON_SUFFIXES = (".geojson", ".json")
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
CSV_SUFFIXES = (".csv",)
LABEL_SUFFIXES = POLYGON_SUFFIXES + MASK_SUFFIXES + CSV_SUFFIXES
UNLABELLED_MASK_VALUE = 255
MASK_SIZE_TOLERANCE = 2  # mask pixels a mask may differ from the slide's size at its downsample (rounding)


class LabelError(DomainfmError, ValueError):
    """Annotations that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class TileLabels:
    """Where a store's tile labels come from, and its ordered class list (picklable: sent to every reader)."""

    names: tuple[str, ...]
    source: Path | None = None
    overlap: float = 0.5
    mask_downsample: float = 1.0
    image_classes: Mapping[str, str] = field(default_factory=dict)  # image path -> class (class folders)
    single_slide: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON form recorded in the store's value scaling."""
        return {
            "source": str(self.source) if self.source else "class folders",
            "overlap": self.overlap,
            "mask_downsample": self.mask_downsample,
        }

    def file_for(self, slide: Path) -> Path | None:
        """The label file of ``slide``: ``source`` itself, or its file named by the slide in a folder."""
        return None if self.source is None else label_file(self.source, slide, self.single_slide)

    def for_tiles(self, slide: Path, size: tuple[int, int], coords: np.ndarray, side: float) -> np.ndarray:
        """``int32`` class ids (into :attr:`names`; -1 unlabelled) of the tiles at level-0 ``coords`` of ``slide``."""
        slide = Path(slide)
        if str(slide) in self.image_classes:
            return np.full(len(coords), self.names.index(self.image_classes[str(slide)]), np.int32)
        path = self.file_for(slide)
        if path is None:
            return np.full(len(coords), -1, np.int32)
        suffix = path.suffix.lower()
        if suffix in POLYGON_SUFFIXES:
            return polygon_labels(read_polygons(path), self.names, coords, side, self.overlap)
        if suffix in MASK_SUFFIXES:
            return mask_labels(path, self.names, coords, side, self.mask_downsample, size)
        return csv_labels(read_label_csv(path), slide, self.names, coords, side)


def label_file(source: Path, slide: Path, single_slide: bool) -> Path:
    """``source`` when it is a CSV (or the one slide's file), else the file in folder ``source`` named by ``slide``."""
    source = Path(source)
    if source.is_dir():
        for name in (slide.name, slide.stem):
            for suffix in LABEL_SUFFIXES:
                candidate = source / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
        raise LabelError(
            f"{source}: no label file for {slide.name} (looked for {slide.stem}.geojson, .json, .png, .tif, .csv); "
            "add one (an empty FeatureCollection labels nothing)"
        )
    if not source.is_file():
        raise LabelError(f"{source}: no such labels file or folder")
    if source.suffix.lower() not in LABEL_SUFFIXES:
        raise LabelError(f"{source}: not a labels file; use GeoJSON (.geojson/.json), a mask image or a CSV")
    if source.suffix.lower() not in CSV_SUFFIXES and not single_slide:
        raise LabelError(
            f"{source}: one {source.suffix} file labels one slide; for several slides give a folder of files "
            "named by slide stem (or one CSV with a slide column)"
        )
    return source


# ------------------------------------------------------------------------------------------- polygons


@lru_cache(maxsize=8)  # read once per slide for every mpp, a few slides at a time
def read_polygons(path: Path) -> tuple[tuple[str, Any], ...]:
    """``(class name, shapely geometry)`` of each classified areal feature of a GeoJSON/QuPath file."""
    import shapely
    from shapely.geometry import shape

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelError(f"{path}: not readable as GeoJSON ({error})") from error
    if isinstance(data, dict):
        data = data.get("features", [data] if data.get("type") == "Feature" else None)
    if not isinstance(data, list):
        raise LabelError(f"{path}: expected a GeoJSON FeatureCollection or a list of features (QuPath export)")
    polygons = []
    for i, feature in enumerate(data):
        try:
            geometry = shapely.make_valid(shape(feature["geometry"]))
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as error:
            raise LabelError(f"{path}: feature {i} has no usable geometry ({error!r})") from error
        name = class_name(feature.get("properties") or {})
        if name and geometry.area > 0:
            polygons.append((name, geometry))
    return tuple(polygons)


def class_name(properties: Mapping[str, Any]) -> str | None:
    """QuPath's ``classification.name``, else ``name``; ``None`` for an unclassified feature."""
    classification = properties.get("classification")
    if isinstance(classification, Mapping) and classification.get("name"):
        return str(classification["name"])
    return str(properties["name"]) if properties.get("name") else None


def polygon_labels(
    polygons: tuple[tuple[str, Any], ...], names: tuple[str, ...], coords: np.ndarray, side: float, overlap: float
) -> np.ndarray:
    """Class of each tile: the class covering the most of it, when that reaches ``overlap`` of its area; else -1."""
    import shapely
    from shapely import STRtree

    labels = np.full(len(coords), -1, np.int32)
    if not polygons or len(coords) == 0:
        return labels
    parts, classes = [], []
    for name in sorted({n for n, _ in polygons}):  # one union per class: overlapping annotations count once
        union = shapely.union_all([g for n, g in polygons if n == name])
        pieces = shapely.get_parts(union)
        parts += list(pieces)
        classes += [names.index(name)] * len(pieces)
    parts_array, part_class = np.array(parts, dtype=object), np.array(classes)
    x, y = coords[:, 0].astype(float), coords[:, 1].astype(float)
    boxes = shapely.box(x, y, x + side, y + side)
    tile, part = STRtree(parts_array).query(boxes, predicate="intersects")
    cover = np.zeros((len(coords), len(names)))
    np.add.at(cover, (tile, part_class[part]), shapely.area(shapely.intersection(boxes[tile], parts_array[part])))
    cover /= side * side
    best = cover.argmax(1)
    covered = cover[np.arange(len(coords)), best] >= overlap - 1e-9
    labels[covered] = best[covered]
    return labels


# ----------------------------------------------------------------------------------------------- masks


def read_mask(path: Path) -> np.ndarray:
    """A label mask as ``[h, w]`` integer class ids (palette images give their indices)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mask = np.asarray(image)
    except (OSError, UnidentifiedImageError) as error:
        raise LabelError(f"{path}: not readable as a label mask image ({error})") from error
    if mask.ndim == 3:
        if not (mask[..., :3] == mask[..., :1]).all():
            raise LabelError(f"{path}: a label mask must hold one class id per pixel (greyscale or palette), not RGB")
        mask = mask[..., 0]
    if mask.dtype.kind not in "ui" and mask.dtype != bool:
        raise LabelError(f"{path}: a label mask must hold integer class ids, not {mask.dtype}")
    if mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, UNLABELLED_MASK_VALUE}:
        raise LabelError(
            f"{path}: a 0/255 mask reads as class 0 and unlabelled (255); save class ids (0 and 1) for a binary mask"
        )
    return mask.astype(np.int64)


def mask_class_ids(path: Path) -> list[int]:
    """The class ids a mask holds (without the unlabelled value)."""
    return [int(v) for v in np.unique(read_mask(path)) if v != UNLABELLED_MASK_VALUE]


def mask_labels(
    path: Path, names: tuple[str, ...], coords: np.ndarray, side: float, downsample: float, size: tuple[int, int]
) -> np.ndarray:
    """Most frequent class id under each tile (pixels of value 255 are unlabelled; -1 when all are)."""
    mask = read_mask(path)
    expected = (round(size[1] / downsample), round(size[0] / downsample))
    if any(abs(a - b) > MASK_SIZE_TOLERANCE for a, b in zip(mask.shape, expected, strict=True)):
        raise LabelError(
            f"{path}: the mask is {mask.shape[1]}x{mask.shape[0]} px, the slide at downsample {downsample:g} is "
            f"{expected[1]}x{expected[0]}; pass --label_downsample with the mask's level-0 px per mask px"
        )
    lookup = np.full(max(int(mask.max(initial=0)), UNLABELLED_MASK_VALUE) + 1, -1, np.int64)
    for value in range(len(lookup)):
        if str(value) in names and value != UNLABELLED_MASK_VALUE:
            lookup[value] = names.index(str(value))
    classes = lookup[mask]
    labels = np.full(len(coords), -1, np.int32)
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x // downsample), int(y // downsample)
        x1, y1 = max(x0 + 1, round((x + side) / downsample)), max(y0 + 1, round((y + side) / downsample))
        window = classes[y0:y1, x0:x1]
        window = window[window >= 0]
        if window.size:
            labels[i] = int(np.bincount(window).argmax())
    return labels


# ------------------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class LabelTable:
    """Rows of a labels CSV: key (slide or image), label and, for point labels, level-0 ``x, y``."""

    path: Path
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    xy: np.ndarray | None

    def rows_for(self, slide: Path) -> np.ndarray:
        """Row numbers naming ``slide`` (by path, file name, stem, or a path ending in the key)."""
        slide = Path(slide)
        candidates = {str(slide), slide.name, slide.stem, f"{slide.parent.name}/{slide.name}"}
        return np.array([i for i, k in enumerate(self.keys) if k in candidates], np.int64)


@lru_cache(maxsize=8)
def read_label_csv(path: Path) -> LabelTable:
    """Reads ``slide,x,y,label`` (points) or ``image,label`` (whole images); columns in any case."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabelError(f"{path}: cannot be read as a labels CSV ({error})") from error
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    key = next((columns[c] for c in ("slide", "image", "source", "file", "filename", "name") if c in columns), None)
    label = next((columns[c] for c in ("label", "class") if c in columns), None)
    if key is None or label is None:
        raise LabelError(
            f"{path}: a labels CSV needs a key column (slide or image) and a label column, plus x,y for points; "
            f"it has {sorted(columns.values()) or 'no rows'}"
        )
    xy = None
    if "x" in columns and "y" in columns:
        try:
            xy = np.array([[float(r[columns["x"]]), float(r[columns["y"]])] for r in rows])
        except (TypeError, ValueError) as error:
            raise LabelError(f"{path}: x and y must be level-0 pixel numbers ({error})") from error
    keys = tuple((r[key] or "").strip() for r in rows)
    labels = tuple((r[label] or "").strip() for r in rows)
    empty = next((i for i, v in enumerate(labels) if not v), None)
    if empty is not None:
        raise LabelError(f"{path}, line {empty + 2}: empty label")
    return LabelTable(Path(path), keys, labels, xy)


def csv_labels(table: LabelTable, slide: Path, names: tuple[str, ...], coords: np.ndarray, side: float) -> np.ndarray:
    """Point labels: most frequent label of the points inside each tile; image labels: the image's label."""
    rows = table.rows_for(slide)
    labels = np.full(len(coords), -1, np.int32)
    if len(rows) == 0 or len(coords) == 0:
        return labels
    ids = np.array([names.index(table.labels[r]) for r in rows])
    if table.xy is None:
        return np.full(len(coords), np.bincount(ids).argmax(), np.int32)
    points = table.xy[rows]
    inside = (
        (points[None, :, 0] >= coords[:, None, 0])
        & (points[None, :, 0] < coords[:, None, 0] + side)
        & (points[None, :, 1] >= coords[:, None, 1])
        & (points[None, :, 1] < coords[:, None, 1] + side)
    )  # [tiles, points]; points are few per slide
    for tile in np.flatnonzero(inside.any(1)):
        labels[tile] = np.bincount(ids[inside[tile]]).argmax()
    return labels


# ---------------------------------------------------------------------------------------- class list


def _sort_key(name: str) -> tuple[int, int, str]:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def collect_labels(
    slides: list[Path],
    source: Path | None,
    overlap: float = 0.5,
    mask_downsample: float = 1.0,
    image_classes: Mapping[str, str] | None = None,
) -> TileLabels:
    """Reads every slide's annotations once to fix the ordered class list (numbers first, then names)."""
    image_classes = dict(image_classes or {})
    names: set[str] = set(image_classes.values())
    single = len(slides) == 1
    if source is not None:
        probe = TileLabels((), Path(source), overlap, mask_downsample, {}, single)
        for slide in slides:
            if str(slide) in image_classes:
                continue
            path = probe.file_for(Path(slide))
            suffix = path.suffix.lower()
            if suffix in POLYGON_SUFFIXES:
                names |= {n for n, _ in read_polygons(path)}
            elif suffix in MASK_SUFFIXES:
                names |= {str(v) for v in mask_class_ids(path)}
            else:
                names |= set(read_label_csv(path).labels)
    if not names:
        raise LabelError(f"{source}: the annotations name no class (GeoJSON features need a classification)")
    ordered = tuple(sorted(names, key=_sort_key))
    return TileLabels(ordered, Path(source) if source else None, overlap, mask_downsample, image_classes, single)
