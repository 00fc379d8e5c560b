"""TileStore: open, create and read a zarr v3 tile store (schema in :mod:`.schema`).

Integrity: the index, companion and checksum arrays carry zarr's ``crc32c`` codec (each chunk is checked
whenever it is decoded); every tile shard file's CRC-32C is recorded by position in ``checksums/tiles``
(so a changed, damaged or swapped shard file is detected), checked by ``tiles verify`` and by the first
read of each shard file (``verify_reads``; remembered across processes by the file's identity,
:mod:`.stamps`). Opening a finished store checks
cheaply that its arrays, index, sources table and shard files agree, and refuses, naming the problem,
when they do not.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from domainfm import __version__
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.layout import TileLayout, compressors_for
from domainfm.shared.tiles.schema import INDEX_COLUMNS, INDEX_DEFAULTS, SCHEMA_VERSION, TEXT, StoreSpec
from domainfm.shared.tiles.shards import ShardCorruptError, ShardDecoder, shard_file
from domainfm.shared.tiles.stamps import VerificationStamps

INDEX_CHUNK = 65536
# Every chunk is written, even all-zero ones, so a missing chunk is always corruption (zarr would read it as
# zeros). ARRAY_CONFIG applies at creation, WRITE_ALL_CHUNKS (a zarr.config context) to later writers.
ARRAY_CONFIG = {"write_empty_chunks": True}
WRITE_ALL_CHUNKS = {"array.write_empty_chunks": True}
CHECKSUMS = "checksums/tiles"  # [n_shards] uint32: CRC-32C of each tile shard file, by shard number
VERIFY_READS = ("once", "always", "off")
REBUILD = "rebuild it: rerun the ingest command with --overwrite"
_verified_lock = threading.Lock()
_verified: set[tuple] = set()  # (file, inode, size, mtime_ns, crc) of shard files checked by this process


def _checked_codecs(compressors: list) -> list:
    """``compressors`` followed by zarr's ``crc32c`` codec: every chunk carries its checksum."""
    from zarr.codecs import Crc32cCodec

    return [*compressors, Crc32cCodec()]


def _index_compressors() -> list:
    from zarr.codecs import ZstdCodec

    return _checked_codecs([ZstdCodec(level=0)])


def forget_verified() -> None:
    """Forgets which shard files this process has checked (the next read of each checks it again)."""
    with _verified_lock:
        _verified.clear()


class StoreError(DomainfmError):
    """A tile store is missing, incomplete or does not follow the schema."""


