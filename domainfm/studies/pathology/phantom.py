"""Phantom whole-slide images: pyramidal Aperio SVS files of H&E-like tissue with a ground-truth region map.

No PyPI package ships a whole-slide image, so tests, the quickstart, the tutorial and the tiling benchmark
write their own (this module writes the file; :mod:`.phantom_tissue` draws the textures and the region
map, :mod:`domainfm.domains.pathology.region_labels` reads the ground truth back; their public names are
re-exported here): a tiled, JPEG-compressed, pyramidal TIFF laid out as an Aperio ScanScope writes it, which
OpenSlide opens as vendor ``aperio`` with ``openslide.mpp-x``/``mpp-y`` and ``openslide.objective-power``.

Layout (what OpenSlide's aperio driver expects): the first IFD is level 0, tiled, its ImageDescription
starting with ``Aperio Image Library`` and carrying ``|AppMag = ..|MPP = ..`` key-value pairs; the second
IFD is a small *stripped* thumbnail (OpenSlide's associated image ``thumbnail``); every further tiled IFD
is a pyramid level, each 4x smaller than the one before, down to ~512 px on the longer side.

The scene: a few irregular tissue blobs covering 40-60% of the slide on near-white glass (low HSV
saturation, so Otsu on saturation finds the tissue), split by a warped Voronoi partition into tumor,
stroma, lymphocytes and fat (no tumor when ``tumor=False``). Each class has its own periodic 512x512
texture, coloured with the Beer-Lambert stain model from Ruifrok's H&E optical densities, with sizes in
microns so they scale with the slide's mpp:

* tumor: large, dense, purple, slightly elliptic nuclei with chromatin texture on pink cytoplasm;
* stroma: wavy pink fibres with sparse thin spindle nuclei;
* lymphocytes: dense small round dark-blue nuclei;
* fat: near-white vacuoles with pink walls and a few flat nuclei. Fat counts as tissue in the truth,
  so it is drawn detectable: vacuoles smaller than real adipocytes (~30 um across instead of 50-150 um)
  with thick (~5 um) deep-pink walls give fat a mean HSV saturation of ~0.26, over ten times the glass's
  (~0.02) and most of the other tissue's (~0.33), so Otsu on a thumbnail's saturation puts fat with the
  tissue, clear of the threshold (thin walls, ~0.12, fall on the glass's side of it; ~0.19 right on it).

The ground truth is the class map on a grid of ``truth_downsample`` level-0 pixels per cell (8, doubled
while the map would exceed 2048 cells a side); a level-0 pixel ``(x, y)`` shows the texture of class
``regions[y // ds, x // ds]`` exactly. It is written beside the slide as ``FILE.svs.truth.npz``
(:func:`read_truth`); :func:`truth_class_fractions` and :func:`truth_tissue_grid` answer the questions a
tiler's tests ask of it.

Writing is fast and memory bounded: level 0 is rendered one band of tile rows at a time (a gather from
the packed textures, :func:`render_band`, in a background thread one band ahead), each band's tiles are
JPEG-encoded by a thread pool straight from the RGBA pixels and handed to ``tifffile`` as an iterator of
encoded tiles, and each band is 4x4 block-averaged into level 1 (1/16 of the pixels, an ``np.memmap``
beside the output when over 256 MB); the lower levels are averaged from level 1. Memory therefore grows
with the slide's width (a few bands) and level 1, not with level 0: a 20000x20000 slide peaks under
0.5 GB. Level 0 uses 4:2:0 chroma subsampling (as tifffile does by default), the lower levels 4:4:4.
Both files appear atomically (temporary name, then ``os.replace``), so a killed run leaves nothing that
looks complete.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.pathology.region_labels import (
    CLASS_NAMES,
    TRUTH_SUFFIX,
    read_truth,
    truth_class_fractions,
)
from domainfm.shared.outputs import partial_path
from domainfm.studies.pathology.phantom_tissue import (
    PERIOD,
    class_textures,
    draw_regions,
    pack_textures,
    render_band,
    rgb,
    slide_stain,
)
from domainfm.studies.pathology.truth import truth_tissue_grid

__all__ = [
    "CLASS_NAMES",
    "PERIOD",
    "TRUTH_SUFFIX",
    "PhantomSlide",
    "class_textures",
    "draw_regions",
    "pack_textures",
    "read_truth",
    "render_band",
    "rgb",
    "slide_stain",
    "truth_class_fractions",
    "truth_tissue_grid",
    "write_phantom_slide",
]

APERIO_HEADER = "Aperio Image Library v12.0.0 \r\n"
PHANTOM_TITLE = "Title = domainfm phantom"  # in the description: a slide `phantom --overwrite` may replace
MIN_LEVEL_SIDE = 512  # pyramid levels are added while their longer side is at least this
LEVEL_STEP = 4
# JPEG chroma subsampling: 4:2:0 at level 0 (small files, error ~2 grey levels); 4:4:4 on the lower
# levels, whose pixels are dense with detail (4:2:0 would cost ~5 grey levels there)
LEVEL0_CHROMA = (2, 2)
MEMMAP_BYTES = 256 * 2**20  # level 1 larger than this lives in a temporary np.memmap


@dataclass
class PhantomSlide:
    """A phantom slide on disk.

    Attributes:
        path: The ``.svs`` file.
        truth_path: Its ground truth, ``path`` + :data:`TRUTH_SUFFIX`.
        size: ``(width, height)`` of level 0 in pixels.
        mpp: Microns per level-0 pixel, or None when the slide carries none.
        downsamples: Downsample of each pyramid level, e.g. ``[1, 4, 16]``.
    """

    path: Path
    truth_path: Path
    size: tuple[int, int]
    mpp: float | None
    downsamples: list[int]


# ---------------------------------------------------------------------------------------------- pyramid


def _block_mean4(packed: np.ndarray) -> np.ndarray:
    """Rounded 4x4 block mean of packed RGBA pixels ``[4h, 4w]`` -> ``[h, w]`` (``uint32``).

    Channels are averaged two at a time in 16-bit lanes of a uint32 (R and B, then G and A): a sum of 16
    bytes fits a lane, so no carry crosses channels.
    """
    height, width = packed.shape[0] // LEVEL_STEP, packed.shape[1] // LEVEL_STEP
    out = np.zeros((height, width), np.uint32)
    for shift in (0, 8):
        lanes = (packed >> shift) & np.uint32(0x00FF00FF) if shift else packed & np.uint32(0x00FF00FF)
        rows = lanes[0::4] + lanes[1::4]
        rows += lanes[2::4]
        rows += lanes[3::4]
        blocks = rows.reshape(height, width, LEVEL_STEP)
        total = blocks[..., 0] + blocks[..., 1]
        total += blocks[..., 2]
        total += blocks[..., 3]
        total += np.uint32(0x00080008)
        out |= ((total >> 4) & np.uint32(0x00FF00FF)) << shift
    return out


def _downsample_into(src: np.ndarray, dst: np.ndarray, chunk_rows: int = 1024) -> None:
    """Fills packed ``dst`` with the 4x block mean of packed ``src`` (edges replicated), by row chunks."""
    height, width = dst.shape
    for r0 in range(0, height, chunk_rows):
        r1 = min(height, r0 + chunk_rows)
        part = src[LEVEL_STEP * r0 : LEVEL_STEP * r1, : LEVEL_STEP * width]
        pad_rows = LEVEL_STEP * (r1 - r0) - part.shape[0]
        pad_cols = LEVEL_STEP * width - part.shape[1]
        if pad_rows or pad_cols:
            part = np.pad(part, ((0, pad_rows), (0, pad_cols)), mode="edge")
        dst[r0:r1] = _block_mean4(part)


def _level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """``(width, height)`` of each pyramid level: 4x steps while the longer side is >= MIN_LEVEL_SIDE."""
    sizes = [(width, height)]
    while True:
        w, h = math.ceil(sizes[-1][0] / LEVEL_STEP), math.ceil(sizes[-1][1] / LEVEL_STEP)
        if max(w, h) < MIN_LEVEL_SIDE:
            return sizes
        sizes.append((w, h))


def _allocate(shape: tuple[int, int], folder: Path, stack: ExitStack) -> np.ndarray:
    """A packed-RGBA ``uint32`` array: in memory, or a temporary memmap in ``folder`` when large."""
    if 4 * math.prod(shape) <= MEMMAP_BYTES:
        return np.empty(shape, np.uint32)
    handle, name = tempfile.mkstemp(dir=folder, prefix=".phantom-", suffix=".level")
    os.close(handle)
    stack.callback(os.unlink, name)
    return np.memmap(name, np.uint32, "w+", shape=shape)


def _aperio_description(width: int, height: int, tile: int, quality: int, mpp: float | None) -> str:
    """ImageDescription of level 0 as an Aperio ScanScope writes it (OpenSlide reads its ``key = value``s)."""
    fields = [f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"]
    if mpp is not None:
        fields.append(f"AppMag = {40 if mpp <= 0.3 else 20 if mpp <= 0.6 else 10}")
    fields += ["StripeWidth = 2048", "ScanScope ID = DOMAINFM", "Filename = phantom", PHANTOM_TITLE]
    if mpp is not None:
        fields.append(f"MPP = {float(mpp)!r}")
    return "|".join(fields)


def _put(channel: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Puts ``item`` unless ``stop`` is set first; returns whether it was put."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Runs ``items`` in a background thread, up to ``depth`` ahead; its exceptions re-raise here.

    Rendering the next band (NumPy gathers, which release the GIL) so overlaps tifffile's JPEG threads.
    """
    channel: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if not _put(channel, (item, None), stop):
                    return
            _put(channel, (None, StopIteration()), stop)
        except BaseException as error:  # handed to the consumer, which re-raises it
            _put(channel, (None, error), stop)

    thread = threading.Thread(target=produce, name="phantom-render", daemon=True)
    thread.start()
    try:
        while True:
            item, error = channel.get()
            if isinstance(error, StopIteration):
                return
            if error is not None:
                raise error
            yield item
    finally:
        stop.set()
        thread.join()


