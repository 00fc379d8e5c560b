"""Instance maps <-> GeoJSON polygons in level-0 pixel coordinates (QuPath's import and export format).

An object of an id map becomes one GeoJSON ``Feature``: a ``Polygon`` (a ``MultiPolygon`` when a tile edge
or the prediction split it) traced along the 0.5 iso-line between its pixels and the rest
(``skimage.measure.find_contours``, marching squares), with QuPath's properties: ``objectType``
(``detection``: QuPath's cell-like objects), ``classification`` (``name`` and a colour) and
``measurements`` holding the ``score``. Coordinates are level-0 pixels of the slide or picture: pixel
``(row, col)`` of a map whose top-left lies at level-0 ``(x0, y0)`` and whose pixels are ``downsample``
level-0 pixels wide covers ``[x0 + col * ds, x0 + (col + 1) * ds)``. Holes are not traced (a gland's lumen
belongs to the gland).

The way back, :func:`rasterise_features`, paints each polygon's pixels (those whose centres lie inside,
``skimage.draw.polygon``) with a new id, later features over earlier ones; so a round trip returns every
object with IoU above 0.95 for nuclei-sized objects and above (tested).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PALETTE = [(220, 60, 60), (60, 160, 60), (60, 90, 220), (230, 160, 30), (160, 60, 200), (40, 180, 190)]


def _rings(mask: np.ndarray) -> list[np.ndarray]:
    """Outer contour (``[n, 2]`` rows, cols in map pixel-centre coordinates) of each connected part of ``mask``."""
    from scipy import ndimage
    from skimage.measure import find_contours

    parts, _ = ndimage.label(mask)
    rings = []
    for k, box in enumerate(ndimage.find_objects(parts), start=1):
        piece = np.pad(parts[box] == k, 1)
        contours = find_contours(piece.astype(np.float32), 0.5)
        if not contours:
            continue
        ring = max(contours, key=len)
        rings.append(ring + np.array([box[0].start - 1, box[1].start - 1]))
    return rings


def object_features(
    ids: np.ndarray,
    classes: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
) -> list[dict[str, Any]]:
    """GeoJSON features of every object of an id map (``classes``/``scores`` indexed by id)."""
    from scipy import ndimage

    features = []
    x0, y0 = origin
    for i, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        mask = ids[box] == i
        polygons = []
        for ring in _rings(mask):
            xs = x0 + (ring[:, 1] + box[1].start + 0.5) * downsample
            ys = y0 + (ring[:, 0] + box[0].start + 0.5) * downsample
            coords = np.round(np.stack([xs, ys], 1), 3).tolist()
            if len(coords) >= 4:
                polygons.append([coords])
        if not polygons:
            continue
        geometry = (
            {"type": "Polygon", "coordinates": polygons[0]}
            if len(polygons) == 1
            else {"type": "MultiPolygon", "coordinates": polygons}
        )
        c = int(classes[i])
        name = class_names[c] if 0 <= c < len(class_names) else "Unclassified"
        score = round(float(scores[i]), 4)
        features.append({
            "type": "Feature",
            "geometry": geometry,
            "properties": {
                "objectType": "detection",
                "classification": {"name": name, "color": list(PALETTE[c % len(PALETTE)])},
                "measurements": {"score": score},
                "score": score,
            },
        })  # fmt: skip
    return features


def write_feature_collection(path: Path, features: list[dict[str, Any]]) -> Path:
    """Writes a GeoJSON FeatureCollection atomically (temporary name, then rename)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def rasterise_features(
    features: Sequence[dict[str, Any]],
    shape: tuple[int, int],
    class_names: Sequence[str],
    origin: tuple[float, float] = (0.0, 0.0),
    downsample: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """An id map ``[H, W]`` of polygons (level-0 coordinates) over a grid at ``origin`` and ``downsample``.

    Returns:
        ``(ids, class index per id)``; ids are 1.. in feature order; classes not in ``class_names`` are -1.
    """
    from skimage.draw import polygon

    ids = np.zeros(shape, np.int32)
    classes = [-1]
    x0, y0 = origin
    for feature in features:
        geometry = feature.get("geometry") or {}
        rings = {"Polygon": [geometry.get("coordinates")], "MultiPolygon": geometry.get("coordinates")}.get(
            geometry.get("type"), []
        )
        painted = False
        for rings_of_polygon in rings or []:
            outer = np.asarray(rings_of_polygon[0], np.float64)
            cols = (outer[:, 0] - x0) / downsample - 0.5
            rows = (outer[:, 1] - y0) / downsample - 0.5
            rr, cc = polygon(rows, cols, shape)
            if len(rr):
                ids[rr, cc] = len(classes)
                painted = True
        if painted:
            props = feature.get("properties") or {}
            name = (props.get("classification") or {}).get("name") or props.get("name")
            classes.append(list(class_names).index(name) if name in class_names else -1)
    return ids, np.array(classes, np.int64)
