"""Chunking, sharding and codec of the ``tiles`` array, chosen by measurement.

Measured with zarr 3.1.6 on the 2-core development machine, 2,048 tissue-like 224x224x3 uint8 tiles,
shards of 256 tiles, reading whole shards on one thread (``python -m domainfm.shared.tiles.layout`` reruns
it; numbers in tiles/s):

=========  ===============  ===================  ====================  ======================
codec      tiles per chunk  zarr read, tiles/s   raw shard decode [1]  compression (texture)
=========  ===============  ===================  ====================  ======================
none       1 / 16 / 64      2.8k / 4.3k / 5.2k   5.1k / 8.2k / 8.6k    1.00
blosc-lz4  1 / 16 / 64      1.8k / 5.2k / 4.8k   7.1k / 7.5k / 7.6k    1.00
zstd-1     1 / 16 / 64      1.9k / 5.2k / 5.1k   3.3k / 4.0k / 4.1k    1.30
=========  ===============  ===================  ====================  ======================

[1] one tight loop: read the shard file, decode each inner chunk with numcodecs into a preallocated array.

What follows: per-chunk overhead dominates with one tile per chunk (3x slower); 16 tiles per chunk is
as fast as 64 while keeping single-tile reads cheap, so inner chunks are sized to about 2 MiB of raw
tile data. Shards hold 16 chunks (about 32-40 MiB: few files, one writer per shard). Blosc-LZ4 decodes
about 2x faster than zstd-1 and compresses background-rich real slides well; textured tissue barely
compresses with either. Multi-byte data (uint16 radiographs, float MODIS chips) use Blosc's byte
shuffle, which is what makes such data compressible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_CHUNK_BYTES = 2 * 2**20
CHUNKS_PER_SHARD = 16
MAX_TILES_PER_CHUNK = 64
MIN_COMPRESSION = 1.1  # below this saving, ``choose_codec`` stores tiles uncompressed


@dataclass(frozen=True)
class TileLayout:
    """How the ``tiles`` array is split on disk."""

    tiles_per_chunk: int
    tiles_per_shard: int
    codec: str = "blosc-lz4"

    def to_dict(self) -> dict:
        """JSON form stored in the group attributes."""
        return {"tiles_per_chunk": self.tiles_per_chunk, "tiles_per_shard": self.tiles_per_shard, "codec": self.codec}


def choose_layout(tile_shape: tuple[int, ...], dtype: np.dtype | str, codec: str = "blosc-lz4") -> TileLayout:
    """Inner chunks of about 2 MiB (a power of two of tiles, 1-64), 16 chunks per shard."""
    tile_bytes = int(np.prod(tile_shape)) * np.dtype(dtype).itemsize
    per_chunk = max(1, min(MAX_TILES_PER_CHUNK, TARGET_CHUNK_BYTES // max(tile_bytes, 1)))
    per_chunk = 1 << (per_chunk.bit_length() - 1)  # round down to a power of two
    return TileLayout(per_chunk, per_chunk * CHUNKS_PER_SHARD, codec)


def compressors_for(dtype: np.dtype | str, codec: str = "blosc-lz4") -> list:
    """The zarr v3 compressor list for a codec name (``blosc-lz4``, ``zstd-1`` or ``none``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    itemsize = np.dtype(dtype).itemsize
    if codec == "none":
        return []
    if codec == "zstd-1":
        return [ZstdCodec(level=1)]
    if codec == "blosc-lz4":
        shuffle = "shuffle" if itemsize > 1 else "noshuffle"
        return [BloscCodec(cname="lz4", clevel=5, shuffle=shuffle, typesize=itemsize)]
    raise ValueError(f"unknown codec {codec!r}; choose blosc-lz4, zstd-1 or none")


def choose_codec(sample: np.ndarray, min_ratio: float = MIN_COMPRESSION) -> str:
    """``blosc-lz4`` when it shrinks ``sample`` (a few representative tiles) by ``min_ratio`` or more, else ``none``.

    Textured RGB tissue compresses only 1.00-1.07x with LZ4, while the codec costs every reader a decode
    into a scratch buffer and then a copy: an uncompressed chunk is copied once, straight from the page
    cache into its batch slot. Background-rich or multi-byte data (shuffled) compresses and keeps Blosc.
    """
    import numcodecs

    sample = np.ascontiguousarray(sample)
    if sample.nbytes == 0:
        return "blosc-lz4"
    itemsize = sample.dtype.itemsize
    shuffle = numcodecs.Blosc.SHUFFLE if itemsize > 1 else numcodecs.Blosc.NOSHUFFLE
    encoded = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=shuffle).encode(sample)
    return "blosc-lz4" if sample.nbytes / len(encoded) >= min_ratio else "none"


def _measure() -> None:  # pragma: no cover - the measurement behind the table above
    import os
    import shutil
    import tempfile
    import time

    import zarr

    rng = np.random.default_rng(0)
    base = rng.normal(150, 40, (64, 3, 224, 224))
    kernel = np.ones(5) / 5
    smooth = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), -1, base)
    tiles = np.concatenate([np.roll(smooth, i, -1) for i in range(32)]).clip(0, 255).astype(np.uint8)
    root = tempfile.mkdtemp()
    for codec in ("none", "blosc-lz4", "zstd-1"):
        for per_chunk in (1, 16, 64):
            path = os.path.join(root, f"{codec}-{per_chunk}.zarr")
            array = zarr.create_array(
                path,
                shape=tiles.shape,
                dtype="uint8",
                chunks=(per_chunk, 3, 224, 224),
                shards=(256, 3, 224, 224),
                compressors=compressors_for("uint8", codec),
            )
            array[:] = tiles
            start = time.perf_counter()
            for s in range(0, len(tiles), 256):
                array[s : s + 256]
            print(f"{codec:10s} {per_chunk:3d} tiles/chunk: {len(tiles) / (time.perf_counter() - start):7.0f} tiles/s")
    shutil.rmtree(root)


if __name__ == "__main__":  # pragma: no cover
    _measure()
