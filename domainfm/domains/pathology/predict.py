"""``domainfm pathology predict``: a tile classifier over whole slides, in the formats QuPath and viewers open.

Each slide is cut the way ``domainfm pathology tile`` cuts it, at the classifier's training mpp (the first
its checkpoint records, unless ``--mpp``): the same grid, tissue detector and region reader
(:func:`.slide_inputs.slide_tiles`, which ``explain`` uses too). Tissue tiles are read a bounded number of
batches ahead and predicted batch by batch through the deployed contract (:mod:`.deploy`: the tile as the
store holds it, standardised, encoder, head, softmax), so memory does not grow with the slide: what is kept
is the thumbnail the tiler makes anyway and one value per grid cell. For a slide ``NAME.svs`` the outputs
(:mod:`.predict_maps` describes each format exactly) are

* ``geojson/NAME.geojson``: one QuPath tile object per tissue tile, its square in level-0 pixels, classified
  as its most probable class, with ``P(CLASS)`` measurements (QuPath: *File > Import objects*);
* ``maps/NAME.tif``: a pyramidal OME-TIFF probability map, one pixel per tile, ``P(CLASS)`` x 255 per
  channel and a class channel, its pixel size the tile's, so it lies on the slide when scaled by the tile's
  level-0 side;
* ``overlays/NAME.png``: the predictions over the slide's thumbnail;
* a row of ``predictions.csv``: tiles, tiles per predicted class, mean probability per class, the tile and
  scan mpp.
* with ``explain``: ``explanations/NAME.png``, the ``domainfm explain`` slide overlay (integrated gradients
  of each tile's predicted class, 16 steps per tile; docs/explain.md), and the same per-tile attributions in
  the formats above, ``explanations/NAME.geojson`` and ``explanations/NAME.tif`` (``explain --tiles``);
  pictures: ``explanations/NAME.png``, the picture ``explain`` writes.

A slide without a tissue tile gets an empty FeatureCollection, an all-zero map, its overlay and a row
with 0 tiles. Plain pictures (``.png``/``.jpg``, and ``.tif`` that are not pyramidal slides) are one tile each (a row
with the class probabilities; no GeoJSON or map); they must be the model's tile size at its mpp.

Slides without a recorded mpp are refused by name unless ``--assume_mpp``; an unreadable slide is reported
on one line and the others still run; a rerun finishes only the slides not done (docs/predict.md).
An ABMIL slide classifier (``pathology mil`` saves ``slide_classifier.safetensors``) is walked the same
way and written in the same formats, with the slide's class and probabilities, its most attended tiles,
and attention per tile (:mod:`.predict_mil`); it takes whole slides only.

An instance segmenter (HoVer-Net-style, :mod:`.instances`) takes pictures of any size (fields, tiles) at
its training mpp (``--mpp``: the pictures' own, resampled when it differs) and writes per picture
``instances/NAME.tif`` (uint32 instance ids), ``geojson/NAME.geojson`` (one polygon per object in the
picture's own pixels, ``classification`` and a ``score`` measurement; QuPath imports it) and
``overlays/NAME.png`` (contours in class colours); its row counts the objects per class. On whole slides
it runs over overlapping tissue tiles and writes one GeoJSON of level-0 polygons per slide, objects merged
across tile edges (:mod:`.instance_wsi`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from domainfm.shared.config import Fraction, NonNegativeInt, PositiveFloat, PositiveInt
from domainfm.shared.deploy.card import Deployable, predict_array
from domainfm.shared.engine.memory import release_heap
from domainfm.shared.predict import InputFile, Outputs

if TYPE_CHECKING:
    from domainfm.domains.pathology.predict_maps import TileGrid
    from domainfm.domains.pathology.slide_inputs import SlideTiles

PICTURES = (".png", ".jpg", ".jpeg", ".bmp")
KINDS = ("pathology.tile_classifier", "pathology.instances", "pathology.slide_classifier")
INSTANCES = "pathology.instances"
SLIDE_CLASSIFIER = "pathology.slide_classifier"


def _suffixes() -> tuple[str, ...]:
    from domainfm.domains.pathology.slide_inputs import SLIDE_SUFFIXES

    return tuple(dict.fromkeys(SLIDE_SUFFIXES + PICTURES))


def _class_columns(names: list[str], counts: np.ndarray, means: np.ndarray | None) -> dict[str, Any]:
    """``tiles_CLASS`` and ``mean_P(CLASS)`` columns (means empty when no tile was predicted)."""
    row: dict[str, Any] = {}
    for name, count in zip(names, counts, strict=True):
        row[f"tiles_{name}"] = int(count)
    for k, name in enumerate(names):
        row[f"mean_P({name})"] = None if means is None else round(float(means[k]), 6)
    return row


def predict_tiles(deployable: Deployable, tiles: np.ndarray, device: torch.device) -> np.ndarray:
    """Class probabilities ``[n, classes]`` (float32) of raw uint8 tiles ``[n, 3, t, t]``."""
    return predict_array(deployable, tiles, device)


@dataclass
class SlideWalk:
    """One slide cut into a slide model's tiles and walked batch by batch: the one walk of every slide model.

    Attributes:
        item: The input.
        tiles: The tiler's cut (:func:`.slide_inputs.slide_tiles`): plan, coords, bounded batches.
        grid: The slide's tile grid, ``channels`` values per cell.
        members: The ``domainfm`` foreign member of the slide's GeoJSON.
        progress: Show a progress bar while walking.
    """

    item: InputFile
    tiles: SlideTiles
    grid: TileGrid
    members: dict[str, Any]
    progress: bool

    @property
    def coords(self) -> np.ndarray:
        """Level-0 top-left corners ``[N, 2]`` of the tissue tiles, in walk order."""
        return self.tiles.coords

    @property
    def tile_um(self) -> float:
        """A tile's side in microns (the map's pixel size)."""
        return self.tiles.params.tile_px * self.tiles.mpp

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(corners [n, 2], raw uint8 tiles [n, 3, t, t])`` in walk order; refuses a walk that ends short."""
        from tqdm.auto import tqdm

        from domainfm.domains.pathology.slides import SlideError

        start, coords = 0, self.coords
        bar = tqdm(total=len(coords), desc=self.item.key, unit="tile", leave=False, disable=not self.progress)
        with contextlib.closing(bar):
            for raw in self.tiles.batches:
                yield coords[start : start + len(raw)], raw
                start += len(raw)
                bar.update(len(raw))
                del raw
                release_heap()
        if start != len(coords):
            raise SlideError(f"{self.item.path}: read {start} of {len(coords)} tiles")

    def title(self) -> str:
        """The overlay's title: tiles, their mpp and size, the scan's mpp and where it came from."""
        info, tiles = self.tiles.plan.info, self.tiles
        return (f"{self.item.key}: {len(self.coords)} tissue tiles at {tiles.mpp:g} mpp ({tiles.params.tile_px} px), "
                f"scan {info.mpp:g} mpp ({info.mpp_source})")  # fmt: skip

    def row(self, levels: int) -> dict[str, Any]:
        """The slide's CSV columns every slide model shares (after its own)."""
        info = self.tiles.plan.info
        return {
            "mpp": self.tiles.mpp,
            "slide_mpp": info.mpp,
            "mpp_source": info.mpp_source,
            "width": info.width,
            "height": info.height,
            "grid": list(self.grid.shape),
            "map_levels": levels,
            "geojson": f"geojson/{self.item.stem}.geojson",
            "map": f"maps/{self.item.stem}.tif",
        }


