"""Slides annotated with QuPath/GeoJSON polygons (one per nucleus or gland) -> instance tiles.

The slide is tiled exactly as ``pathology tile`` tiles it (:func:`~.tiling.read_slide_tiles`: any
OpenSlide format or a plain picture with ``--assume-mpp``, tissue detection, several mpps, a QC picture),
and each kept tile gets the companions of :mod:`.instance_data`: the polygons that reach the tile are
rasterised on its pixel grid (:func:`~.instance_geojson.rasterise_features`: pixels whose centres lie
inside; an object cut by the tile edge keeps its part inside), renumbered ``1..n`` per tile, with the class
of each (QuPath's ``classification.name``) and, as its source id, the polygon's position in the file plus
one (so the same object carries the same source id in every tile and at every mpp).

Annotations are found as the tile labels of ``pathology tile --labels`` are: one GeoJSON file for one
slide, or a folder of files named by slide stem (``SLIDE.geojson`` or ``SLIDE.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.pathology.instance_data import MAX_INSTANCES, InstanceDataError, tile_instances
from domainfm.domains.pathology.tiling import TilingParams, read_slide_tiles, tile_spec
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch

READER_NAME = "pathology.slide_instances"
READER_VERSION = "1"
GEOJSON_SUFFIXES = (".geojson", ".json")


@dataclass(frozen=True)
class SlideInstanceParams:
    """Tiling plus the polygon files and classes of a store of annotated slides."""

    tiling: TilingParams
    polygons: tuple[tuple[str, str], ...]  # slide path -> its GeoJSON file
    class_names: tuple[str, ...]
    max_instances: int = MAX_INSTANCES


def polygon_file(annotations: Path, slide: Path, single: bool) -> Path:
    """The GeoJSON of ``slide``: the file itself (one slide), else ``FOLDER/STEM.geojson`` or ``.json``."""
    annotations = Path(annotations)
    if annotations.is_file():
        if not single:
            raise InstanceDataError(f"{annotations} is one file but several slides were given; pass a folder of files")
        return annotations
    for suffix in GEOJSON_SUFFIXES:
        if (annotations / f"{slide.stem}{suffix}").is_file():
            return annotations / f"{slide.stem}{suffix}"
    raise InstanceDataError(f"no {slide.stem}.geojson in {annotations} for the slide {slide}")


@lru_cache(maxsize=4)
def read_features(path: str) -> tuple[list[dict[str, Any]], np.ndarray, list[str | None]]:
    """Areal features of a GeoJSON/QuPath file, their level-0 bounds ``[N, 4]`` and class names."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InstanceDataError(f"{path}: not readable as GeoJSON ({error})") from error
    if isinstance(data, dict):
        data = data.get("features", [data] if data.get("type") == "Feature" else None)
    if not isinstance(data, list):
        raise InstanceDataError(f"{path}: expected a GeoJSON FeatureCollection or a list of features (QuPath export)")
    features, bounds, names = [], [], []
    for i, feature in enumerate(data):
        geometry = (feature or {}).get("geometry") or {}
        kind = geometry.get("type")
        if kind not in ("Polygon", "MultiPolygon"):
            continue
        try:
            rings = [geometry["coordinates"][0]] if kind == "Polygon" else [p[0] for p in geometry["coordinates"]]
            points = np.concatenate([np.asarray(r, np.float64)[:, :2] for r in rings])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise InstanceDataError(f"{path}: feature {i} has no usable polygon ({error!r})") from error
        properties = feature.get("properties") or {}
        name = (properties.get("classification") or {}).get("name") or properties.get("name")
        features.append(feature)
        bounds.append([*points.min(0), *points.max(0)])
        names.append(str(name) if name else None)
    return features, np.array(bounds, np.float64).reshape(-1, 4), names


def _tile_companions(
    features: list[dict[str, Any]], bounds: np.ndarray, names: list[str | None], x: int, y: int, mpp: float,
    slide_mpp: float, params: SlideInstanceParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    from domainfm.domains.pathology.instance_geojson import rasterise_features

    tile = params.tiling.tile_px
    downsample = mpp / slide_mpp
    side = tile * downsample
    near = np.flatnonzero(
        (bounds[:, 0] < x + side) & (bounds[:, 2] > x) & (bounds[:, 1] < y + side) & (bounds[:, 3] > y)
    )
    ids = np.zeros((tile, tile), np.int64)
    for i in near:  # later polygons over earlier ones, each under its position in the file (+ 1)
        mask, _ = rasterise_features([features[i]], (tile, tile), [], (x, y), downsample)
        ids[mask > 0] = i + 1
    classes = {int(s): params.class_names.index(names[s - 1]) for s in np.unique(ids[ids > 0])}
    return tile_instances(ids, classes, params.max_instances)


def read_slide_instances(path: Path, params: SlideInstanceParams, qc_dir: Path | None = None) -> Iterator[TileBatch]:
    """Reader for the ingest engine: the slide's kept tiles with instance companions from its polygons."""
    features, bounds, names = read_features(dict(params.polygons)[str(path)])
    slide_mpp = None
    for batch in read_slide_tiles(Path(path), params.tiling, qc_dir):
        if batch.source_meta:
            slide_mpp = float(batch.source_meta["mpp"])
        if not len(batch):
            yield batch
            continue
        assert slide_mpp is not None
        parts = [
            _tile_companions(features, bounds, names, int(x), int(y), float(mpp), slide_mpp, params)
            for x, y, mpp in zip(batch.index["x"], batch.index["y"], batch.index["scale"], strict=True)
        ]
        batch.companions.update(
            instances=np.stack([p[0] for p in parts]),
            instance_class=np.stack([p[1] for p in parts]),
            instance_source_id=np.stack([p[2] for p in parts]),
        )
        yield batch


def slide_instance_spec(params: SlideInstanceParams) -> StoreSpec:
    """The slide tile spec with the instance companions and classes."""
    spec = tile_spec(params.tiling)
    tile, slots = params.tiling.tile_px, params.max_instances + 1
    spec.value_scaling["instance_classes"] = list(params.class_names)
    spec.value_scaling["instances"] = "companions/instances: polygon ids 1..n per tile (0 background), clipped"
    spec.companions.update(
        instances=Companion((tile, tile), "uint16"),
        instance_class=Companion((slots,), "int16"),
        instance_source_id=Companion((slots,), "int32"),
    )
    return spec


def ingest_slide_instances(
    slides: list[Path],
    annotations: Path,
    out: Path,
    tiling: TilingParams,
    max_instances: int = MAX_INSTANCES,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Tiles ``slides`` with the instance companions of their polygons (see the module docstring)."""
    from domainfm.shared.tiles.ingest import QC_FOLDER, ingest

    files = {str(s): str(polygon_file(annotations, Path(s), len(slides) == 1)) for s in slides}
    classes = sorted({n for f in set(files.values()) for n in read_features(f)[2] if n})
    unnamed = [f for f in set(files.values()) if None in read_features(f)[2]]
    if unnamed:
        raise InstanceDataError(f"{unnamed[0]}: polygons without a class; classify them (QuPath: Set class)")
    if not classes:
        raise InstanceDataError(f"no polygons in {annotations}")
    params = SlideInstanceParams(tiling, tuple(files.items()), tuple(classes), max_instances)
    reader = partial(read_slide_instances, params=params, qc_dir=Path(out) / QC_FOLDER)
    return ingest(
        [Path(s) for s in slides], Path(out), slide_instance_spec(params), reader, READER_NAME, READER_VERSION,
        workers, None, False, overwrite, progress,
    )  # fmt: skip