def _jpeg(tile: np.ndarray, quality: int, subsampling: tuple[int, int]) -> bytes:
    """One YCbCr JPEG tile (as tifffile writes ``photometric="rgb"``) from an RGBA ``[t, t, 4]`` view.

    libjpeg-turbo reads the RGBX pixels directly (the stream is identical to encoding the RGB), which
    saves NumPy's slow 4-to-3-byte copy of every tile.
    """
    import imagecodecs

    spaces = imagecodecs.JPEG8.CS
    return imagecodecs.jpeg_encode(
        tile, level=quality, colorspace=spaces.EXT_RGBX, outcolorspace=spaces.YCbCr, subsampling=subsampling
    )


def _tile_row(packed: np.ndarray, tile: int) -> list[np.ndarray]:
    """The RGBA ``[tile, tile, 4]`` tiles of a packed band of tile rows (edges padded by replication)."""
    height, width = packed.shape
    if height % tile or width % tile:
        pad = ((0, -height % tile), (0, -width % tile))
        packed = np.pad(packed, pad, mode="edge")
    pixels = packed.view(np.uint8).reshape(*packed.shape, 4)
    return [pixels[:, x0 : x0 + tile] for x0 in range(0, packed.shape[1], tile)]


def _encoded(
    rows: Iterator[list[np.ndarray]], quality: int, subsampling: tuple[int, int], pool: ThreadPoolExecutor
) -> Iterator[bytes]:
    """JPEG bytes of every tile, row by row, each row encoded by the pool while the next is produced."""
    for row in rows:
        futures = [pool.submit(_jpeg, tile, quality, subsampling) for tile in row]
        for future in futures:
            yield future.result()