@contextlib.contextmanager
def slide_walk(
    deployable: Deployable,
    item: InputFile,
    channels: int,
    *,
    mpp: float | None,
    assume_mpp: float | None,
    min_tissue: float,
    batch: int,
    progress: bool,
) -> Iterator[SlideWalk]:
    """The slide cut as ``pathology tile`` cuts it at the model's mpp, with an empty grid of ``channels`` values."""
    from domainfm.domains.pathology.predict_maps import TileGrid
    from domainfm.domains.pathology.slide_inputs import slide_tiles
    from domainfm.domains.pathology.slides import SlideError

    with slide_tiles(item.path, deployable.card, mpp=mpp, min_tissue=min_tissue, batch=batch, assume_mpp=assume_mpp,
                     require_tissue=False) as tiles:  # fmt: skip
        info = tiles.plan.info
        grid = TileGrid.for_slide(info.width, info.height, tiles.side, channels)
        if 0 in grid.shape:
            raise SlideError(
                f"{item.path}: the slide ({info.width}x{info.height} px at {info.mpp:g} mpp) is smaller than one "
                f"tile ({tiles.side:.0f} px at {tiles.mpp:g} mpp); predict it as a picture or at a finer --mpp"
            )
        members = {"domainfm": {"slide": item.key, "tile_px": tiles.params.tile_px, "mpp": tiles.mpp,
                                "slide_mpp": info.mpp, "tile_side_level0": tiles.side,
                                "coordinates": "level-0 pixels, origin top-left"}}  # fmt: skip
        yield SlideWalk(item, tiles, grid, members, progress)


