"""Whole-slide tiling into the tile store (``domainfm pathology tile``).

For each slide and each target resolution (microns per pixel): a square grid of ``tile_px`` tiles (with
``overlap`` target pixels shared between neighbours) in level-0 coordinates, filtered by the tissue mask
(:mod:`.tissue`), read from the coarsest pyramid level that is not coarser than the target and resized
to ``tile_px`` (PLUTO samples tiles at 0.25/0.5/1/2 mpp; ``shared/methods/pluto.md`` section 4).

The store holds 8-bit RGB tiles ``[3, tile_px, tile_px]`` with ``index/x, y`` = level-0 top-left,
``index/scale`` = the tile's mpp, ``index/split`` by slide (tiles of one slide never straddle splits:
from a ``slide,split`` CSV, or a stable hash of the slide's name),
a ``tissue`` companion (the tile's tissue fraction) and, with ``truth_labels``, ``index/label`` from a
phantom slide's ground truth. Each slide's resolved mpp and its provenance, level-0 size and pyramid go
into the store's sources table; a QC picture per slide goes to ``STORE/qc/<slide>.png``.

Plain images (patch sets) are one-level slides (:func:`.slides.open_image`); folder arguments expand in
:mod:`.inputs`; ``--labels`` annotations label the tiles (:mod:`.annotations`); an mpp finer than the scan's
is refused unless ``allow_upsample``.

Regions are read by a few threads per slide (OpenSlide releases the GIL while decoding; every thread has
its own handle and keeps to one vertical band of the slide, so its tile cache serves the next row), a
bounded number of tiles ahead of the writer, so memory does not grow with the slide. Slides run in
parallel through the shared ingest engine, which also makes the run resumable and records a corrupt slide
by name while the others are tiled.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.pathology.annotations import TileLabels
from domainfm.domains.pathology.slides import (
    IMAGE_VENDOR,
    SlideError,
    SlideInfo,
    best_level,
    bgra_to_rgb,
    open_slide,
    read_bgra,
    read_thumbnail,
    rgb_on_white,
    slide_info,
)
from domainfm.domains.pathology.tissue import TissueParams, tissue_fractions, tissue_mask, write_qc_png
from domainfm.shared.engine.memory import release_heap
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.ingest import QC_FOLDER, IngestSummary
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.splits import SplitTable, group_split

READER_NAME = "pathology.openslide"
READER_VERSION = "2"  # 2: all-tissue images keep their tissue (no Otsu split), plain images, labels
THUMBNAIL_MPP = 8.0
MAX_THUMBNAIL_SIDE = 8192
READ_BATCH_BYTES = 24 * 2**20


@dataclass(frozen=True)
class TilingParams:
    """How slides are cut into tiles (recorded in the store)."""

    mpps: tuple[float, ...] = (0.5,)
    tile_px: int = 224
    overlap: int = 0
    assume_mpp: float | None = None
    tissue: TissueParams = field(default_factory=TissueParams)
    threads: int = 2
    batch: int | None = None  # tiles per read batch; by default about READ_BATCH_BYTES of tiles, at most 128
    truth_labels: bool = False
    splits: SplitTable | Mapping[str, str] | None = None  # slide name or stem -> split; else a hash
    labels: TileLabels | None = None  # annotations (GeoJSON, masks, CSV, class folders): annotations.py
    allow_upsample: bool = False

    def __post_init__(self) -> None:
        if not self.mpps or any(m <= 0 for m in self.mpps):
            raise ValueError(f"target mpps must be positive, got {list(self.mpps)}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"batch must be at least 1 tile, got {self.batch}")
        if self.labels is not None and self.truth_labels:
            raise ValueError("give either annotations (--labels) or --truth_labels, not both")
        if self.tile_px < 8 or not 0 <= self.overlap < self.tile_px:
            raise ValueError(f"need tile_px >= 8 and 0 <= overlap < tile_px, got {self.tile_px} and {self.overlap}")


def grid_origins(width: int, height: int, side: float, step: float) -> np.ndarray:
    """Level-0 top-left corners ``[N, 2]`` (x, y) of the grid tiles that fit inside the slide, row-major."""
    xs = np.round(np.arange(0, max(0.0, width - side) + 1e-6, step)).astype(np.int64)
    ys = np.round(np.arange(0, max(0.0, height - side) + 1e-6, step)).astype(np.int64)
    if side > width or side > height:
        return np.zeros((0, 2), np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def footprint(info: SlideInfo, mpp: float, params: TilingParams) -> tuple[float, float]:
    """``(tile side, grid step)`` in level-0 pixels for tiles at ``mpp``."""
    ratio = mpp / info.mpp
    return params.tile_px * ratio, (params.tile_px - params.overlap) * ratio


def thumbnail_downsample(info: SlideInfo, params: TilingParams) -> float:
    """Thumbnail resolution: about 8 mpp, finer when tiles would span fewer than 16 thumbnail pixels."""
    smallest_tile = min(footprint(info, m, params)[0] for m in params.mpps)
    downsample = min(THUMBNAIL_MPP / info.mpp, smallest_tile / 16)
    downsample = max(downsample, max(info.width, info.height) / MAX_THUMBNAIL_SIDE)
    return max(1.0, downsample)


@dataclass
class SlidePlan:
    """Kept tiles of one slide: per mpp, level-0 coords, tissue fractions and the tile side."""

    info: SlideInfo
    grids: dict[float, tuple[np.ndarray, np.ndarray, float]]
    thumbnail: np.ndarray
    mask: np.ndarray
    thumb_downsample: float


def plan_slide(slide: Any, path: Path, params: TilingParams) -> SlidePlan:
    """Resolves the slide's mpp, detects tissue and keeps the grid tiles with enough of it."""
    info = slide_info(slide, path, params.assume_mpp)
    finer = [m for m in params.mpps if m < info.mpp * (1 - 1e-3)]
    if finer and not params.allow_upsample:
        raise SlideError(
            f"{path}: --mpp {', '.join(f'{m:g}' for m in finer)} is finer than the scan's {info.mpp:g} mpp "
            f"({info.mpp_source}), so tiles would be upsampled; ask for {info.mpp:g} mpp or coarser, or pass "
            "--allow_upsample"
        )
    thumbnail, downsample = read_thumbnail(slide, thumbnail_downsample(info, params))
    mask = tissue_mask(thumbnail, downsample * info.mpp, params.tissue)
    grids = {}
    for mpp in params.mpps:
        side, step = footprint(info, mpp, params)
        coords = grid_origins(info.width, info.height, side, step)
        fraction = tissue_fractions(mask, downsample, coords, side)
        keep = fraction >= params.tissue.min_tissue
        grids[mpp] = (coords[keep], fraction[keep], side)
    return SlidePlan(info, grids, thumbnail, mask, downsample)


