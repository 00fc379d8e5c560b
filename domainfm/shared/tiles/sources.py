"""A generic reader: NumPy ``.npy`` arrays of tiles ``[N, C, H, W]`` (or ``[N, H, W]`` for one channel).

Domain readers (slides, DICOM, MODIS HDF4, GeoTIFF, image+mask pairs) live in their domain packages and
yield the same :class:`~domainfm.shared.tiles.schema.TileBatch`. This one serves tests, benchmarks and
data that is already tiled. Arrays are memory-mapped and read in batches, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.layout import choose_codec
from domainfm.shared.tiles.schema import StoreSpec, TileBatch

BATCH = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class SourceError(DomainfmError, ValueError):
    """A source file that cannot be read as tiles; the message names it."""


def open_npy(path: Path) -> np.ndarray:
    """Memory-maps a tile array, checking its shape."""
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
    return array


def read_npy_tiles(path: Path) -> Iterator[TileBatch]:
    """Yields the tiles of one ``.npy`` file in batches; ``x`` is the tile's row in the file."""
    array = open_npy(path)
    for start in range(0, len(array), BATCH):
        tiles = np.ascontiguousarray(array[start : start + BATCH])
        yield TileBatch(tiles, index={"x": np.arange(start, start + len(tiles))})


def npy_spec(
    path: Path, domain: str = "generic", channel_names: list[str] | None = None, codec: str = "auto"
) -> StoreSpec:
    """A store spec matching the first ``.npy`` source.

    ``codec="auto"`` measures it: Blosc-LZ4 when it compresses the source's first ``BATCH`` tiles by 10 %
    or more, else uncompressed (:func:`~domainfm.shared.tiles.layout.choose_codec`).
    """
    array = open_npy(path)
    channels = channel_names or [f"c{i}" for i in range(array.shape[1])]
    if codec == "auto":
        codec = choose_codec(array[:BATCH])
    return StoreSpec(domain, tuple(array.shape[1:]), str(array.dtype), [{"name": n} for n in channels], codec=codec)
