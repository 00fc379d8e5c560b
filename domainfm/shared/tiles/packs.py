"""Shared staging packs: many sources staged together, so that per-source overhead vanishes.

A pack is ``STORE/_staging/<pack>/``, written by one ingest task for a run of consecutive sources: the
tiles of those sources buffered in memory and flushed, about every ``FLUSH_BYTES`` (or at every whole
shard, :class:`PackWriter`), as one file per array: the tiles raw (``data/tiles/<flush>.raw``), the
others as ``.npy`` (``data/<key>/<flush>.npy``, :func:`.fragments.staging_keys`). Each flush then appends
one line to ``journal.jsonl``: the number of rows the flush wrote, the CRC-32C of its tile file, and an
entry for every finished source whose rows are all written (``done`` with its first row in the pack, tile
count, exact statistics, input fingerprint and reader metadata, or ``failed`` with the error). A source
counts as staged only once its line is in the journal, and its rows were written before the line, so a
kill at any moment leaves every journalled source complete: a rerun keeps them and redoes only the rest
(at most one flush of work per task is lost). A half-written last line (a kill during the append) is
ignored. A new run never appends to an old pack; it writes new ones, named by time so that later packs
sort after earlier ones.

Per source this costs one fingerprint (a stat and the SHA-256 of the first MiB, docs/reliability.md; a
small file's bytes are kept for its reader, :func:`.fragments.source_bytes`, so it is read once) and a
few dictionary entries, instead of a folder of ~10 arrays and a status file: what is left per small
file is its reader's work (``domainfm bench ingest``, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c as _crc32c
import numpy as np

from domainfm.shared.tiles.fragments import (
    Reader,
    batch_arrays,
    fingerprint,
    forget_source_bytes,
    kill_point,
    staging_keys,
)
from domainfm.shared.tiles.layout import choose_layout
from domainfm.shared.tiles.schema import StoreSpec
from domainfm.shared.tiles.stats import RunningStats

JOURNAL = "journal.jsonl"
PROGRESS = "progress"
FLUSH_BYTES = 32 * 2**20  # buffered tile bytes per flush: a few hundred small images, a shard or two of a slide
MAX_PACK_SOURCES = 512  # sources per pack (one ingest task)
PACK_SOURCE_BYTES = 64 * 2**20  # source-file bytes per pack: a large file (a slide) gets a pack of its own
PROGRESS_SECONDS = 0.25


@dataclass(frozen=True)
class Staged:
    """A journalled source: its pack, the pack's rows per flush, and its journal entry.

    ``crcs`` holds the CRC-32C of each flush's raw tile file (``None`` for a flush without one).
    """

    pack: Path
    batches: list[int]
    entry: dict[str, Any]
    crcs: tuple[int | None, ...] = ()

    @property
    def start(self) -> int:
        """The source's first row in the pack."""
        return int(self.entry["start"])