class RegionReader:
    """Reads tiles of one slide with ``threads`` reading threads, each with its own OpenSlide handle.

    Regions are decoded by OpenSlide straight into numpy (:func:`.slides.read_bgra`); ``public_api`` reads
    through ``OpenSlide.read_region`` and its PIL image instead (the benchmark's previous read limit).
    Thread ``k`` always reads band ``k`` of the slide (:func:`read_tiles`), so the pyramid tiles its
    handle decoded for one row of tiles are still in that handle's cache for the next row.
    """

    def __init__(self, path: Path, threads: int, public_api: bool = False) -> None:
        self.path, self.local, self.public_api = path, threading.local(), public_api
        self.threads = max(1, threads)
        self.pools = [ThreadPoolExecutor(1, thread_name_prefix=f"slide-read-{k}") for k in range(self.threads)]
        self.pool = self.pools[0]
        self.handles: list[Any] = []
        self.lock = threading.Lock()

    def _slide(self) -> Any:
        handle = getattr(self.local, "slide", None)
        if handle is None:
            handle = self.local.slide = open_slide(self.path)
            with self.lock:
                self.handles.append(handle)
        return handle

    def read_into(
        self, out: np.ndarray, coords: np.ndarray, level: int, size: int, rows: np.ndarray | None = None
    ) -> None:
        """Reads the tiles at level-0 ``coords`` into ``out[rows]`` (``[n, 3, tile_px, tile_px]``; one copy per tile).

        ``rows`` (default: ``0, 1, ...``) are the rows of ``out`` the tiles go to.
        """
        from PIL import Image

        slide, tile_px = self._slide(), out.shape[-1]
        rows = np.arange(len(coords)) if rows is None else rows
        for row, (x, y) in zip(rows, coords, strict=True):
            if self.public_api:  # openslide-python's PIL path, as other tools read (the benchmark's read limit)
                rgb = rgb_on_white(slide.read_region((int(x), int(y)), level, (size, size)))
            else:
                rgb = bgra_to_rgb(read_bgra(slide, int(x), int(y), level, size, size))
            if size != tile_px:
                rgb = Image.fromarray(np.ascontiguousarray(rgb)).resize((tile_px, tile_px), Image.BILINEAR)
                rgb = np.asarray(rgb)
            out[row] = rgb.transpose(2, 0, 1)

    def close(self) -> None:
        """Stops the threads and closes every handle."""
        for pool in self.pools:
            pool.shutdown(wait=True)
        for handle in self.handles:
            handle.close()


