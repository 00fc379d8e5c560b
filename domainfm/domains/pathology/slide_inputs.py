"""Whole-slide images cut into a tile classifier's tiles, for explanations and predictions.

A slide is cut the way ``domainfm pathology tile`` cuts it (:mod:`.tiling`: the same grid, tissue detector
and region reader) at the classifier's resolution: the first mpp its checkpoint records (the mpps of its
training store) unless one is given. :func:`slide_tiles` is that walk (tiles read a bounded number of
batches ahead, so memory does not grow with the slide); ``pathology predict`` uses it directly, and
:data:`SLIDES` (a :class:`~domainfm.shared.explain.slides.LargeInputs`, registered for the pathology tile
classifier by :mod:`.plugin`) hands it to ``explain``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from domainfm.shared.deploy.card import ModelCard
from domainfm.shared.explain.slides import TiledInput
from domainfm.shared.explain.targets import ExplainError
from domainfm.shared.outputs import partial_path

if TYPE_CHECKING:  # the tiler is imported when a slide is cut, not when a file is probed
    import numpy as np

    from domainfm.domains.pathology.tiling import SlidePlan, TilingParams

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


def _pyramidal(path: Path) -> bool:
    """A generic tiled TIFF counts as a slide when it has pyramid levels (a tiled picture has one)."""
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        return slide.level_count > 1


@dataclass(frozen=True)
class SlideInputs:
    """Slides for the pathology tile classifier."""

    kinds: tuple[str, ...] = ("pathology.tile_classifier",)

    def claims(self, path: Path, card: ModelCard) -> bool:
        """Whether ``path`` is a slide for ``card``.

        ``.tif``/``.tiff`` count as slides only for a slide tile classifier and only when OpenSlide
        recognises them (a tiled, pyramidal TIFF); otherwise they are pictures. Another slide format given
        to another model is refused by name.
        """
        suffix = Path(path).suffix.lower()
        if suffix not in SLIDE_SUFFIXES:
            return False
        if card.kind not in self.kinds:
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

    @contextmanager
    def open(
        self,
        path: Path,
        card: ModelCard,
        *,
        mpp: float | None,
        min_tissue: float,
        batch: int,
        assume_mpp: float | None = None,
    ) -> Iterator[TiledInput]:
        """The slide's tissue tiles at ``mpp`` (default: the checkpoint's first training mpp)."""
        with slide_tiles(path, card, mpp=mpp, min_tissue=min_tissue, batch=batch, assume_mpp=assume_mpp) as tiles:
            plan = tiles.plan
            yield TiledInput(
                coords=tiles.coords,
                side=tiles.side,
                thumbnail=plan.thumbnail,
                downsample=plan.thumb_downsample,
                batches=tiles.batches,
                scale=f"{tiles.mpp:g} mpp",
                thumbnail_scale=f"{plan.thumb_downsample * plan.info.mpp:.3g} mpp",
                resolution=tiles.mpp,
                size=(plan.info.width, plan.info.height),
            )

    def write_tiles(
        self, tiled: TiledInput, card: ModelCard, classes: np.ndarray, values: dict[str, np.ndarray], paths: tuple
    ) -> dict[str, Any]:
        """Per-tile values (``explain --tiles``) as QuPath GeoJSON and a pyramidal float32 OME-TIFF.

        ``paths`` are the ``.geojson`` and ``.tif`` to write; the formats are ``pathology predict``'s
        (:mod:`.predict_maps`): tiles classified by ``classes`` with one measurement per value, and a map of
        one pixel per tile with a channel per value and a last ``class`` channel (1 + the class, 0 no tile).
        """
        import numpy as np

        from domainfm.domains.pathology.predict_maps import GeoJSONTiles, TileGrid, write_map

        geojson, tiff = (Path(p) for p in paths)
        names = list(values)
        stacked = np.stack([np.asarray(values[n], np.float32) for n in names], axis=1)
        if tiled.size is None or len(stacked) != len(tiled.coords):
            raise ExplainError(f"{len(stacked)} tile values for {len(tiled.coords)} tiles")
        grid = TileGrid.for_slide(*tiled.size, tiled.side, len(names))
        grid.add(tiled.coords, stacked, classes)
        members = {"domainfm": {"tile_mpp": tiled.resolution, "tile_side_level0": tiled.side,
                                "coordinates": "level-0 pixels, origin top-left", "values": names}}  # fmt: skip
        tile_um = float(card.build.get("tile_px") or card.spatial_shape[0]) * tiled.resolution
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        staged = [partial_path(Path(p)) for p in paths]
        try:
            with open(staged[0], "w", encoding="utf-8") as handle:
                features = GeoJSONTiles(handle, card.class_names, tiled.side, members, names)
                features.write(tiled.coords, stacked, classes)
                features.close()
            channels = np.concatenate([grid.values, grid.classes()[None].astype(np.float32)])
            levels = write_map(staged[1], channels, [*names, "class"], tile_um)
            for tmp, final in zip(staged, (geojson, tiff), strict=True):
                os.replace(tmp, final)
        finally:
            for tmp in staged:
                tmp.unlink(missing_ok=True)
        return {"geojson": str(geojson), "map": str(tiff), "map_levels": levels}

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is a tile GeoJSON or map that domainfm wrote."""
        from domainfm.domains.pathology.predict_maps import is_domainfm_tiles

        return is_domainfm_tiles(Path(path))


