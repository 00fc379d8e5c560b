"""Explanations of an input too large for one pass (a whole slide): tile attributions over its thumbnail.

A domain that has such inputs registers a :class:`LargeInputs` (:mod:`domainfm.shared.plugins`,
``large_inputs``): it recognises the files, and cuts one into the tiles its model takes, the way its ingest
does (for slides: the same grid, tissue detector and region reader at the classifier's resolution, the
first mpp the checkpoint records unless one is given), with a thumbnail to paint on. Each
tissue tile is attributed (in batches, under a progress bar), reduced to a tile map (channel sum for
IG/SHAP, channel mean for occlusion; rollout maps times the tile's pixel count, so 1 means uniform), and
area-averaged onto the tile's footprint on the thumbnail (overlapping footprints are averaged). Only
the thumbnail-sized sum and count are kept, so memory does not grow with the slide. Background (no
tissue tile) is left uncoloured. Integrated gradients use 16 steps per tile by default here (50 for a
single image): slides have thousands of tiles, and the per-tile completeness error is reported.

The explained target is the class given, or by default **each tile's predicted class** (so the map shows
what drove every tile's own call); the summary counts the predicted classes.

``shared`` does not import domains: the tiler is the registered domain's, imported only when a large
input is explained.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable, ModelCard
from domainfm.shared.explain.attribution import SIGNED, attribute_batch, method_options
from domainfm.shared.explain.overlay import colourbar_label, write_figure
from domainfm.shared.explain.targets import ExplainError, describe, resolve_target
from domainfm.shared.plugins import domains, load

SLIDE_DEFAULTS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 128},
    "gradient_shap": {"n_samples": 8},
}


@dataclass
class TiledInput:
    """A large input cut into the tiles a model takes.

    Attributes:
        coords: Top-left corners ``[N, 2]`` (x, y) in the input's full-resolution pixels.
        side: Tile side in full-resolution pixels.
        thumbnail: ``[h, w, 3]`` uint8 picture of the whole input to paint on.
        downsample: Full-resolution pixels per thumbnail pixel.
        batches: Raw tiles ``[n, C, t, t]`` in ``coords`` order.
        scale: The tiles' resolution in words (``"0.5 mpp"``), for titles and summaries.
        thumbnail_scale: The thumbnail's resolution in words.
        resolution: The tiles' resolution as a number (recorded in the summary as ``mpp``).
        size: The input's full-resolution ``(width, height)``, where the domain records it (tile maps need it).
    """

    coords: np.ndarray
    side: float
    thumbnail: np.ndarray
    downsample: float
    batches: Iterator[np.ndarray]
    scale: str
    thumbnail_scale: str
    resolution: float
    size: tuple[int, int] | None = None


class LargeInputs(Protocol):
    """What a domain registers for inputs explained tile by tile."""

    kinds: tuple[str, ...]

    def claims(self, path: Path, card: ModelCard) -> bool:
        """Whether ``path`` is such an input for ``card`` (raise :class:`ExplainError` for a wrong model)."""

    def open(
        self, path: Path, card: ModelCard, *, mpp: float | None, min_tissue: float, batch: int
    ) -> AbstractContextManager[TiledInput]:
        """The input cut into tiles (closed when the context ends)."""

    # Optional: ``write_tiles(tiled, card, classes, values, paths) -> dict`` writes per-tile values (``{name:
    # [N]}``) and classes in the domain's tile formats (whole slides: QuPath GeoJSON and a pyramidal TIFF, in
    # ``paths``); ``owns(path) -> bool`` says whether such a file is one domainfm wrote (for --overwrite).


def _large_inputs() -> list[LargeInputs]:
    registry = domains()
    specs = [registry.get(name).large_inputs for name in registry]
    return [load(spec) for spec in specs if spec]


def is_slide(path: Path, card: ModelCard) -> bool:
    """Whether ``path`` is explained tile by tile (a registered domain claims it for ``card``)."""
    return any(large.claims(Path(path), card) for large in _large_inputs())


def footprints(coords: np.ndarray, side: float, downsample: float, shape: tuple[int, int]) -> np.ndarray:
    """Thumbnail boxes ``[N, 4]`` (x0, y0, x1, y1; end-exclusive, at least one pixel, clipped) of tiles.

    Args:
        coords: Level-0 top-left corners ``[N, 2]`` (x, y).
        side: Tile side in level-0 pixels.
        downsample: Level-0 pixels per thumbnail pixel.
        shape: Thumbnail ``(height, width)``.
    """
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2) / downsample
    start = np.round(xy).astype(np.int64)
    end = np.maximum(np.round(xy + side / downsample).astype(np.int64), start + 1)
    height, width = shape
    return np.clip(np.concatenate([start, end], axis=1), 0, np.array([width, height, width, height]))


def _tile_maps(maps: torch.Tensor, method: str) -> torch.Tensor:
    """``[n, t, t]`` display maps of a batch of tile attributions."""
    if maps.ndim == 4:
        return maps.sum(1) if method in SIGNED else maps.mean(1)
    return maps * maps.shape[-1] * maps.shape[-2]  # rollout: 1 = uniform attention over the tile


def explain_slide(
    deployable: Deployable,
    path: str | Path,
    out: str | Path,
    method: str = "integrated_gradients",
    target: str | int | None = None,
    mpp: float | None = None,
    batch: int = 8,
    min_tissue: float = 0.5,
    progress: bool = True,
    tile_outputs: tuple[Path, ...] | None = None,
    open_options: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Attributes every tissue tile of a slide and writes the overlay on the thumbnail.

    Args:
        deployable: A tile classifier whose domain registers large inputs (``load_deployable``), on any device.
        path: The large input (for slides: any OpenSlide format).
        out: Destination PNG.
        method: An attribution method (:data:`~.attribution.METHODS`).
        target: A class name or index for every tile; ``None``: each tile's predicted class.
        mpp: Microns per pixel to tile at; default the checkpoint's first training mpp.
        batch: Tiles attributed together.
        min_tissue: Keep tiles with at least this tissue fraction (as the domain's tiler does at ingest).
        progress: Show a progress bar.
        tile_outputs: Also write each tile's mean attribution per pixel, explained score and explained class in the
            domain's tile formats at these paths (:func:`tile_writer`; whole slides: ``.geojson`` and ``.tif``).
        open_options: Further keyword arguments of the domain's ``open`` (e.g. a slide's assumed mpp).
        **options: Method options (see :func:`~.attribution.attribute`); slide defaults in :data:`SLIDE_DEFAULTS`.

    Returns:
        A summary: slide, mpp, tiles, predicted-class counts, mean explained score, IG completeness errors,
        thumbnail size and the PNG path.
    """
    card = deployable.card
    handlers = [large for large in _large_inputs() if card.kind in large.kinds]
    if not handlers:
        raise ExplainError(f"{card.kind} does not take large inputs tile by tile (no registered domain tiles them)")
    if tile_outputs is not None:
        tile_writer(card)  # refused by name before any tile is attributed
    options = method_options(method, {**SLIDE_DEFAULTS.get(method, {}), **options})
    fixed = None if target is None else resolve_target(card, target)
    tile_px = int(card.spatial_shape[0])
    path = Path(path)
    targets: list[int] = []
    scores: list[float] = []
    deltas: list[float] = []
    differences: list[float] = []
    tile_means: list[float] = []
    opened = handlers[0].open(path, card, mpp=mpp, min_tissue=min_tissue, batch=max(1, batch), **(open_options or {}))
    with opened as tiled:
        coords, side, thumbnail, downsample = tiled.coords, tiled.side, tiled.thumbnail, tiled.downsample
        height, width = thumbnail.shape[:2]
        total, count = np.zeros((height, width)), np.zeros((height, width))
        start = 0
        with progress_bar(progress, len(coords), f"explaining {path.name}") as advance:
            for tiles in tiled.batches:
                images = torch.from_numpy(tiles).float()
                chosen = None if fixed is None else [fixed] * len(images)
                result = attribute_batch(deployable, images, method, chosen, **options)
                maps = _tile_maps(result["maps"], method).double()
                tile_means += maps.mean((1, 2)).tolist()
                boxes = footprints(coords[start : start + len(maps)], side, downsample, (height, width))
                for heat, (x0, y0, x1, y1) in zip(maps, boxes, strict=True):
                    if x1 <= x0 or y1 <= y0:
                        continue
                    box = torch.nn.functional.adaptive_avg_pool2d(heat[None, None], (int(y1 - y0), int(x1 - x0)))[0, 0]
                    total[y0:y1, x0:x1] += box.numpy()
                    count[y0:y1, x0:x1] += 1
                targets += result["targets"]
                scores += result["scores"].tolist()
                if result["deltas"] is not None:
                    deltas += result["deltas"].tolist()
                    differences += (result["scores"] - result["baseline_scores"]).tolist()
                start += len(images)
                advance(len(images))
    if tile_outputs is not None:
        values = {"attribution": np.asarray(tile_means), "score": np.asarray(scores)}
        summary_tiles = tile_writer(card)(tiled, card, np.asarray(targets), values, tile_outputs)
    heat = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    counts = Counter(card.class_names[t] for t in targets)
    what = describe(card, card.class_names[fixed]) if fixed is not None else "each tile's predicted-class logit"
    lines = [
        f"{path.name}: {method}, {len(coords)} tissue tiles at {tiled.scale} ({tile_px} px)",
        f"explained: {what}; mean f(x) over tiles = {np.mean(scores):.4g}",
    ]
    summary: dict[str, Any] = {
        "slide": str(path),
        "method": method,
        "mpp": tiled.resolution,
        "tile_px": tile_px,
        "tiles": len(coords),
        "target": card.class_names[fixed] if fixed is not None else "predicted class per tile",
        "predicted_classes" if fixed is None else "target_tiles": dict(counts),
        "mean_score": float(np.mean(scores)),
        "thumbnail": [height, width],
        "painted_fraction": float((count > 0).mean()),
        "thumbnail_downsample": float(downsample),
        "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, type(None)))},
    }
    if deltas:
        relative = np.abs(deltas) / np.maximum(np.abs(differences), 1e-12)
        summary.update(max_abs_delta=float(np.max(np.abs(deltas))), median_relative_delta=float(np.median(relative)))
        lines.append(
            f"completeness per tile: max |error| {summary['max_abs_delta']:.2e}, median relative "
            f"{summary['median_relative_delta']:.2g} ({options['n_steps']} steps)"
        )
    label = colourbar_label(method)
    label = "rollout / uniform" if method == "attention_rollout" else f"{label}, mean per tile pixel"
    write_figure(
        thumbnail.astype(np.float64) / 255.0,
        heat,
        method in SIGNED,
        "\n".join(lines),
        Path(out),
        label,
        f"thumbnail ({tiled.thumbnail_scale})",
        "tile attributions over the thumbnail",
    )
    summary["out"] = str(out)
    if tile_outputs is not None:
        summary["tile_outputs"] = summary_tiles
    return summary


def tile_writer(card: ModelCard) -> Callable[..., dict[str, Any]]:
    """The registered domain's ``write_tiles`` for ``card``'s large inputs (refused by name when it has none)."""
    for large in _large_inputs():
        if card.kind in large.kinds and hasattr(large, "write_tiles"):
            return large.write_tiles
    raise ExplainError(f"{card.kind}: no registered domain writes per-tile explanations (--tiles)")


def owns_tile_output(card: ModelCard, path: Path) -> bool:
    """Whether ``path`` is a per-tile explanation file domainfm wrote (the registered domain says)."""
    return any(
        card.kind in large.kinds and hasattr(large, "owns") and large.owns(Path(path)) for large in _large_inputs()
    )


@contextmanager
def progress_bar(show: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over tiles (disabled when ``show`` is false); yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