def band_edges(coords: np.ndarray, bands: int) -> np.ndarray:
    """``bands - 1`` x coordinates that split ``coords`` into vertical bands of about equal tile counts."""
    if bands <= 1 or not len(coords):
        return np.zeros(0, np.int64)
    xs = np.unique(coords[:, 0])
    counts = np.searchsorted(np.sort(coords[:, 0]), xs, side="right")  # tiles with x <= each column
    targets = np.arange(1, bands) * len(coords) / bands
    return xs[np.minimum(np.searchsorted(counts, targets), len(xs) - 1)] + 1


def read_tiles(
    reader: RegionReader, info: SlideInfo, coords: np.ndarray, mpp: float, side: float, params: TilingParams
) -> Iterator[np.ndarray]:
    """Tiles of ``coords`` in order, in batches (:func:`read_batch`), at most two batches in flight.

    The slide is cut into one vertical band per thread (equal tile counts); each thread reads its band's
    tiles of every batch, straight into their rows of the batch array. Neighbouring tiles share the
    slide's pyramid tiles (a 224-px tile spans parts of four 256-px JPEG tiles), so a thread that reads the
    same columns row after row decodes each pyramid tile about once: measured on ``bench tiling``'s
    slide (two threads), 15-20 % less CPU than splitting each batch into two runs of consecutive tiles,
    where each thread re-decodes the pyramid row the other thread decoded for the row above.
    """
    level = best_level(info.level_downsamples, side / params.tile_px)
    size = max(1, round(side / info.level_downsamples[level]))
    batch = read_batch(params)
    edges = band_edges(coords, reader.threads)
    pending: deque[tuple[np.ndarray, list[Future]]] = deque()
    for start in range(0, len(coords), batch):
        chunk = coords[start : start + batch]
        out = np.empty((len(chunk), 3, params.tile_px, params.tile_px), np.uint8)
        band = np.searchsorted(edges, chunk[:, 0], side="right")
        futures = []
        for k, pool in enumerate(reader.pools):
            rows = np.flatnonzero(band == k)
            if len(rows):
                futures.append(pool.submit(reader.read_into, out, chunk[rows], level, size, rows))
        pending.append((out, futures))
        if len(pending) > 2:
            yield _finished(pending.popleft())
    while pending:
        yield _finished(pending.popleft())


