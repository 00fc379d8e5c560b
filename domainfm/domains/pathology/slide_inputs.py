"""Whole-slide images as large inputs for explanations (:class:`~domainfm.shared.explain.slides.LargeInputs`).

A slide is cut the way ``domainfm pathology tile`` cuts it (:mod:`.tiling`: the same grid, tissue detector
and region reader) at the classifier's resolution: the first mpp its checkpoint records (the mpps of its
training store) unless one is given. Registered for the pathology tile classifier by :mod:`.plugin`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from domainfm.shared.deploy.card import ModelCard
from domainfm.shared.explain.slides import TiledInput
from domainfm.shared.explain.targets import ExplainError

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
        self, path: Path, card: ModelCard, *, mpp: float | None, min_tissue: float, batch: int
    ) -> Iterator[TiledInput]:
        """The slide's tissue tiles at ``mpp`` (default: the checkpoint's first training mpp)."""
        from domainfm.domains.pathology import tiling, tissue

        mpps = card.details.get("mpps") or card.build.get("mpps") or []
        mpp = float(mpp if mpp is not None else (mpps[0] if mpps else 0) or 0)
        if mpp <= 0:
            raise ExplainError(f"{card.details.get('source')}: the checkpoint records no training mpp; pass mpp=")
        params = tiling.TilingParams(
            mpps=(mpp,),
            tile_px=int(card.build.get("tile_px") or card.spatial_shape[0]),  # the store's tile (the model may resize)
            tissue=tissue.TissueParams(min_tissue=min_tissue),
            batch=batch,
            allow_upsample=True,  # explanations follow the model's mpp, as before (#19 refuses it only when tiling)
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
        reader = tiling.RegionReader(path, params.threads)
        try:
            yield TiledInput(
                coords=coords,
                side=side,
                thumbnail=plan.thumbnail,
                downsample=plan.thumb_downsample,
                batches=tiling.read_tiles(reader, plan.info, coords, mpp, side, params),
                scale=f"{mpp:g} mpp",
                thumbnail_scale=f"{plan.thumb_downsample * plan.info.mpp:.3g} mpp",
                resolution=mpp,
            )
        finally:
            reader.close()


SLIDES = SlideInputs()