class PackWriter:
    """Buffers reader batches of several sources and flushes them, with their journal entries, in bulk.

    Tiles are flushed as raw bytes (``data/tiles/<flush>.raw``, the rows in order, no header) with their
    CRC-32C in the journal line; the other arrays as ``.npy``. Where the store keeps tiles uncompressed
    in single bytes and a shard fits in ``FLUSH_BYTES``, every flush holds exactly one shard's rows
    (``shard_rows``): a flush that lands on a whole shard of the store (a pack that starts at a shard
    boundary: the first pack, so every shard of a one-slide run) is then that shard's data, byte for byte,
    and assembly links it into the store instead of copying it (:mod:`.assembly`).
    """

    def __init__(self, pack: Path, spec: StoreSpec) -> None:
        self.pack, self.spec = pack, spec
        for key in staging_keys(spec):
            (pack / "data" / key).mkdir(parents=True, exist_ok=True)
        self.flushed_rows = 0  # rows in flushed files
        self.files = 0
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered_rows = self.buffered_bytes = 0
        self.pending: list[dict[str, Any]] = []
        self.tiles = self.sources = 0
        self.last_progress = 0.0
        self.shard_rows = shard_rows_of(spec)

    @property
    def row(self) -> int:
        """The pack row the next appended tile gets."""
        return self.flushed_rows + self.buffered_rows

    def mark(self) -> int:
        """Where a source begins (its first pack row), for :meth:`discard`."""
        return self.row

    def discard(self, mark: int) -> None:
        """Drops the buffered rows of a source that failed (rows already flushed stay, never referenced)."""
        keep = max(0, mark - self.flushed_rows)
        self.tiles -= self.buffered_rows - keep
        self.buffer = [_rows(self.buffer, 0, keep)] if keep else []
        self.buffered_rows = keep
        self.buffered_bytes = sum(d["tiles"].nbytes for d in self.buffer)

    def append(self, data: dict[str, np.ndarray]) -> None:
        """Buffers one batch of staged arrays (:func:`.fragments.batch_arrays`); flushes at ``FLUSH_BYTES``.

        Or at every whole shard (see the class docstring). A large source (a slide) is so flushed part by
        part: memory stays bounded whatever its size.
        """
        self.buffer.append(data)
        self.buffered_rows += len(data["tiles"])
        self.buffered_bytes += data["tiles"].nbytes
        self.tiles += len(data["tiles"])
        kill_point("batch")
        if self.shard_rows:
            while self.buffered_rows >= self.shard_rows:
                self.flush(self.shard_rows)
        elif self.buffered_bytes >= FLUSH_BYTES:
            self.flush()

    def finish(self, entry: dict[str, Any]) -> None:
        """Records a finished source (journalled at the next flush that holds its last row)."""
        self.pending.append(entry)
        self.sources += 1
        if time.monotonic() - self.last_progress > PROGRESS_SECONDS:
            self._progress()

    def flush(self, rows: int | None = None) -> None:
        """Writes the first ``rows`` buffered rows (all by default) as one file per array, then a journal line.

        The line names the finished sources whose rows are all written.
        """
        number, rows = self.files, self.buffered_rows if rows is None else rows
        line: dict[str, Any] = {"file": number, "rows": rows}
        if rows:
            data = _rows(self.buffer, 0, rows)
            line["crc"] = _write_raw(self.pack / "data" / "tiles" / f"{number:06d}{RAW_SUFFIX}", data["tiles"])
            for key, values in data.items():
                if key != "tiles":
                    np.save(self.pack / "data" / key / f"{number:06d}.npy", np.ascontiguousarray(values))
        self.files += 1
        self.flushed_rows += rows
        done = 0
        while done < len(self.pending) and _end(self.pending[done]) <= self.flushed_rows:
            done += 1
        line["sources"], self.pending = self.pending[:done], self.pending[done:]
        with open(self.pack / JOURNAL, "a") as journal:
            journal.write(json.dumps(line) + "\n")
        self.buffer = [_rows(self.buffer, rows, self.buffered_rows)] if rows < self.buffered_rows else []
        self.buffered_rows -= rows
        self.buffered_bytes = sum(d["tiles"].nbytes for d in self.buffer)
        self._progress()
        for _ in range(done):
            kill_point("source")

    def _progress(self) -> None:
        (self.pack / PROGRESS).write_text(f"{self.tiles} {self.sources}")
        self.last_progress = time.monotonic()


RAW_SUFFIX = ".raw"


def shard_rows_of(spec: StoreSpec) -> int:
    """Rows per flush that make flushes whole shards of the store, or 0 where that does not apply.

    Applies to uncompressed single-byte tiles (the layout assembly writes byte for byte) whose shard fits in
    ``FLUSH_BYTES``.
    """
    if spec.codec != "none" or np.dtype(spec.dtype).itemsize != 1:
        return 0
    layout = choose_layout(spec.tile_shape, spec.dtype, spec.codec)
    tile_bytes = int(np.prod(spec.tile_shape))
    return layout.tiles_per_shard if layout.tiles_per_shard * tile_bytes <= FLUSH_BYTES else 0


def _end(entry: dict[str, Any]) -> int:
    """The pack row after a journal entry's last row (0 for a failed source: it has no rows)."""
    return int(entry["start"]) + int(entry["n_tiles"]) if entry.get("status") == "done" else 0


