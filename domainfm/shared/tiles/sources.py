"""A generic reader: NumPy ``.npy`` arrays of tiles ``[N, C, H, W]`` (or ``[N, H, W]`` for one channel).

Channels-last arrays ``[N, H, W, C]`` are read with ``layout="nhwc"``; ``layout="auto"`` (the CLI's default)
takes ``[N, C, H, W]`` but refuses, by name, a shape whose last axis looks like channels (1, 3 or 4) while its
second does not, instead of storing N tiles of H channels. With a splits table (``--splits``) every tile of
a file takes the file's split (the file's name or stem is its key); each source records its ``group``.

Domain readers (slides, DICOM, MODIS HDF4, GeoTIFF, image+mask pairs) live in their domain packages and
yield the same :class:`~domainfm.shared.tiles.schema.TileBatch`. This one serves tests, benchmarks and
data that is already tiled. Arrays are memory-mapped and read in batches, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.layout import choose_codec
from domainfm.shared.tiles.schema import StoreSpec, TileBatch
from domainfm.shared.tiles.splits import SplitTable, group_split

BATCH = 64
CHANNEL_COUNTS = (1, 3, 4)
Layout = Literal["auto", "nchw", "nhwc"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class SourceError(DomainfmError, ValueError):
    """A source file that cannot be read as tiles; the message names it."""


def _apply_layout(array: np.ndarray, path: Path, layout: str) -> np.ndarray:
    """``array`` as ``[N, C, H, W]``: transposed for ``nhwc``, refused for ``auto`` when it looks channels-last."""
    if layout == "nhwc":
        return array.transpose(0, 3, 1, 2)
    if layout == "auto" and array.shape[-1] in CHANNEL_COUNTS and array.shape[1] not in CHANNEL_COUNTS:
        n, a, b, c = array.shape
        raise SourceError(
            f"{path} holds shape {array.shape}, which looks channels-last [N, H, W, C] ({n} tiles of {a} x {b} "
            f"with {c} channels); pass --layout nhwc, or --layout nchw if it really is {a} channels of {b} x {c}"
        )
    if layout not in ("auto", "nchw", "nhwc"):
        raise SourceError(f"unknown layout {layout!r}; use nchw, nhwc or auto")
    return array


def open_npy(path: Path, layout: Layout = "nchw") -> np.ndarray:
    """Memory-maps a tile array as ``[N, C, H, W]``, checking its shape (``layout``: see the module docstring)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as error:
        raise SourceError(f"{path} is not a readable .npy array: {error.strerror or error}") from error
    if magic != b"\x93NUMPY":  # numpy would otherwise blame "pickled (object) data" for any non-.npy bytes
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            from domainfm.shared.plugins import image_readers

            raise SourceError(f"{path} is an image, not a .npy tile array: read images with {image_readers()}")
        reason = "it is empty" if not magic else "it has no .npy header (save tiles with numpy.save)"
        raise SourceError(f"{path} is not a readable .npy array: {reason}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty file
        reason = "it is empty" if isinstance(error, EOFError) else error
        raise SourceError(f"{path} is not a readable .npy array: {reason}") from error
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4:
        raise SourceError(f"{path} holds shape {array.shape}; expected tiles [N, C, H, W] or [N, H, W]")
    return _apply_layout(array, Path(path), layout)


def read_npy_tiles(path: Path, layout: Layout = "nchw", splits: SplitTable | None = None) -> Iterator[TileBatch]:
    """Yields the tiles of one ``.npy`` file in batches; ``x`` is the tile's row in the file.

    Tiles are unassigned to splits unless ``splits`` lists the file (by name or stem).
    """
    array = open_npy(path, layout)
    name = Path(path)
    split = -1 if splits is None else group_split(name.stem, splits, aliases=(name.name, str(path)))
    yield TileBatch(np.zeros((0, *array.shape[1:]), array.dtype), source_meta={"group": name.stem})
    for start in range(0, len(array), BATCH):
        tiles = np.ascontiguousarray(array[start : start + BATCH])
        index = {"x": np.arange(start, start + len(tiles)), "split": np.full(len(tiles), split)}
        yield TileBatch(tiles, index=index)


def npy_spec(
    path: Path,
    domain: str = "generic",
    channel_names: list[str] | None = None,
    codec: str = "auto",
    layout: Layout = "nchw",
) -> StoreSpec:
    """A store spec matching the first ``.npy`` source.

    ``codec="auto"`` measures it: Blosc-LZ4 when it compresses the source's first ``BATCH`` tiles by 10 %
    or more, else uncompressed (:func:`~domainfm.shared.tiles.layout.choose_codec`).
    """
    array = open_npy(path, layout)
    channels = channel_names or [f"c{i}" for i in range(array.shape[1])]
    if codec == "auto":
        codec = choose_codec(array[:BATCH])
    return StoreSpec(domain, tuple(array.shape[1:]), str(array.dtype), [{"name": n} for n in channels], codec=codec)