def predict_slide(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    *,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    min_tissue: float = 0.5,
    batch: int = 64,
    overlay_class: int | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    explain: bool = False,
) -> dict[str, Any]:
    """Predicts every tissue tile of one slide and writes its GeoJSON, map and overlay (module docstring)."""
    from domainfm.domains.pathology.predict_maps import GeoJSONTiles, write_overlay, write_probability_map

    names = list(deployable.card.class_names)
    device = device or torch.device("cpu")
    with slide_walk(deployable, item, len(names), mpp=mpp, assume_mpp=assume_mpp, min_tissue=min_tissue,
                    batch=batch, progress=progress) as walk:  # fmt: skip
        grid, coords, tiles = walk.grid, walk.coords, walk.tiles
        sums = np.zeros(len(names))
        with open(outputs.path("geojson", ".geojson"), "w", encoding="utf-8") as handle:
            features = GeoJSONTiles(handle, names, tiles.side, walk.members)
            for where, raw in walk.batches():
                probabilities = predict_tiles(deployable, raw, device)
                grid.add(where, probabilities)
                features.write(where, probabilities)
                sums += probabilities.sum(0, dtype=np.float64)
            features.close()
        levels = write_probability_map(outputs.path("maps", ".tif"), grid, names, walk.tile_um)
        counts = np.bincount(grid.classes()[grid.predicted] - 1, minlength=len(names))
        write_overlay(outputs.path("overlays", ".png"), grid, tiles.plan.thumbnail, tiles.plan.thumb_downsample,
                      names, walk.title(), overlay_class)  # fmt: skip
        shared = walk.row(levels)
    predicted = names[int(counts.argmax())] if len(coords) else ""
    if explain and len(coords):
        from domainfm.shared.explain.slides import explain_slide

        tile_outputs = (outputs.path("explanations", ".geojson"), outputs.path("explanations", ".tif"))
        explain_slide(deployable, item.path, outputs.path("explanations", ".png"), mpp=mpp, batch=min(batch, 8),
                      min_tissue=min_tissue, progress=progress, tile_outputs=tile_outputs,
                      open_options={"assume_mpp": assume_mpp})  # fmt: skip
    return {
        "type": "slide",
        "tiles": len(coords),
        "predicted": predicted,
        **_class_columns(names, counts, sums / len(coords) if len(coords) else None),
        **shared,
    }