def _rows(buffer: list[dict[str, np.ndarray]], start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of the buffered batches, per array (a view where they lie in one batch)."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in buffer[0]}
    offset = 0
    for data in buffer:
        n = len(data["tiles"])
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            for key, values in data.items():
                parts[key].append(values[lo - offset : hi - offset])
        offset += n
    return {key: np.concatenate(p) if len(p) > 1 else p[0] for key, p in parts.items()}


def _write_raw(path: Path, tiles: np.ndarray) -> int:
    """Writes ``tiles``' bytes (C order, native byte order) to ``path``; returns their CRC-32C."""
    flat = np.ascontiguousarray(tiles).reshape(-1).view(np.uint8)
    with open(path, "wb") as handle:
        handle.write(memoryview(flat))
    return int(_crc32c.crc32c(flat))


def stage_source(
    writer: PackWriter,
    path: str,
    source_row: int,
    reader: Reader,
    reader_id: list[str] | None,
    key: str | None = None,
) -> None:
    """Reads one source into ``writer``; never raises: a failure becomes a ``failed`` entry.

    ``key`` is the source's resolved path (resolved here when not given).
    """
    source, mark, start = Path(path), writer.mark(), writer.row
    key = key if key is not None else str(source.resolve())
    try:
        identity = fingerprint(source, key, keep=True)
        stats = RunningStats(writer.spec.tile_shape[0])
        meta: dict[str, Any] = {}
        n = 0
        for batch in reader(source):
            meta.update(batch.source_meta or {})
            data = batch_arrays(writer.spec, batch, source_row)
            if data is None:
                continue
            stats.update(data["tiles"], batch.valid)
            writer.append(data)
            n += len(data["tiles"])
        entry = {"status": "done", "n_tiles": n, "start": start, "stats": stats.to_dict(), "meta": meta}
    except Exception as error:  # any reader failure: record it, let the other sources continue
        writer.discard(mark)
        try:
            identity = fingerprint(source, key)
        except OSError:
            identity = {"path": str(source)}
        entry = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
        }
    finally:
        forget_source_bytes()
    entry.update(key=key, fingerprint=identity, reader=reader_id)
    writer.finish(entry)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Readers run ``workers`` at a time, so each keeps torch to one intra-op thread while staging.

    As ``torch.utils.data.DataLoader`` does in its workers: a reader's tensors are one small image, and two
    readers each asking for every core's OpenMP threads made the model contract's resize 10-20x slower
    on a busy 2-core machine (``domainfm bench ingest``). Only when torch is already imported (by the reader
    or the caller); the previous setting is restored.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ingest_pack(
    paths: Sequence[str],
    rows: Sequence[int],
    pack: str,
    spec_attrs: dict,
    reader: Reader,
    reader_ids: Sequence[list[str] | None],
    keys: Sequence[str] | None = None,
) -> int:
    """Stages ``paths`` (rows ``rows`` of the source list) into the new pack ``pack``; returns the tiles staged.

    ``keys``: the sources' resolved paths, when the caller has them.
    """
    writer = PackWriter(Path(pack), StoreSpec.from_attrs(spec_attrs))
    # in this worker's own thread (or process): a pool's threads keep their own OpenMP setting, whatever the
    # thread that started the ingest set
    with one_torch_thread():
        for i, (path, row, reader_id) in enumerate(zip(paths, rows, reader_ids, strict=True)):
            stage_source(writer, path, row, reader, reader_id, keys[i] if keys is not None else None)
    writer.flush()
    return writer.tiles


def new_pack_names(count: int) -> list[str]:
    """Names of this run's packs: they sort after every earlier run's (time first) and never collide."""
    stamp = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    return [f"{stamp}-{i:05d}" for i in range(count)]


def plan_packs(paths: Sequence[str], workers: int, per_pack: int | None = None) -> list[list[int]]:
    """Consecutive positions of ``paths`` grouped into packs.

    By default a pack holds up to ``MAX_PACK_SOURCES`` sources and about ``PACK_SOURCE_BYTES`` of source
    files, and there are at least four packs per worker where there are enough sources (so the workers
    stay busy to the end); ``per_pack`` fixes the number of sources per pack instead.
    """
    if per_pack is None:
        per_pack = max(1, min(MAX_PACK_SOURCES, len(paths) // (4 * max(1, workers))))
    packs: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, path in enumerate(paths):
        try:
            length = os.stat(path).st_size
        except OSError:
            length = 0
        if current and (len(current) >= per_pack or size + length > PACK_SOURCE_BYTES):
            packs.append(current)
            current, size = [], 0
        current.append(i)
        size += length
    if current:
        packs.append(current)
    return packs


def read_journal(pack: Path) -> list[dict[str, Any]]:
    """The complete lines of a pack's journal (a line cut short by a kill is left out)."""
    try:
        text = (pack / JOURNAL).read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            break  # only the last line can be cut short
        if line.get("file") != len(lines):
            break
        lines.append(line)
    return lines


def read_staged(staging: Path, packs: Sequence[str] | None = None) -> dict[str, list[Staged]]:
    """Every journalled source entry under ``staging`` (or in ``packs`` only), oldest first, by resolved path."""
    found: dict[str, list[Staged]] = {}
    if not staging.is_dir():
        return found
    names = sorted(packs) if packs is not None else sorted(p.name for p in staging.iterdir())
    for name in names:
        lines = read_journal(staging / name)
        batches = [int(line["rows"]) for line in lines]
        crcs = tuple(line.get("crc") for line in lines)
        for line in lines:
            for entry in line["sources"]:
                found.setdefault(entry["key"], []).append(Staged(staging / name, batches, entry, crcs))
    return found


def read_pack_progress(pack: Path) -> tuple[int, int]:
    """``(tiles, sources)`` staged so far by a running pack."""
    try:
        tiles, sources = (pack / PROGRESS).read_text().split()
        return int(tiles), int(sources)
    except (FileNotFoundError, ValueError):
        return 0, 0
