"""Explanations of a whole slide: a tile classifier's attributions painted over the slide thumbnail.

The slide is tiled the way ``domainfm pathology tile`` tiles it (same grid, tissue detector and region
reader: :mod:`domainfm.domains.pathology.tiling`) at the classifier's resolution: the first mpp the
checkpoint records (``card.details["mpps"]``, the mpps of its training store) unless one is given. Each
tissue tile is attributed (in batches, under a progress bar), reduced to a tile map (channel sum for
IG/SHAP, channel mean for occlusion; rollout maps times the tile's pixel count, so 1 means uniform), and
area-averaged onto the tile's footprint on the thumbnail (overlapping footprints are averaged). Only
the thumbnail-sized sum and count are kept, so memory does not grow with the slide. Background (no
tissue tile) is left uncoloured. Integrated gradients use 16 steps per tile by default here (50 for a
single image): slides have thousands of tiles, and the per-tile completeness error is reported.

The explained target is the class given, or by default **each tile's predicted class** (so the map shows
what drove every tile's own call); the summary counts the predicted classes.

``shared`` does not import domains: the pathology tiler is named by a string and imported only when a
slide is explained, like :data:`domainfm.shared.deploy.registry.CHECKPOINT_KEYS`.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable, ModelCard
from domainfm.shared.explain.attribution import SIGNED, attribute_batch, method_options
from domainfm.shared.explain.overlay import colourbar_label, write_figure
from domainfm.shared.explain.targets import ExplainError, describe, resolve_target

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# card kind -> the domain modules that tile its slides (imported on use)
SLIDE_TILERS = {"pathology.tile_classifier": ("domainfm.domains.pathology.tiling", "domainfm.domains.pathology.tissue")}
SLIDE_DEFAULTS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 128},
    "gradient_shap": {"n_samples": 8},
}


def is_slide(path: Path, card: ModelCard) -> bool:
    """Whether ``path`` is explained as a whole slide (refused for models that do not classify slide tiles).

    ``.tif``/``.tiff`` count as slides only for a slide tile classifier and only when OpenSlide recognises
    them (a tiled, pyramidal TIFF); otherwise they are pictures.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SLIDE_SUFFIXES:
        return False
    if card.kind not in SLIDE_TILERS:
        if suffix in TIFF_SUFFIXES:
            return False
        raise ExplainError(
            f"{path} is a whole-slide image; slides are explained with a pathology tile classifier "
            f"(`domainfm pathology train`), not {card.kind}"
        )
    if suffix in TIFF_SUFFIXES:
        try:
            import openslide

            return openslide.OpenSlide.detect_format(str(path)) not in (None, "generic-tiff") or _pyramidal(path)
        except Exception:  # no OpenSlide, or a file it cannot probe: a picture
            return False
    return True


def _pyramidal(path: Path) -> bool:
    """A generic tiled TIFF counts as a slide when it has pyramid levels (a tiled picture has one)."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return slide.level_count > 1


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
    **options: Any,
) -> dict[str, Any]:
    """Attributes every tissue tile of a slide and writes the overlay on the thumbnail.

    Args:
        deployable: A pathology tile classifier (``load_deployable``), on any device.
        path: The slide (any OpenSlide format).
        out: Destination PNG.
        method: An attribution method (:data:`~.attribution.METHODS`).
        target: A class name or index for every tile; ``None``: each tile's predicted class.
        mpp: Microns per pixel to tile at; default the checkpoint's first training mpp.
        batch: Tiles attributed together.
        min_tissue: Keep tiles with at least this tissue fraction (as ``pathology tile``).
        progress: Show a progress bar.
        **options: Method options (see :func:`~.attribution.attribute`); slide defaults in :data:`SLIDE_DEFAULTS`.

    Returns:
        A summary: slide, mpp, tiles, predicted-class counts, mean explained score, IG completeness errors,
        thumbnail size and the PNG path.
    """
    card = deployable.card
    if card.kind not in SLIDE_TILERS:
        raise ExplainError(f"slides are explained with a pathology tile classifier, not {card.kind}")
    options = method_options(method, {**SLIDE_DEFAULTS.get(method, {}), **options})
    tiling, tissue = (importlib.import_module(name) for name in SLIDE_TILERS[card.kind])
    mpps = card.details.get("mpps") or card.build.get("mpps") or []
    mpp = float(mpp if mpp is not None else (mpps[0] if mpps else 0) or 0)
    if mpp <= 0:
        raise ExplainError(f"{card.details.get('source')}: the checkpoint records no training mpp; pass mpp=")
    fixed = None if target is None else resolve_target(card, target)
    tile_px = int(card.spatial_shape[0])
    params = tiling.TilingParams(
        mpps=(mpp,), tile_px=tile_px, tissue=tissue.TissueParams(min_tissue=min_tissue), batch=max(1, batch)
    )
    path = Path(path)
    slide = tiling.open_slide(path)
    try:
        plan = tiling.plan_slide(slide, path, params)
    finally:
        slide.close()
    coords, _, side = plan.grids[mpp]
    if not len(coords):
        raise ExplainError(f"{path}: no tile at {mpp:g} mpp has {min_tissue:.0%} tissue (lower min_tissue?)")
    thumbnail, downsample = plan.thumbnail, plan.thumb_downsample
    height, width = thumbnail.shape[:2]
    total, count = np.zeros((height, width)), np.zeros((height, width))
    targets: list[int] = []
    scores: list[float] = []
    deltas: list[float] = []
    differences: list[float] = []
    reader = tiling.RegionReader(path, params.threads)
    start = 0
    try:
        with progress_bar(progress, len(coords), f"explaining {path.name}") as advance:
            for tiles in tiling.read_tiles(reader, plan.info, coords, mpp, side, params):
                images = torch.from_numpy(tiles).float()
                chosen = None if fixed is None else [fixed] * len(images)
                result = attribute_batch(deployable, images, method, chosen, **options)
                maps = _tile_maps(result["maps"], method).double()
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
    finally:
        reader.close()
    heat = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    counts = Counter(card.class_names[t] for t in targets)
    what = describe(card, card.class_names[fixed]) if fixed is not None else "each tile's predicted-class logit"
    lines = [
        f"{path.name}: {method}, {len(coords)} tissue tiles at {mpp:g} mpp ({tile_px} px)",
        f"explained: {what}; mean f(x) over tiles = {np.mean(scores):.4g}",
    ]
    summary: dict[str, Any] = {
        "slide": str(path),
        "method": method,
        "mpp": mpp,
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
        f"thumbnail ({downsample * plan.info.mpp:.3g} mpp)",
        "tile attributions over the thumbnail",
    )
    summary["out"] = str(out)
    return summary


@contextmanager
def progress_bar(show: bool, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over tiles (disabled when ``show`` is false); yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
