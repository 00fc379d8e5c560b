"""TileStore: open, create and read a zarr v3 tile store (schema in :mod:`.schema`)."""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from domainfm import __version__
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.layout import TileLayout, compressors_for
from domainfm.shared.tiles.schema import INDEX_COLUMNS, INDEX_DEFAULTS, SCHEMA_VERSION, TEXT, StoreSpec
from domainfm.shared.tiles.shards import ShardDecoder, shard_file

INDEX_CHUNK = 65536
# Every chunk is written, even all-zero ones, so a missing chunk is always corruption (zarr would read it as
# zeros). ARRAY_CONFIG applies at creation, WRITE_ALL_CHUNKS (a zarr.config context) to later writers.
ARRAY_CONFIG = {"write_empty_chunks": True}
WRITE_ALL_CHUNKS = {"array.write_empty_chunks": True}


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
        )
    # Companion chunks never straddle a tile shard: assembly writes each shard's rows from its own task,
    # and two tasks writing one chunk would lose rows.
    for name, companion in spec.companions.items():
        text = companion.dtype == TEXT
        per_tile = 0 if text else int(np.prod(companion.shape)) * np.dtype(companion.dtype).itemsize
        codecs = {} if text else {"compressors": compressors_for(companion.dtype, layout.codec)}
        group.create_array(
            f"companions/{name}",
            shape=(n_tiles, *companion.shape),
            dtype=str if text else companion.dtype,
            chunks=(chunk_rows if per_tile > 4096 else shard_rows, *companion.shape),
            overwrite=True,
            config=ARRAY_CONFIG,
            **codecs,
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
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
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

    @cached_property
    def index(self) -> dict[str, np.ndarray]:
        """All index columns, loaded once (a few bytes per tile)."""
        return {name: self.group[f"index/{name}"][:] for name in INDEX_COLUMNS}

    def companion(self, name: str) -> zarr.Array:
        """A companion array keyed by tile id."""
        if name not in self.spec.companions:
            raise StoreError(
                f"{self.path} has no companion {name!r} (has: {', '.join(self.spec.companions) or 'none'})"
            )
        return self.group[f"companions/{name}"]

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

    def read_shard(self, shard: int) -> np.ndarray:
        """Decodes one whole shard; a missing or corrupt shard is an error (zarr would return zeros)."""
        start, stop = self.shard_ranges()[shard]
        if self._shard_decoder.supported:
            return self._shard_decoder.decode(self._existing_shard_file(shard), stop - start)
        self._existing_shard_file(shard)
        return self.tiles[start:stop]

    def iter_shard_rows(self, shard: int, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decodes the given rows (local to the shard) chunk by chunk; see ``ShardDecoder.iter_rows``."""
        if self._shard_decoder.supported:
            yield from self._shard_decoder.iter_rows(self._existing_shard_file(shard), rows)
        else:
            yield np.arange(len(rows)), self.read_shard(shard), rows

    def _existing_shard_file(self, shard: int) -> Path:
        path = self.shard_file(shard)
        if not path.is_file():
            start, stop = self.shard_ranges()[shard]
            raise StoreError(
                f"{self.path}: shard {shard} (tiles {start}-{stop - 1}) is missing; run `domainfm tiles verify`"
            )
        return path

    def read(self, indices: np.ndarray | list[int], companions: tuple[str, ...] = ()) -> dict[str, Any]:
        """Tiles, index rows and companions of the given tile ids (any order)."""
        indices = np.asarray(indices, dtype=np.int64)
        out: dict[str, Any] = {"tiles": self.tiles.get_orthogonal_selection((indices,))}
        out.update({name: column[indices] for name, column in self.index.items()})
        for name in companions:
            out[name] = self.companion(name).get_orthogonal_selection((indices,))
        return out