def predict_picture(
    deployable: Deployable,
    item: InputFile,
    device: torch.device | None = None,
    outputs: Outputs | None = None,
    explain: bool = False,
) -> dict[str, Any]:
    """One picture as one tile: its class probabilities (a row; no GeoJSON or map; an explanation if asked)."""
    from domainfm.shared.deploy import read_input

    names = list(deployable.card.class_names)
    image = read_input(item.path, deployable.card)
    device = device or torch.device("cpu")
    probabilities = predict_tiles(deployable, image.numpy(), device)[0]
    if explain and outputs is not None:
        from domainfm.shared.predict.explanations import explain_overlay

        title = f"{item.path.name} ({deployable.card.kind})"
        explain_overlay(deployable, image, title, outputs.path("explanations", ".png"), device)
    counts = np.eye(len(names), dtype=np.int64)[int(probabilities.argmax())]
    height, width = image.shape[-2:]
    return {"type": "picture", "tiles": 1, "predicted": names[int(probabilities.argmax())],
            **_class_columns(names, counts, probabilities), "width": int(width), "height": int(height)}  # fmt: skip


def predict_instances(
    deployable: Deployable, item: InputFile, outputs: Outputs, mpp: float | None, min_size: int, device: torch.device
) -> dict[str, Any]:
    """One picture's nuclei/glands: instance map, QuPath GeoJSON and contour picture (see the module docstring)."""
    import tifffile

    from domainfm.domains.pathology.instance_geojson import object_features, write_feature_collection
    from domainfm.domains.pathology.instance_train import segment_picture, write_instance_qc

    meta = deployable.card.build
    names = list(meta["class_names"])
    image, ids, classes, scores, downsample = segment_picture(
        deployable.network, meta, item.path, mpp, min_size, device
    )
    tifffile.imwrite(outputs.path("instances", ".tif"), ids.astype(np.uint32), compression="zlib")
    features = object_features(ids, classes, scores, names, (0.0, 0.0), downsample)
    write_feature_collection(outputs.path("geojson", ".geojson"), features)
    write_instance_qc(outputs.path("overlays", ".png"), image, ids, classes)
    present = np.asarray(classes[1:])
    counts = np.bincount(present[present >= 0], minlength=len(names))
    height, width = image.shape[:2]
    return {"type": "instances", "objects": int(ids.max()),
            **{f"objects_{name}": int(n) for name, n in zip(names, counts, strict=True)},
            "width": int(width), "height": int(height), "downsample": downsample}  # fmt: skip