class _Writer:
    """Writes one phantom SVS: level 0 from bands, level 1 accumulated on the way, then the rest."""

    def __init__(self, regions: np.ndarray, ds: int, lut: np.ndarray, size: tuple[int, int], tile: int) -> None:
        self.regions, self.ds, self.lut, self.tile = regions, ds, lut, tile
        self.width, self.height = size
        self.padded = (math.ceil(self.width / tile) * tile, math.ceil(self.height / tile) * tile)
        self.level1 = np.zeros((0, 0), np.uint32)

    def bands(self) -> Iterator[np.ndarray]:
        """Renders level 0 band by band (packed RGBA), averaging each into level 1."""
        width_p, height_p = self.padded
        for y0 in range(0, height_p, self.tile):
            band = render_band(self.lut, self.regions, y0, self.tile, width_p, self.ds)
            start = y0 // LEVEL_STEP
            self.level1[start : start + self.tile // LEVEL_STEP] = _block_mean4(band)
            yield band

    def level0_rows(self, on_band: Callable[[], None]) -> Iterator[list[np.ndarray]]:
        """Yields level 0's tile rows, the next band rendering in the background meanwhile."""
        with closing(_prefetch(self.bands())) as bands:
            for band in bands:
                on_band()
                yield _tile_row(band, self.tile)


def _level_rows(packed: np.ndarray, tile: int) -> Iterator[list[np.ndarray]]:
    """Tile rows of a packed pyramid level."""
    for y0 in range(0, packed.shape[0], tile):
        yield _tile_row(packed[y0 : y0 + tile], tile)


def _thumbnail(level: np.ndarray) -> np.ndarray:
    """An RGB thumbnail of at most 1024 px on its longer side from a (small) packed pyramid level."""
    pixels = rgb(np.asarray(level))
    factor = max(1, math.ceil(max(level.shape) / 1024))
    if factor == 1:
        return np.ascontiguousarray(pixels)
    h, w = (level.shape[0] // factor) * factor, (level.shape[1] // factor) * factor
    blocks = pixels[:h, :w].reshape(h // factor, factor, w // factor, factor, 3)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _write_svs(
    target: Path, writer: _Writer, mpp: float | None, quality: int, progress: bool, name: str, stack: ExitStack
) -> list[int]:
    """Writes the pyramid to ``target``, showing ``name`` on the progress bar; returns the level downsamples."""
    import tifffile

    width, height, tile = writer.width, writer.height, writer.tile
    sizes = _level_sizes(width, height)
    width_p, height_p = writer.padded
    writer.level1 = _allocate((height_p // LEVEL_STEP, width_p // LEVEL_STEP), target.parent, stack)
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}, "metadata": None}
    tiled = {"dtype": np.uint8, "tile": (tile, tile)}
    pool = stack.enter_context(ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))))
    bar, update = _progress_bar(progress, math.ceil(height / tile), name)
    with bar, tifffile.TiffWriter(target, bigtiff=width * height * 3 > 2**31) as tw:
        description = _aperio_description(width, height, tile, quality, mpp)
        rows = writer.level0_rows(update)
        with closing(rows), closing(_encoded(rows, quality, LEVEL0_CHROMA, pool)) as level0:
            tw.write(
                level0, shape=(height, width, 3), description=description, subsampling=LEVEL0_CHROMA, **tiled, **jpeg
            )
        levels = [writer.level1]
        for w, h in sizes[2:]:
            levels.append(_allocate((h, w), target.parent, stack))
            _downsample_into(levels[-2], levels[-1])
        w, h = sizes[-1] if len(sizes) > 1 else (math.ceil(width / LEVEL_STEP), math.ceil(height / LEVEL_STEP))
        thumb = _thumbnail(levels[max(0, len(sizes) - 2)][:h, :w])
        header = f"{APERIO_HEADER}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - "
        tw.write(thumb, description=header, rowsperstrip=thumb.shape[0], **jpeg)
        for k, (w, h) in enumerate(sizes[1:], start=1):
            description = f"{APERIO_HEADER}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) -> {w}x{h}"
            data = _encoded(_level_rows(levels[k - 1][:h, :w], tile), quality, (1, 1), pool)
            description = f"{description} JPEG/RGB Q={quality}"
            tw.write(data, shape=(h, w, 3), description=description, subsampling=(1, 1), **tiled, **jpeg)
    return [LEVEL_STEP**k for k in range(len(sizes))]


