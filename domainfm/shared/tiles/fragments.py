"""Per-source staging fragments: where ingest writes each source before the store is assembled.

A fragment is ``STORE/_staging/<key>/``: a folder ``data`` with one ``.npy`` file per batch and array
(memory bounded by the reader's batch size), a ``progress`` file with the tiles written so far, and ``status.json``,
written atomically as the very last step, saying ``done`` (with the tile count, statistics and source
fingerprint) or ``failed`` (with the error). A fragment without ``status.json`` was interrupted and is
redone from scratch on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.shared.tiles.schema import INDEX_COLUMNS, INDEX_DEFAULTS, TEXT, StoreSpec, TileBatch
from domainfm.shared.tiles.stats import RunningStats

Reader = Callable[[Path], Iterator[TileBatch]]
HEAD_BYTES = 2**20
_kill_lock = threading.Lock()
_kill_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    """Test hook: ``DOMAINFM_TEST_KILL_AT=name:n`` SIGKILLs this process the n-th time ``name`` is reached."""
    target = os.environ.get("DOMAINFM_TEST_KILL_AT", "")
    if not target.startswith(name + ":"):
        return
    with _kill_lock:
        _kill_counts[name] = _kill_counts.get(name, 0) + 1
        if _kill_counts[name] == int(target.split(":", 1)[1]):
            os.kill(os.getpid(), 9)


def fingerprint(path: Path, resolved: str | None = None, keep: bool = False) -> dict[str, Any]:
    """Identity of a source file: absolute path, size, mtime and the SHA-256 of its first MiB.

    ``resolved`` is the path already resolved (saves the lookups). With ``keep``, a file read whole (at
    most ``HEAD_BYTES``) stays available to its reader in this thread (:func:`source_bytes`), so a small
    file is read once, and its reader decodes the very bytes that were fingerprinted.
    """
    stat = path.stat()
    with open(path, "rb") as handle:
        data = handle.read(HEAD_BYTES)
    head = hashlib.sha256(data).hexdigest()
    _kept.value = (str(path), data) if keep and len(data) == stat.st_size < HEAD_BYTES else None
    path_text = resolved if resolved is not None else str(path.resolve())
    return {"path": path_text, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_head": head}


_kept = threading.local()


def source_bytes(path: str | Path) -> bytes | None:
    """The whole file ``path`` as the ingest engine just read it for its fingerprint, else ``None``.

    Readers of small files (pictures, DICOMs) decode these bytes instead of reading the file again.
    """
    kept = getattr(_kept, "value", None)
    return kept[1] if kept is not None and kept[0] == str(path) else None


def forget_source_bytes() -> None:
    """Drops the bytes :func:`fingerprint` kept (once their source is staged)."""
    _kept.value = None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Writes JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_status(fragment: Path) -> dict[str, Any] | None:
    """The fragment's final status, or ``None`` if it never finished."""
    try:
        return json.loads((fragment / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_progress(fragment: Path) -> int:
    """Tiles written so far by a running fragment."""
    try:
        return int((fragment / "progress").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


class FragmentWriter:
    """Appends reader batches to a fragment as plain ``.npy`` files and keeps their statistics.

    Each batch becomes one file per array (``data/<key>/<batch>.npy``; text as fixed-width unicode, never
    pickled): a write is one buffered copy, without a chunk codec or per-array bookkeeping, so staging
    costs a fraction of what reading the source costs. The batch sizes go into ``status.json``.
    """

    def __init__(self, fragment: Path, spec: StoreSpec) -> None:
        self.fragment, self.spec, self.n = fragment, spec, 0
        self.stats = RunningStats(spec.tile_shape[0])
        self.batches: list[int] = []
        self.keys = staging_keys(spec)
        for key in self.keys:
            (fragment / "data" / key).mkdir(parents=True, exist_ok=True)

    def append(self, batch: TileBatch, source_row: int) -> None:
        """Writes one batch (validated against the spec) and updates the statistics."""
        data = batch_arrays(self.spec, batch, source_row)
        if data is None:  # e.g. a batch that only carries source_meta
            return
        number = len(self.batches)
        for key, values in data.items():
            np.save(self.fragment / "data" / key / f"{number:06d}.npy", np.ascontiguousarray(values))
        self.stats.update(data["tiles"], batch.valid)
        self.batches.append(len(data["tiles"]))
        self.n += len(data["tiles"])
        (self.fragment / "progress").write_text(str(self.n))
        kill_point("batch")


def staging_keys(spec: StoreSpec) -> list[str]:
    """The arrays a staging folder holds: tiles, every index column and every companion."""
    return ["tiles", *[f"index/{k}" for k in INDEX_COLUMNS], *[f"companions/{k}" for k in spec.companions]]


def _validate(spec: StoreSpec, batch: TileBatch, tiles: np.ndarray) -> None:
    if tiles.shape[1:] != spec.tile_shape:
        raise ValueError(f"reader gave tiles of shape {tiles.shape[1:]}, the store holds {spec.tile_shape}")
    for name in batch.index:
        if name not in INDEX_COLUMNS or name == "source":
            raise ValueError(f"reader gave unknown index column {name!r}; columns: {list(INDEX_COLUMNS)[1:]}")
    missing = set(spec.companions) - set(batch.companions)
    if missing or set(batch.companions) - set(spec.companions):
        raise ValueError(
            f"reader gave companions {sorted(batch.companions)}, the store expects {sorted(spec.companions)}"
        )
    target = np.dtype(spec.dtype)
    if tiles.dtype != target and not np.can_cast(tiles.dtype, target, "same_kind"):
        raise ValueError(f"reader gave {tiles.dtype} tiles; the store holds {target} (convert them in the reader)")
    if tiles.dtype.kind in "iu" and target.kind in "iu" and tiles.size and not np.can_cast(tiles.dtype, target):
        info = np.iinfo(target)
        if tiles.min() < info.min or tiles.max() > info.max:
            raise ValueError(f"reader gave values outside the {target} range [{info.min}, {info.max}]")


def batch_arrays(spec: StoreSpec, batch: TileBatch, source_row: int) -> dict[str, np.ndarray] | None:
    """One reader batch as the staged arrays (:func:`staging_keys`), validated against ``spec``.

    ``None`` for a batch without tiles (one that only carries ``source_meta``); raises ``ValueError``
    naming what the reader got wrong (shape, index column, companion, dtype or value range).
    """
    tiles = np.asarray(batch.tiles)
    n = len(tiles)
    if n == 0:
        if tiles.ndim > 1 and tiles.shape[1:] != spec.tile_shape:
            raise ValueError(f"reader gave tiles of shape {tiles.shape[1:]}, the store holds {spec.tile_shape}")
        return None
    _validate(spec, batch, tiles)
    columns = {name: np.full(n, INDEX_DEFAULTS[name], dtype) for name, dtype in INDEX_COLUMNS.items()}
    columns["source"][:] = source_row
    for name, values in batch.index.items():
        columns[name][:] = values
    data = {"tiles": tiles.astype(np.dtype(spec.dtype), copy=False)}
    data.update({f"index/{k}": v for k, v in columns.items()})
    for name, values in batch.companions.items():
        companion = spec.companions[name]
        array = np.asarray(values, dtype=str if companion.dtype == TEXT else companion.dtype)
        if array.shape != (n, *companion.shape):
            raise ValueError(f"companion {name!r} has shape {array.shape}, expected {(n, *companion.shape)}")
        data[f"companions/{name}"] = array
    return data


def read_fragment_rows(fragment: Path, batches: list[int], key: str, start: int, stop: int) -> list[np.ndarray]:
    """Rows ``[start, stop)`` of ``key`` in a finished fragment (memory-mapped reads of the batch files)."""
    parts, offset = [], 0
    for number, count in enumerate(batches):
        lo, hi = max(start, offset), min(stop, offset + count)
        if lo < hi:
            array = np.load(fragment / "data" / key / f"{number:06d}.npy", mmap_mode="r", allow_pickle=False)
            parts.append(np.asarray(array[lo - offset : hi - offset]))
        offset += count
    return parts


def ingest_source(
    path: str, source_row: int, fragment: str, spec_attrs: dict, reader: Reader, reader_id: list[str] | None = None
) -> dict[str, Any]:
    """Tiles one source into its fragment; never raises: a failure is recorded in ``status.json``."""
    fragment_dir, source = Path(fragment), Path(path)
    shutil.rmtree(fragment_dir, ignore_errors=True)
    fragment_dir.mkdir(parents=True)
    spec = StoreSpec.from_attrs(spec_attrs)
    try:
        identity = fingerprint(source)
        writer = FragmentWriter(fragment_dir, spec)
        meta: dict[str, Any] = {}
        for batch in reader(source):
            meta.update(batch.source_meta or {})
            writer.append(batch, source_row)
        status = {"status": "done", "n_tiles": writer.n, "stats": writer.stats.to_dict(), "fingerprint": identity}
        status.update(meta=meta, batches=writer.batches)
    except Exception as error:  # any reader failure: record it, let the other sources continue
        try:
            identity = fingerprint(source)
        except OSError:
            identity = {"path": str(source)}
        status = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
            "fingerprint": identity,
        }
    status["reader"] = reader_id
    write_json_atomic(fragment_dir / "status.json", status)
    kill_point("source")
    return status