def predict(
    checkpoint: Path,
    input: list[Path],
    out: Path,
    mpp: PositiveFloat | None = None,
    assume_mpp: PositiveFloat | None = None,
    min_tissue: Fraction = 0.5,
    min_size: PositiveInt = 6,
    overlap: NonNegativeInt | None = None,
    batch: PositiveInt = 64,
    overlay_class: str | None = None,
    explain: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    json: bool = False,
) -> int:
    """Classify whole slides tile by tile or as a whole (ABMIL), in QuPath GeoJSON, TIFF map, overlay; or find nuclei.

    Writes OUT/geojson/NAME.geojson (tile squares in level-0 pixels with class and P(CLASS) measurements),
    OUT/maps/NAME.tif (pyramidal OME-TIFF, one pixel per tile), OUT/overlays/NAME.png and a row per slide in
    OUT/predictions.csv; pictures (.png/.jpg) are one tile each (a row only). Resumable: a rerun predicts only
    the slides not finished (docs/predict/pathology.md).

    Args:
        checkpoint: A tile classifier written by ``domainfm pathology train``, an ABMIL slide classifier
            written by ``domainfm pathology mil`` (slides only: the slide's class, P(CLASS) and most attended
            tiles in its row; attention per tile in OUT/geojson and OUT/maps), or a nuclei/gland instance
            segmenter written by ``domainfm pathology instances-train`` (per picture OUT/instances,
            OUT/geojson and OUT/overlays; per slide OUT/geojson of level-0 polygons and OUT/overlays).
        input: Slides (any OpenSlide format), pictures of single tiles, or folders holding them (searched
            recursively; outputs keep the relative names).
        out: The folder to write (new, empty, or an earlier ``predict`` output to resume).
        mpp: Microns per pixel to tile at; default the classifier's training mpp (the first it records). For an
            instance segmenter: the pictures' microns per pixel (resampled to the segmenter's when they differ);
            slides are tiled at the segmenter's mpp.
        assume_mpp: The slides' level-0 microns per pixel where a file records none (never guessed).
        min_tissue: Predict tiles with at least this tissue fraction (as ``pathology tile`` keeps them).
        min_size: Instance segmenters: the smallest object kept (pixels at the segmenter's mpp).
        overlap: Instance segmenters on whole slides: pixels shared by neighbouring regions of 4 x 4 tiles
            (default an eighth of the region); at least the largest object's diameter, so each object is
            whole in the region that keeps it.
        batch: Tiles read and predicted together.
        overlay_class: Draw this class's probability as a heat map on the overlays (default: every tile in
            its predicted class's colour).
        explain: Also write the ``domainfm explain`` overlay of each slide (integrated gradients of each tile's
            predicted class) with its per-tile GeoJSON and map, or of each picture, under OUT/explanations (slow).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overwrite: Predict every input again (also needed to reuse OUT with another model or options).
        json: Print the summary as JSON instead of a table.
    """
    import json as json_module

    from domainfm.domains.pathology.slide_inputs import SLIDES
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.explain.targets import ExplainError, resolve_target
    from domainfm.shared.predict import PredictError, load_for_domain, run_predictions

    torch_device = resolve_device(device)
    deployable = load_for_domain(checkpoint, "pathology", KINDS)
    deployable.network.to(torch_device)
    try:
        heat = None if overlay_class is None else resolve_target(deployable.card, overlay_class)
    except ExplainError as error:
        raise PredictError(f"--overlay_class: {error}") from error
    if deployable.card.kind == SLIDE_CLASSIFIER and (explain or overlay_class is not None):
        raise PredictError(
            f"{checkpoint}: an ABMIL slide classifier's overlay is its attention heat-map; --explain and "
            "--overlay_class apply to tile classifiers"
        )

    def predict_one(deployable: Deployable, item: InputFile, outputs: Outputs) -> dict[str, Any]:
        if deployable.card.kind == INSTANCES:
            from domainfm.domains.pathology.instance_wsi import INSTANCE_SLIDES, predict_instance_slide

            if INSTANCE_SLIDES.claims(item.path, deployable.card):
                return predict_instance_slide(deployable, item, outputs, assume_mpp=assume_mpp, min_tissue=min_tissue,
                                              min_size=min_size, batch=batch, overlap=overlap, device=torch_device,
                                              progress=not json)  # fmt: skip
            return predict_instances(deployable, item, outputs, mpp, min_size, torch_device)
        if deployable.card.kind == SLIDE_CLASSIFIER:
            from domainfm.domains.pathology import predict_mil
            from domainfm.domains.pathology.slide_inputs import SlideInputs

            if not SlideInputs((SLIDE_CLASSIFIER,)).claims(item.path, deployable.card):
                raise PredictError(
                    f"{item.path} is not a whole slide; an ABMIL slide classifier predicts whole slides (its bag is "
                    "the slide's tissue tiles)"
                )
            return predict_mil.predict_mil_slide(deployable, item, outputs, mpp=mpp, assume_mpp=assume_mpp,
                                                 min_tissue=min_tissue, batch=batch, device=torch_device,
                                                 progress=not json)  # fmt: skip
        if SLIDES.claims(item.path, deployable.card):
            return predict_slide(deployable, item, outputs, mpp=mpp, assume_mpp=assume_mpp, min_tissue=min_tissue,
                                 batch=batch, overlay_class=heat, device=torch_device, progress=not json,
                                 explain=explain)  # fmt: skip
        return predict_picture(deployable, item, torch_device, outputs, explain)

    options = {"mpp": mpp, "assume_mpp": assume_mpp, "min_tissue": min_tissue, "overlay_class": overlay_class,
               "explain": explain, "min_size": min_size, "overlap": overlap}  # fmt: skip
    run = run_predictions(
        deployable, input, out, predict_one, suffixes=_suffixes(), what="slides or pictures", options=options,
        overwrite=overwrite, progress=not json, title=f"pathology predict ({deployable.card.kind})",
    )  # fmt: skip
    if json:
        print(json_module.dumps(run.to_dict(), indent=2))
    return 2 if run.failed else 0
