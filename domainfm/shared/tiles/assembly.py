"""Store assembly: the staged rows of every source, copied (or linked) shard by shard into the store.

One task per shard (so one writer per shard) writes global rows ``[start, stop)`` of every array from
the packs that hold them (:mod:`.packs`), in source order. Uncompressed single-byte tiles go straight
into their shard files (:func:`.shards.write_raw_shard`), the rest through zarr; index columns are a few
bytes per tile, assembled in memory and written once.

A staged tile file that holds exactly one shard's rows (a one-slide run: its pack starts at row 0 and
flushes whole shards) *is* that shard's data, byte for byte (the raw shard layout is the rows in order,
then the index): it is hard-linked into the store and only the shard's index (padding, chunk offsets and
their CRC-32C) is appended, so the tiles are written to disk once instead of twice. Its CRC-32C continues
from the one the pack journalled when it wrote the file. The staged file keeps its first ``rows`` rows as
they were (readers of staging read only those), so a kill at any point and a rerun give the same store;
where hard links are not available (or the rows do not line up) the rows are copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import crc32c as _crc32c
import numpy as np
import zarr

from domainfm.shared.tiles.fragments import kill_point, read_fragment_rows
from domainfm.shared.tiles.layout import choose_layout
from domainfm.shared.tiles.packs import RAW_SUFFIX, Staged
from domainfm.shared.tiles.schema import INDEX_COLUMNS, StoreSpec
from domainfm.shared.tiles.shards import ShardDecoder, file_crc32c, raw_shard_tail, shard_file, write_raw_shard
from domainfm.shared.tiles.store import CHECKSUMS, WRITE_ALL_CHUNKS, create_arrays

# pack, its rows per flush, first pack row, global offset, rows, the CRC-32C of each flush's raw tile file
Segment = tuple[Path, list[int], int, int, int, tuple]


def staged_rows(
    pack: Path, batches: list[int], key: str, start: int, stop: int, tile: tuple[tuple[int, ...], str] | None = None
) -> list[np.ndarray]:
    """Rows ``[start, stop)`` of ``key`` in a pack (memory-mapped reads of its flush files).

    ``tile`` (the tile shape and dtype) reads the raw tile files a pack writes; packs of earlier versions
    hold ``.npy`` files, read as before.
    """
    if key != "tiles" or tile is None:
        return read_fragment_rows(pack, batches, key, start, stop)
    shape, dtype = tile
    parts, offset = [], 0
    for number, count in enumerate(batches):
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo < hi:
            raw = pack / "data" / key / f"{number:06d}{RAW_SUFFIX}"
            if raw.is_file():
                array = np.memmap(raw, np.dtype(dtype), "r", shape=(count, *shape))
            else:
                array = np.load(pack / "data" / key / f"{number:06d}.npy", mmap_mode="r", allow_pickle=False)
            parts.append(np.asarray(array[lo - offset : hi - offset]))
        offset += count
    return parts


def _segment_rows(
    segments: list[Segment], key: str, start: int, stop: int, tile: tuple[tuple[int, ...], str] | None = None
) -> list[np.ndarray]:
    """Global rows ``[start, stop)`` of ``key``, read from the packs that hold them."""
    parts = []
    for pack, batches, first, offset, count, _ in segments:
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo < hi:
            parts += staged_rows(pack, batches, key, first + lo - offset, first + hi - offset, tile)
    return parts


def _whole_flush(segments: list[Segment], start: int, stop: int) -> tuple[Path, int] | None:
    """``(raw tile file, its CRC-32C)`` when global rows ``[start, stop)`` are exactly one flush of one pack."""
    for pack, batches, first, offset, count, crcs in segments:
        if not offset <= start < offset + count:
            continue
        if stop > offset + count:
            return None  # the shard spans two segments
        row = first + start - offset
        begin = 0
        for number, rows in enumerate(batches):
            if begin == row and rows == stop - start and number < len(crcs) and crcs[number] is not None:
                path = pack / "data" / "tiles" / f"{number:06d}{RAW_SUFFIX}"
                return (path, int(crcs[number])) if path.is_file() else None
            begin += rows
        return None
    return None


def link_raw_shard(
    staged: Path, staged_crc: int, path: Path, rows: int, row_bytes: int, rows_per_chunk: int, chunks_per_shard: int
) -> int | None:
    """Makes the staged raw tile file ``staged`` (``rows`` rows) the shard file ``path``; its CRC-32C.

    The file is hard-linked to ``path.partial``, cut back to its rows (a killed earlier assembly may have
    appended an index already), the shard index appended, and the link renamed to ``path``: the same
    bytes :func:`.shards.write_raw_shard` writes. ``None`` where the filesystem has no hard links.
    """
    data_bytes = rows * row_bytes
    if staged.stat().st_size < data_bytes:
        return None
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    try:
        os.link(staged, partial)
    except OSError:
        return None
    tail = raw_shard_tail(rows, row_bytes, rows_per_chunk, chunks_per_shard)
    with open(partial, "r+b") as handle:
        handle.truncate(data_bytes)
        handle.seek(data_bytes)
        handle.write(tail)
    partial.replace(path)
    return int(_crc32c.crc32c(tail, staged_crc))


def _copy_rows(
    segments: list[Segment],
    start: int,
    stop: int,
    store: Path,
    keys: list[str],
    raw_tiles: bool,
    tile: tuple[tuple[int, ...], str] | None = None,
) -> int:
    """Writes global rows ``[start, stop)`` of every array from the packs that hold them (one shard).

    With ``raw_tiles`` (see :func:`_raw_shards`) the tile shard file is written directly, or linked from a
    staged file that holds exactly its rows (module docstring). Returns the CRC-32C of the tile shard file.
    """
    group = zarr.open_group(store, mode="r+")
    crc = None
    with zarr.config.set(WRITE_ALL_CHUNKS):  # in this worker too: all-zero tiles must still be written
        for key in keys:
            array = group[key]
            if key == "tiles" and raw_tiles:
                shard_rows, chunk_rows = int(array.shards[0]), int(array.chunks[0])
                path = shard_file(Path(store) / "tiles", start // shard_rows, array.ndim)
                whole = _whole_flush(segments, start, stop)
                if whole is not None:
                    row_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
                    crc = link_raw_shard(
                        whole[0], whole[1], path, stop - start, row_bytes, chunk_rows, shard_rows // chunk_rows
                    )
                if crc is None:
                    parts = _segment_rows(segments, key, start, stop, tile)
                    crc = write_raw_shard(path, parts, chunk_rows, shard_rows // chunk_rows)
            else:
                parts = _segment_rows(segments, key, start, stop, tile)
                array[start:stop] = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if crc is None:  # written by zarr: read back (one shard, still in the page cache)
        tiles = group["tiles"]
        crc = file_crc32c(shard_file(Path(store) / "tiles", start // int(tiles.shards[0]), tiles.ndim))
    kill_point("shard")
    return crc


def _raw_shards(array: zarr.Array) -> bool:
    """Uncompressed single-byte tiles in the layout :func:`.shards.write_raw_shard` writes (no byte order)."""
    decoder = ShardDecoder(array)
    return decoder.supported and decoder.decoder is None and array.dtype.itemsize == 1


def _segments(staged: list[Staged | None]) -> tuple[list[Segment], list[np.ndarray]]:
    """The done sources' rows as runs of consecutive pack rows in store order, and each tile's source row."""
    segments: list[Segment] = []
    rows_of, total = [], 0
    for row, item in enumerate(staged):
        if item is None or item.entry["status"] != "done":
            continue
        n = int(item.entry["n_tiles"])
        rows_of.append(np.full(n, row, np.int32))
        if n and segments and segments[-1][0] == item.pack and segments[-1][2] + segments[-1][4] == item.start:
            pack, batches, first, offset, count, crcs = segments[-1]
            segments[-1] = (pack, batches, first, offset, count + n, crcs)
        elif n:
            segments.append((item.pack, item.batches, item.start, total, n, item.crcs))
        total += n
    return segments, rows_of


def assemble(
    group: zarr.Group,
    out: Path,
    spec: StoreSpec,
    staged: list[Staged | None],
    workers: int,
    scheduler: str | None,
    processes: bool,
) -> int:
    """Creates the store's arrays and fills them from the packs (one task per shard); returns the tile count."""
    import dask

    from domainfm.shared.tiles.ingest import _run_tasks

    segments, rows_of = _segments(staged)
    total = sum(len(r) for r in rows_of)
    layout = choose_layout(spec.tile_shape, spec.dtype, spec.codec)
    create_arrays(group, spec, total, layout)
    keys = ["tiles", *[f"companions/{name}" for name in spec.companions]]
    rows = int(group["tiles"].shards[0])
    raw = _raw_shards(group["tiles"])
    tile = (tuple(spec.tile_shape), str(np.dtype(spec.dtype)))
    copies = []
    for s in range(0, total, rows):
        stop = min(s + rows, total)
        mine = [g for g in segments if g[3] < stop and g[3] + g[4] > s]  # only what this shard needs travels
        copies.append(dask.delayed(_copy_rows)(mine, s, stop, out, keys, raw, tile))
    crcs = _run_tasks(copies, workers, scheduler, processes) if copies else []
    for name in INDEX_COLUMNS:  # a few bytes per tile: assembled in memory, written once
        # index/source: the row in today's source list, whatever the list was when the pack was made
        parts = rows_of if name == "source" else _segment_rows(segments, f"index/{name}", 0, total)
        if parts and total:
            group[f"index/{name}"][:] = np.concatenate(parts)
    if crcs:
        group[CHECKSUMS][:] = np.asarray(crcs, np.uint32)
    return total