def _progress_bar(show: bool, total: int, name: str) -> tuple[Any, Callable[[], None]]:
    """A rich progress bar over the level-0 bands (a no-op when not shown)."""
    if not show:
        return nullcontext(), lambda: None
    from rich.progress import Progress

    bar = Progress(transient=False)
    task = bar.add_task(f"phantom {name}", total=total)
    return bar, lambda: bar.advance(task)


def _validate(size: tuple[int, int], mpp: float | None, tile: int, quality: int) -> None:
    """Raises ValueError on arguments no slide can be written with."""
    if min(size) < 256:
        raise ValueError(f"phantom slide size must be at least 256 px a side, got {size[0]}x{size[1]}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of microns per pixel (or None), got {mpp}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (TIFF), got {tile}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1-100, got {quality}")


def _save_truth(target: Path, regions: np.ndarray, ds: int, size: tuple[int, int], mpp: float | None,
                tumor_present: bool, seed: int) -> None:  # fmt: skip
    """Writes the truth npz to ``target`` (a temporary name; the caller moves it)."""
    with open(target, "wb") as handle:
        np.savez_compressed(
            handle,
            regions=regions,
            truth_downsample=np.int64(ds),
            class_names=np.array(CLASS_NAMES),
            mpp=np.float64(np.nan if mpp is None else mpp),
            size=np.array(size, np.int64),
            slide_label=np.int64(tumor_present),
            seed=np.int64(seed),
        )