def read_batch(params: TilingParams) -> int:
    """Tiles per read batch: ``params.batch``, or as many as fit in ``READ_BATCH_BYTES`` (8 to 128).

    Each batch becomes one staging file per array, so larger batches mean fewer files (128 tiles of 224 px
    rather than 32 saved about 4 % of tiling time); three batches are in memory at once, so their size is
    bounded in bytes, whatever the tile size.
    """
    if params.batch is not None:
        return params.batch
    return max(8, min(128, READ_BATCH_BYTES // (3 * params.tile_px**2)))


def _finished(item: tuple[np.ndarray, list[Future]]) -> np.ndarray:
    out, futures = item
    for future in futures:
        future.result()  # re-raises a read error here, in the consumer
    return out


def truth_labels(path: Path, coords: np.ndarray, side: float) -> np.ndarray:
    """Majority tissue class of each tile of a phantom slide (``FILE.truth.npz`` beside it).

    Kept tiles passed the tissue filter, so the label is the most frequent *tissue* class under the tile
    (background, class 0, is never a tile label).
    """
    from domainfm.domains.pathology.region_labels import TRUTH_SUFFIX, read_truth, truth_class_fractions

    truth_path = Path(str(path) + TRUTH_SUFFIX)
    if not truth_path.is_file():
        raise ValueError(f"{path}: no ground truth {truth_path.name} beside it (needed for --truth-labels)")
    truth = read_truth(truth_path)
    return np.array(
        [1 + int(np.argmax(truth_class_fractions(truth, x, y, side, side)[1:])) for x, y in coords], np.int32
    )


def slide_split(path: Path, splits: SplitTable | Mapping[str, str] | None) -> int:
    """The slide's split: from ``splits`` (by file name or stem) when given, else a stable hash of its name."""
    if splits is not None and not isinstance(splits, SplitTable):
        splits = SplitTable(Path("splits"), "slide", dict(splits))
    return group_split(path.name, splits, aliases=(path.stem,))


def read_slide_tiles(path: Path, params: TilingParams, qc_dir: Path | None = None) -> Iterator[TileBatch]:
    """Reader for the ingest engine: every kept tile of one slide, scale by scale."""
    path = Path(path)
    slide = open_slide(path)
    try:
        plan = plan_slide(slide, path, params)
    finally:
        slide.close()
    release_heap()  # the thumbnail's reading and the tissue mask freed mask-sized arrays: not under the tiles' peak
    meta = {**plan.info.to_meta(), "tiles_per_mpp": {str(m): len(g[0]) for m, g in plan.grids.items()}}
    meta["upsampled_mpps"] = [m for m in params.mpps if m < plan.info.mpp * (1 - 1e-3)]
    yield TileBatch(np.zeros((0, 3, params.tile_px, params.tile_px), np.uint8), source_meta=meta)
    split = slide_split(path, params.splits)
    # a plain image is its own picture: a QC drawing per patch of a patch set would cost more than its tiles
    draw_qc = qc_dir is not None and plan.info.vendor != IMAGE_VENDOR
    qc = _draw_qc_in_background(plan, path, qc_dir) if draw_qc else None
    reader = RegionReader(path, params.threads)
    try:
        for mpp, (coords, fraction, side) in plan.grids.items():
            labels = truth_labels(path, coords, side) if params.truth_labels else None
            if params.labels is not None:
                labels = params.labels.for_tiles(path, (plan.info.width, plan.info.height), coords, side)
            start = 0
            for tiles in read_tiles(reader, plan.info, coords, mpp, side, params):
                stop = start + len(tiles)
                index = {
                    "x": coords[start:stop, 0],
                    "y": coords[start:stop, 1],
                    "scale": np.full(len(tiles), mpp, np.float32),
                    "split": np.full(len(tiles), split, np.int8),
                }
                if labels is not None:
                    index["label"] = labels[start:stop]
                yield TileBatch(tiles, index=index, companions={"tissue": fraction[start:stop]})
                start = stop
    finally:
        reader.close()
        if qc is not None:
            qc.exception()  # waits for the picture, whatever happened to the tiles
    if qc is not None:
        qc.result()  # the slide is done only with its QC picture; a drawing error fails it by name


def _draw_qc_in_background(plan: SlidePlan, path: Path, qc_dir: Path) -> Future:
    """Draws the slide's QC picture on its own thread, while its tiles are read (Pillow releases the GIL)."""
    grids = {m: (coords, side) for m, (coords, _, side) in plan.grids.items()}
    title = f"{path.name}: {plan.info.mpp:g} mpp ({plan.info.mpp_source})"
    future: Future = Future()

    def draw() -> None:
        try:
            write_qc_png(plan.thumbnail, plan.mask, plan.thumb_downsample, grids, qc_dir / f"{path.name}.png", title)
        except BaseException as error:  # handed to the reader, which re-raises it once the tiles are read
            future.set_exception(error)
        else:
            future.set_result(None)

    threading.Thread(target=draw, name=f"qc-{path.name}", daemon=True).start()
    return future


def tile_spec(params: TilingParams) -> StoreSpec:
    """Store spec of RGB slide tiles."""
    scaling = {
        "tiles": "8-bit RGB as OpenSlide reads it, transparent areas composited on white",
        "tile_px": params.tile_px,
        "overlap": params.overlap,
        "mpps": list(params.mpps),
        "coords": "index/x, index/y: level-0 top-left pixel; index/scale: the tile's microns per pixel",
        "tissue": params.tissue.to_dict(),
    }
    channels = [{"name": c} for c in ("R", "G", "B")]
    labels = []
    if params.truth_labels:
        from domainfm.domains.pathology.region_labels import CLASS_NAMES

        labels = list(CLASS_NAMES)
    if params.labels is not None:
        labels = list(params.labels.names)
        scaling["labels"] = params.labels.to_dict()
    companions = {"tissue": Companion((), "float32")}
    # RGB tissue tiles barely compress (1.0-1.07x with LZ4, docs/tiles.md), so the store skips the codec:
    # assembly and streaming then cost a copy, not a compression pass.
    return StoreSpec(
        "pathology", (3, params.tile_px, params.tile_px), "uint8", channels, scaling, labels, companions, "none"
    )


def tile_slides(
    slides: list[Path],
    out: Path,
    params: TilingParams,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Tiles ``slides`` into the store at ``out`` through the shared ingest engine."""
    from domainfm.shared.tiles.ingest import ingest

    out = Path(out)
    reader = partial(read_slide_tiles, params=params, qc_dir=out / QC_FOLDER)
    return ingest(
        slides, out, tile_spec(params), reader, READER_NAME, READER_VERSION, workers, scheduler, processes,
        overwrite, progress,
    )  # fmt: skip


def tiling_warnings(out: Path) -> list[str]:
    """Sentences about a finished store: empty train/val/test splits, and slides tiled finer than their scan."""
    import warnings

    from domainfm.domains.pathology.data_splits import split_counts
    from domainfm.shared.tiles.splits import split_counts_problem
    from domainfm.shared.tiles.store import TileStore

    try:
        with warnings.catch_warnings():  # failed slides are already listed by the summary
            warnings.simplefilter("ignore")
            store = TileStore(out)
    except (DomainfmError, OSError, ValueError):  # no complete store (every slide failed): the summary says why
        return []
    found = []
    problem = split_counts_problem(split_counts(store.index["split"]))
    if problem is not None:
        found.append(
            f"{out}: {problem}; `pathology pretrain` uses every tile outside test, the heads need train and test"
        )
    for source in store.sources:
        meta = source.get("meta") or {}
        if meta.get("upsampled_mpps"):
            found.append(
                f"{source['path']}: tiles at {meta['upsampled_mpps']} mpp are upsampled from the scan's "
                f"{meta['mpp']:g} mpp (--allow_upsample)"
            )
    return found