SLIDES = SlideInputs()


@dataclass
class SlideTiles:
    """One slide cut into a classifier's tiles (:func:`slide_tiles`).

    Attributes:
        plan: The tiler's plan (slide geometry and mpp, thumbnail, tissue mask, kept tiles).
        params: The tiling parameters used.
        mpp: The tiles' microns per pixel.
        coords: Level-0 top-left corners ``[N, 2]`` (x, y) of the kept (tissue) tiles, row-major.
        side: Tile side in level-0 pixels (also the grid step unless ``params.overlap``).
        batches: Raw tiles ``[n, 3, tile_px, tile_px]`` uint8 in ``coords`` order, a bounded number in memory.
    """

    plan: SlidePlan
    params: TilingParams
    mpp: float
    coords: np.ndarray
    side: float
    batches: Iterator[np.ndarray]


def card_mpp(card: ModelCard, mpp: float | None = None) -> float:
    """``mpp``, else the first mpp the classifier's training store records (refused by name when none)."""
    mpps = card.details.get("mpps") or card.build.get("mpps") or []
    mpp = float(mpp if mpp is not None else (mpps[0] if mpps else 0) or 0)
    if mpp <= 0:
        raise ExplainError(f"{card.details.get('source')}: the checkpoint records no training mpp; pass mpp=")
    return mpp


@contextmanager
def slide_tiles(
    path: Path,
    card: ModelCard,
    *,
    mpp: float | None,
    min_tissue: float,
    batch: int,
    assume_mpp: float | None = None,
    require_tissue: bool = True,
    overlap: int = 0,
    tile_px: int | None = None,
) -> Iterator[SlideTiles]:
    """The slide's tissue tiles at ``mpp`` (default: the checkpoint's first training mpp), cut as ``tile`` cuts.

    The grid, tissue detector and region reader are the tiler's (:mod:`.tiling`); tiles are read by its
    thread pool at most two batches ahead, so memory does not grow with the slide. ``assume_mpp`` is the
    slide's mpp when the file records none; with ``require_tissue`` a slide without a tissue tile is refused.
    ``overlap`` is the tile pixels neighbours share (``tile --overlap``; the grid step is then
    :func:`.tiling.footprint`'s, smaller than ``side``); ``tile_px`` cuts tiles of another size than the
    model's (a dense model's window slides over them).
    A region OpenSlide cannot decode (a corrupt file) raises a :class:`~.slides.SlideError` naming the slide.
    """
    from domainfm.domains.pathology import tiling, tissue

    mpp = card_mpp(card, mpp)
    params = tiling.TilingParams(
        mpps=(mpp,),
        tile_px=tile_px or int(card.build.get("tile_px") or card.spatial_shape[0]),  # the store's (model may resize)
        overlap=overlap,
        assume_mpp=assume_mpp,
        tissue=tissue.TissueParams(min_tissue=min_tissue),
        batch=batch,
        allow_upsample=True,  # explanations follow the model's mpp, as before (#19 refuses it only when tiling)
    )
    import openslide

    from domainfm.domains.pathology.slides import SlideError

    def unreadable(error: Exception) -> SlideError:
        return SlideError(f"{path}: OpenSlide cannot decode part of the slide; the file may be corrupt ({error})")

    path = Path(path)
    slide = tiling.open_slide(path)
    try:
        plan = tiling.plan_slide(slide, path, params)
    except openslide.OpenSlideError as error:  # a region of the thumbnail
        raise unreadable(error) from error
    finally:
        slide.close()
    coords, _, side = plan.grids[mpp]
    if require_tissue and not len(coords):
        raise ExplainError(f"{path}: no tile at {mpp:g} mpp has {min_tissue:.0%} tissue (lower min_tissue?)")
    reader = tiling.RegionReader(path, params.threads)
    try:
        batches = tiling.read_tiles(reader, plan.info, coords, mpp, side, params)
        yield SlideTiles(plan, params, mpp, coords, side, batches)
    except openslide.OpenSlideError as error:  # a tile, read while the caller walks the batches
        raise unreadable(error) from error
    finally:
        reader.close()