def write_phantom_slide(
    out: Path,
    size: int | tuple[int, int] = 4096,
    seed: int = 0,
    mpp: float | None = 0.25,
    tumor: bool = True,
    tile: int = 256,
    quality: int = 85,
    progress: bool = False,
) -> PhantomSlide:
    """Writes a phantom Aperio SVS to ``out`` and its ground truth to ``out`` + :data:`TRUTH_SUFFIX`.

    Args:
        out: The ``.svs`` path (its folder is created).
        size: Level-0 side, or ``(width, height)``; at least 256 each.
        seed: Random seed (layout, classes and textures).
        mpp: Microns per level-0 pixel, or None for a slide without ``MPP`` and ``AppMag``.
        tumor: Whether tumor regions are drawn (``slide_label`` 1) or not (0).
        tile: TIFF tile side (multiple of 16).
        quality: JPEG quality (1-100).
        progress: Show a progress bar over level-0 bands.

    Returns:
        The slide written.

    Raises:
        ValueError: If the size is under 256, mpp is not positive, or tile/quality are invalid.
    """
    dims = (int(size), int(size)) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))
    _validate(dims, mpp, tile, quality)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = out.with_name(out.name + TRUTH_SUFFIX)
    regions, ds = draw_regions(seed, dims, tumor)
    writer = _Writer(regions, ds, pack_textures(class_textures(seed, mpp)), dims, tile)
    partial_svs, partial_truth = partial_path(out), partial_path(truth_path)
    try:
        _save_truth(partial_truth, regions, ds, dims, mpp, bool((regions == 1).any()), seed)
        with ExitStack() as stack:
            downsamples = _write_svs(partial_svs, writer, mpp, quality, progress, out.name, stack)
        os.replace(partial_truth, truth_path)
        os.replace(partial_svs, out)
    finally:
        for leftover in (partial_svs, partial_truth):
            leftover.unlink(missing_ok=True)
    return PhantomSlide(out, truth_path, dims, None if mpp is None else float(mpp), downsamples)


def is_phantom_slide(path: Path) -> bool:
    """Whether ``path`` is a slide :func:`write_phantom_slide` wrote (the ``Title`` of its description)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return PHANTOM_TITLE in (tiff.pages.first.description or "")
    except (OSError, ValueError, tifffile.TiffFileError):
        return False