def create_arrays(group: zarr.Group, spec: StoreSpec, n_tiles: int, layout: TileLayout) -> None:
    """Creates (overwriting) the tiles, index and companion arrays of a store of ``n_tiles`` tiles."""
    shard_rows = max(1, min(layout.tiles_per_shard, n_tiles))
    chunk_rows = min(layout.tiles_per_chunk, shard_rows)
    shard_rows -= shard_rows % chunk_rows
    group.create_array(
        "tiles",
        shape=(n_tiles, *spec.tile_shape),
        dtype=spec.dtype,
        chunks=(chunk_rows, *spec.tile_shape),
        shards=(shard_rows, *spec.tile_shape),
        compressors=compressors_for(spec.dtype, layout.codec),
        dimension_names=("tile", "channel", "y", "x"),
        overwrite=True,
        config=ARRAY_CONFIG,
    )
    rows = max(1, min(INDEX_CHUNK, n_tiles))
    for name, dtype in INDEX_COLUMNS.items():
        group.create_array(
            f"index/{name}",
            shape=(n_tiles,),
            dtype=dtype,
            chunks=(rows,),
            overwrite=True,
            config=ARRAY_CONFIG,
            fill_value=INDEX_DEFAULTS[name],
            compressors=_index_compressors(),
        )
    # Companion chunks never straddle a tile shard: assembly writes each shard's rows from its own task,
    # and two tasks writing one chunk would lose rows.
    for name, companion in spec.companions.items():
        text = companion.dtype == TEXT
        per_tile = 0 if text else int(np.prod(companion.shape)) * np.dtype(companion.dtype).itemsize
        compressors = _index_compressors() if text else _checked_codecs(compressors_for(companion.dtype, layout.codec))
        group.create_array(
            f"companions/{name}",
            shape=(n_tiles, *companion.shape),
            dtype=str if text else companion.dtype,
            chunks=(chunk_rows if per_tile > 4096 else shard_rows, *companion.shape),
            overwrite=True,
            config=ARRAY_CONFIG,
            compressors=compressors,
        )
    group.create_array(
        CHECKSUMS,
        shape=(-(-n_tiles // shard_rows),),
        dtype="uint32",
        chunks=(max(1, min(INDEX_CHUNK, -(-n_tiles // shard_rows))),),
        overwrite=True,
        config=ARRAY_CONFIG,
        compressors=_checked_codecs([]),
    )


def initial_attrs(spec: StoreSpec, layout: TileLayout) -> dict[str, Any]:
    """Group attributes of a store whose ingest has just started."""
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "ingesting",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "domainfm_version": __version__,
        "layout": layout.to_dict(),
        **spec.to_attrs(),
    }


class TileStore:
    """A complete tile store opened for reading.

    Args:
        path: The store folder.
        allow_incomplete: Open a store whose ingest has not finished (for ``tiles verify``/``inspect``).
        check: Check on opening a finished store that its arrays, index, sources and shard files agree
            (cheap: metadata, the ``index/source`` column and a ``stat`` per shard); ``tiles verify``
            turns it off to list every problem instead of the first.
        verify_reads: ``once`` (default): check each shard file against its recorded CRC-32C the first
            time it is read, by this process or any other (stamps in the store, :mod:`.stamps`; again as
            soon as the file's inode, size, modification or change time differ); ``always``: on every
            read; ``off``: never (``tiles verify`` still checks everything).
    """

    def __init__(
        self, path: str | Path, allow_incomplete: bool = False, check: bool = True, verify_reads: str = "once"
    ) -> None:
        self.path = Path(path)
        if verify_reads not in VERIFY_READS:
            raise ValueError(f"verify_reads must be one of {VERIFY_READS}, got {verify_reads!r}")
        self.verify_reads = verify_reads
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"{self.path} is not a tile store (no zarr.json); create one with an ingest command")
        try:
            self.group = zarr.open_group(self.path, mode="r")
        except Exception as error:  # zarr raises several types for unreadable metadata
            raise StoreError(f"{self.path}: unreadable zarr group metadata ({error})") from error
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        version = self.attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version!r}, this domainfm reads version {SCHEMA_VERSION}; "
                "re-ingest the sources with this version"
            )
        status = self.attrs.get("status")
        if status == "partial" and not allow_incomplete:
            failed = [s["path"] for s in self.attrs.get("sources", []) if s.get("status") != "done"]
            warnings.warn(f"{self.path}: sources failed during ingest and are missing: {failed}", stacklevel=2)
        elif status not in ("complete", "partial") and not allow_incomplete:
            raise StoreError(
                f"{self.path}: ingest has not finished (status {status!r}); rerun the same "
                "ingest command to resume it, or `domainfm tiles inspect` to see what is there"
            )
        try:
            self.spec = StoreSpec.from_attrs(self.attrs)
        except (KeyError, TypeError, ValueError) as error:
            raise StoreError(f"{self.path}: group attributes do not follow the tile-store schema ({error})") from error
        if check and status in ("complete", "partial"):
            problems = self.consistency_problems()
            if problems:
                raise StoreError(
                    f"{self.path} is inconsistent: "
                    + "; ".join(problems)
                    + f". Run `domainfm tiles verify {self.path}`"
                    f" for the full list, then {REBUILD}"
                )

    @cached_property
    def tiles(self) -> zarr.Array:
        """The ``[N, C, H, W]`` tile array."""
        try:
            return self.group["tiles"]
        except KeyError:
            raise StoreError(f"{self.path}: the 'tiles' array is missing") from None

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def layout(self) -> TileLayout:
        """Chunking and codec of the tile array."""
        return TileLayout(**self.attrs["layout"])

    @property
    def sources(self) -> list[dict[str, Any]]:
        """The sources table: path, size, mtime, hash, reader, status, error, n_tiles."""
        return list(self.attrs.get("sources", []))

    @property
    def stats(self) -> dict[str, Any]:
        """Per-channel normalisation statistics computed while writing (count, mean, std, min, max)."""
        return dict(self.attrs.get("stats") or {})

    @property
    def recorded_tiles(self) -> int:
        """The tile count the attributes record (``n_tiles``, or the sum over finished sources)."""
        if "n_tiles" in self.attrs:
            return int(self.attrs["n_tiles"])
        return sum(int(s.get("n_tiles") or 0) for s in self.sources if s.get("status") == "done")

    def _array(self, name: str) -> zarr.Array:
        try:
            return self.group[name]
        except KeyError:
            raise StoreError(f"{self.path}: the array {name!r} is missing; {REBUILD}") from None

    def _decoded(self, name: str, selection: Any = slice(None)) -> np.ndarray:
        """``array[selection]``, a failed chunk checksum or codec reported by the array's name."""
        array = self._array(name)
        try:
            return array[selection]
        except (ValueError, RuntimeError, OSError) as error:  # crc32c mismatch, codec and truncation errors
            raise StoreError(f"{self.path}: {name} is corrupt ({error}); {REBUILD}") from error

    @cached_property
    def index(self) -> dict[str, np.ndarray]:
        """All index columns, loaded once (a few bytes per tile)."""
        return {name: self._decoded(f"index/{name}") for name in INDEX_COLUMNS}

    @cached_property
    def checksummed(self) -> bool:
        """Whether the store records shard checksums (stores written before they were introduced do not)."""
        try:
            self.group[CHECKSUMS]
        except KeyError:
            return False
        return True

    @cached_property
    def shard_checksums(self) -> np.ndarray | None:
        """CRC-32C of each tile shard file, by shard number; ``None`` for a store without them."""
        return self._decoded(CHECKSUMS).astype(np.int64) if self.checksummed else None

    def consistency_problems(self) -> list[str]:
        """Cheap agreement checks of a finished store: shapes, recorded counts, index/source, shard files."""
        problems: list[str] = []
        try:
            tiles = self.tiles
        except StoreError as error:
            return [str(error)]
        n = int(tiles.shape[0])
        if n != self.recorded_tiles:
            problems.append(f"the tiles array holds {n} tiles, the attributes record {self.recorded_tiles}")
        if tuple(tiles.shape[1:]) != self.spec.tile_shape or str(tiles.dtype) != self.spec.dtype:
            problems.append(
                f"tiles are {tuple(tiles.shape[1:])} {tiles.dtype}; attributes say {self.spec.tile_shape} "
                f"{self.spec.dtype}"
            )
        names = [f"index/{c}" for c in INDEX_COLUMNS] + [f"companions/{c}" for c in self.spec.companions]
        for name in names:
            try:
                rows = self.group[name].shape[0]
            except KeyError:
                problems.append(f"the array {name} is missing")
                continue
            if rows != n:
                problems.append(f"{name} has {rows} rows for {n} tiles")
        if problems:
            return problems
        try:
            source = self._decoded("index/source")
        except StoreError as error:
            return [str(error)]
        table = self.sources
        if n:
            low, high = int(source.min()), int(source.max())
            if low < 0 or high >= len(table):
                problems.append(
                    f"index/source refers to source rows {low}-{high}; the sources table has {len(table)} rows"
                )
            else:
                counts = np.bincount(source, minlength=len(table))
                for row, entry in enumerate(table):
                    if counts[row] != int(entry.get("n_tiles") or 0) or (counts[row] and entry.get("status") != "done"):
                        problems.append(
                            f"source row {row} ({entry.get('path')}, {entry.get('status')}): {counts[row]} tiles in "
                            f"the index, {entry.get('n_tiles')} recorded"
                        )
        ranges = self.shard_ranges()
        missing = [shard for shard in range(len(ranges)) if not self.shard_file(shard).is_file()]
        if missing:
            problems.append(f"tile shard files missing: {_shard_list(missing)} (under {self.path / 'tiles' / 'c'})")
        if self.checksummed:
            recorded = self._array(CHECKSUMS).shape[0]
            if recorded != len(ranges):
                problems.append(f"{CHECKSUMS} holds {recorded} checksums for {len(ranges)} tile shards")
        return problems

    def companion(self, name: str) -> zarr.Array:
        """A companion array keyed by tile id."""
        if name not in self.spec.companions:
            raise StoreError(
                f"{self.path} has no companion {name!r} (has: {', '.join(self.spec.companions) or 'none'})"
            )
        return self._array(f"companions/{name}")

    def read_companion(self, name: str, selection: Any) -> np.ndarray:
        """``companion(name)[selection]``; a corrupt chunk is a :class:`StoreError` naming the array."""
        self.companion(name)
        return self._decoded(f"companions/{name}", selection)

    @property
    def shard_rows(self) -> int:
        """Tiles per shard of the tile array (the unit of reading and writing)."""
        return int(self.tiles.shards[0]) if self.tiles.shards else int(self.tiles.chunks[0])

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[(start, stop)]`` of every shard, in order."""
        rows, n = self.shard_rows, len(self)
        return [(start, min(start + rows, n)) for start in range(0, n, rows)]

    def shard_file(self, shard: int) -> Path:
        """The file holding shard ``shard`` of the tile array (zarr's default chunk key encoding)."""
        return shard_file(self.path / "tiles", shard, self.tiles.ndim)

    @cached_property
    def _shard_decoder(self) -> ShardDecoder:
        return ShardDecoder(self.tiles)

    def _expected_crc(self, shard: int, path: Path, force: bool = False) -> tuple[int | None, tuple | None]:
        """``(crc, key)`` to check ``path`` against, or ``(None, None)`` when it needs no check now.

        With ``verify_reads="once"`` a file needs no check when this process, or any process through the
        store's verification stamps (:mod:`.stamps`), checked it in full and its ``stat`` is unchanged since.
        """
        checksums = self.shard_checksums
        if checksums is None or (self.verify_reads == "off" and not force):
            return None, None
        started = time.time_ns()
        stat = os.stat(path)
        crc = int(checksums[shard])
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, crc)
        if self.verify_reads == "once" and not force:
            if key in _verified:
                return None, None
            if self._stamps.holds(path, stat, crc):
                with _verified_lock:
                    _verified.add(key)
                return None, None
        return crc, (*key, stat, started)

    @cached_property
    def _stamps(self) -> VerificationStamps:
        return VerificationStamps(self.path)

    def _mark_verified(self, key: tuple | None) -> None:
        """Records a passed full check of the file in ``key`` (:meth:`_expected_crc`), here and in the store."""
        if key is None:
            return
        with _verified_lock:
            _verified.add(key[:5])
        path, crc, stat, started = key[0], key[4], key[5], key[6]
        self._stamps.record(Path(path), stat, crc, started)

    def check_shard(self, shard: int) -> None:
        """Checks one shard file in full against its recorded CRC-32C (no-op for a store without them)."""
        path = self._existing_shard_file(shard)
        expected, key = self._expected_crc(shard, path, force=True)
        if expected is not None:
            from domainfm.shared.tiles.shards import file_crc32c

            actual = file_crc32c(path)
            if actual != expected:
                raise ShardCorruptError(
                    f"shard file {path} does not match its recorded checksum (crc32c {actual:08x}, recorded "
                    f"{expected:08x}): it was changed, damaged or swapped with another shard; {REBUILD}"
                )
            self._mark_verified(key)

    def read_shard(self, shard: int) -> np.ndarray:
        """Decodes one whole shard; a missing, changed or corrupt shard is an error (zarr would return zeros)."""
        start, stop = self.shard_ranges()[shard]
        path = self._existing_shard_file(shard)
        if self._shard_decoder.supported:
            expected, key = self._expected_crc(shard, path)
            out = self._shard_decoder.decode(path, stop - start, expected)
            self._mark_verified(key)
            return out
        self._verify_once(shard)
        return self.tiles[start:stop]

    def _verify_once(self, shard: int) -> None:
        path = self._existing_shard_file(shard)
        expected, _ = self._expected_crc(shard, path)
        if expected is not None:
            self.check_shard(shard)

    def copy_shard_rows(self, shard: int, rows: np.ndarray, targets: list[np.ndarray]) -> None:
        """Copies row ``rows[i]`` (local to the shard) into ``targets[i]``; see ``ShardDecoder.copy_rows``.

        The shard file's checksum (``verify_reads``) is computed on the way and checked before this returns:
        on a mismatch it raises, and the caller must not use what was copied.
        """
        if self._shard_decoder.supported:
            path = self._existing_shard_file(shard)
            expected, key = self._expected_crc(shard, path)
            self._shard_decoder.copy_rows(path, rows, targets, expected)
            self._mark_verified(key)
        else:
            tiles = self.read_shard(shard)
            for target, row in zip(targets, rows.tolist(), strict=True):
                target[...] = tiles[row]

    def _existing_shard_file(self, shard: int) -> Path:
        path = self.shard_file(shard)
        if not path.is_file():
            start, stop = self.shard_ranges()[shard]
            raise StoreError(
                f"{self.path}: shard {shard} (tiles {start}-{stop - 1}) is missing; run `domainfm tiles verify`"
            )
        return path

    def read(self, indices: np.ndarray | list[int], companions: tuple[str, ...] = ()) -> dict[str, Any]:
        """Tiles, index rows and companions of the given tile ids (any order).

        The shards holding them are checked against their recorded checksums first (``verify_reads``).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and self.shard_checksums is not None and self.verify_reads != "off":
            for shard in np.unique(indices // self.shard_rows).tolist():
                self._verify_once(shard)
        try:
            out: dict[str, Any] = {"tiles": self.tiles.get_orthogonal_selection((indices,))}
        except (ValueError, RuntimeError) as error:
            raise StoreError(f"{self.path}: tiles are corrupt ({error}); {REBUILD}") from error
        out.update({name: column[indices] for name, column in self.index.items()})
        for name in companions:
            self.companion(name)
            array = self._array(f"companions/{name}")
            try:
                out[name] = array.get_orthogonal_selection((indices,))
            except (ValueError, RuntimeError) as error:
                raise StoreError(f"{self.path}: companions/{name} is corrupt ({error}); {REBUILD}") from error
        return out


def _shard_list(shards: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, shards[:limit]))
    return shown + (f" and {len(shards) - limit} more" if len(shards) > limit else "")
