"""Store verification: schema, completeness, checksums, every chunk present and decodable, index consistent.

zarr returns the fill value for a missing chunk without complaint, so verification lists the chunk files
each array must have (stores write every chunk, see ``WRITE_ALL_CHUNKS``) and decodes them: a truncated
shard fails its index checksum, a deleted one is missing, a deleted index entry is a missing index chunk.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import zarr

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import INDEX_COLUMNS
from domainfm.shared.tiles.store import CHECKSUMS, StoreError, TileStore


def _chunk_files(array: zarr.Array, root: Path) -> list[tuple[tuple[int, ...], Path]]:
    """The files an array must have: one per shard (or per chunk when unsharded)."""
    grid = array.shards or array.chunks
    counts = [math.ceil(s / g) if s else 0 for s, g in zip(array.shape, grid, strict=True)]
    folder = root / array.path
    return [(c, folder / "c" / Path(*map(str, c))) for c in itertools.product(*(range(n) for n in counts))]


def _check_array(array: zarr.Array, root: Path, decode: bool) -> list[str]:
    problems = []
    grid = array.shards or array.chunks
    for coords, path in _chunk_files(array, root):
        label = f"{array.path} chunk {'/'.join(map(str, coords))} ({path.relative_to(root)})"
        if not path.is_file():
            problems.append(f"{label} is missing")
            continue
        if decode:
            region = tuple(slice(c * g, min((c + 1) * g, s)) for c, g, s in zip(coords, grid, array.shape, strict=True))
            try:
                array[region]
            except Exception as error:  # checksum, codec and truncation errors all mean corruption
                problems.append(f"{label} is corrupt: {type(error).__name__}: {error}")
    return problems


def verify_store(path: str | Path, decode: bool = True) -> list[str]:
    """Every problem found in the store at ``path`` (an empty list means it is sound).

    With ``decode`` every tile shard file is checked in full against its recorded CRC-32C (which also
    catches two shard files swapped) and decoded, and every index, companion and checksum chunk is
    decoded through its ``crc32c`` codec. A store written before checksums existed is checked as far as it
    can be (see :func:`verify_notes`).
    """
    try:
        store = TileStore(path, allow_incomplete=True, check=False, verify_reads="always")
    except StoreError as error:
        return [str(error)]
    problems: list[str] = []
    status = store.attrs.get("status")
    if status != "complete":
        problems.append(f"status is {status!r}, not 'complete' (rerun the ingest command to finish it)")
    try:
        tiles = store.tiles
    except StoreError as error:
        return [*problems, str(error)]
    n = tiles.shape[0]
    if tuple(tiles.shape[1:]) != store.spec.tile_shape or str(tiles.dtype) != store.spec.dtype:
        problems.append(
            f"tiles are {tiles.shape[1:]} {tiles.dtype}; attributes say {store.spec.tile_shape} {store.spec.dtype}"
        )
    if status in ("complete", "partial") and n != store.recorded_tiles:
        problems.append(f"the tiles array holds {n} tiles, the attributes record {store.recorded_tiles}")
    arrays = [tiles]
    for name, dtype in INDEX_COLUMNS.items():
        try:
            column = store.group[f"index/{name}"]
        except KeyError:
            problems.append(f"index column {name!r} is missing")
            continue
        if column.shape != (n,) or str(column.dtype) != dtype:
            problems.append(f"index/{name} is {column.shape} {column.dtype}, expected ({n},) {dtype}")
        arrays.append(column)
    for name in store.spec.companions:
        try:
            companion = store.group[f"companions/{name}"]
        except KeyError:
            problems.append(f"companion {name!r} is missing")
            continue
        if companion.shape[0] != n:
            problems.append(f"companions/{name} has {companion.shape[0]} rows for {n} tiles")
        arrays.append(companion)
    if store.checksummed:
        arrays.append(store.group[CHECKSUMS])
    problems += _check_array(tiles, store.path, decode=False)
    for array in arrays[1:]:
        problems += _check_array(array, store.path, decode=decode)
    if decode and not problems:
        for shard in range(len(store.shard_ranges())):
            try:  # the recorded checksum first (names a swapped file), then the decoder TileStream uses
                store.check_shard(shard)
                store.read_shard(shard)
            except DomainfmError as error:
                problems.append(f"tiles shard {shard} is corrupt: {error}")
    if not problems and status in ("complete", "partial"):
        problems += store.consistency_problems()  # index/source against the sources table
    if not problems:
        problems += _check_stats(store)
    return problems


def verify_notes(path: str | Path) -> list[str]:
    """What ``verify`` could not check, e.g. a store written before shard checksums were recorded."""
    try:
        store = TileStore(path, allow_incomplete=True, check=False)
    except StoreError:
        return []
    if store.checksummed:
        return []
    return [
        "no checksums recorded (written by an earlier domainfm that did not store them): damaged or swapped "
        "tile shards "
        "and damaged index chunks may go unnoticed; rebuild it (rerun the ingest command with --overwrite) to "
        "add them"
    ]


def _check_stats(store: TileStore) -> list[str]:
    stats = store.stats
    if stats and len(store) and sum(stats["count"]) == 0:
        return ["normalisation statistics are empty"]
    return []
