"""The ingest engine: many sources -> one tile store, in parallel, resumable, memory bounded.

1. **Plan.** A new store is created with ``status: ingesting``. An unfinished one is resumed (its source
   list may change: fragments are keyed by source path); another spec, a complete store of other sources,
   or anything at ``out`` that is not a tile store is refused rather than mixed or overwritten.
2. **Tile.** Each source whose fragment is not ``done`` (or whose file changed since) is read by the
   domain's reader into its own staging fragment (:mod:`.fragments`). Sources run as Dask tasks: local
   threads (default) or processes, or a ``dask.distributed`` cluster when a scheduler address is given
   (the store must then be on a filesystem every worker sees). A failing source is recorded and the
   others continue. A progress bar shows tiles and tiles/s.
3. **Assemble.** The fragments are copied, shard by shard (one task per shard, so one writer per shard),
   into the sharded store in source order (uncompressed uint8 tiles straight into their shard files,
   :func:`.shards.write_raw_shard`; the rest through zarr); statistics are merged exactly; the sources table and the
   attributes are written, ``status: complete`` last.

A run killed at any point and rerun with the same command ends with the same tiles, index and statistics
as an uninterrupted run: finished fragments are kept, unfinished ones are redone, and assembly is
repeated from the fragments. The staging folder is removed once every source succeeded; with failures it
stays, so a rerun only retries the failed sources.

Consistency by construction: the store records what it was built from (:mod:`.inputs`: reader, reader
version, the reader's options, a digest of each source's own options). A rerun with other options is
refused with the differences listed unless ``overwrite`` (then fragments made under other options are
redone); a complete store is also refused when its sources were added, removed or changed since. An
unfinished store may change its source list (e.g. a failed source removed): ``index/source`` and the
sources table are then rebuilt together from the current list at assembly, never taken from a fragment.
Assembly records each tile shard file's CRC-32C (``checksums/tiles``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from domainfm.shared.outputs import lock_output
from domainfm.shared.tiles.fragments import (
    Reader,
    fingerprint,
    ingest_source,
    kill_point,
    read_fragment_rows,
    read_progress,
    read_status,
)
from domainfm.shared.tiles.inputs import differences, inputs_record, reader_options, spec_differences
from domainfm.shared.tiles.layout import choose_layout
from domainfm.shared.tiles.schema import INDEX_COLUMNS, StoreSpec
from domainfm.shared.tiles.shards import ShardDecoder, file_crc32c, shard_file, write_raw_shard
from domainfm.shared.tiles.stats import RunningStats
from domainfm.shared.tiles.store import CHECKSUMS, WRITE_ALL_CHUNKS, StoreError, create_arrays, initial_attrs

STAGING = "_staging"


@dataclass
class IngestSummary:
    """What an ingest did."""

    store: Path
    n_tiles: int = 0
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every source was ingested."""
        return not self.failed

    def report(self) -> str:
        """A short human summary, naming every failed source and its error."""
        rate = self.n_tiles / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.store}: {self.n_tiles} tiles from {len(self.done)} source(s) in {self.seconds:.1f} s "
            f"({rate:.0f} tiles/s); {len(self.skipped)} already done, {len(self.failed)} failed"
        ]
        lines += [f"  FAILED {path}: {error}" for path, error in self.failed.items()]
        if self.failed:
            lines.append("  Fix or remove the failed sources and rerun the same command: finished sources are kept.")
        return "\n".join(lines)


def _read_store_attrs(out: Path) -> dict | None:
    """The attributes of the tile store at ``out``; ``None`` when its metadata was cut short by a kill.

    Anything else at ``out`` (a plain folder, another zarr array or group) is refused, never modified.
    """
    meta_path = out / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        if (out / STAGING).is_dir():
            return None  # half-written by a killed run: the staging fragments still hold everything
        raise StoreError(
            f"{meta_path} is not valid zarr metadata and no ingest staging is beside it, so it is not a store an "
            f"ingest left; domainfm does not replace it: choose another --out, or move it away yourself"
        ) from None
    if not isinstance(meta, dict):
        raise StoreError(f"{out} holds zarr data that is not a domainfm tile store; choose another --out")
    if meta.get("node_type") != "group" or "schema_version" not in meta.get("attributes", {}):
        raise StoreError(f"{out} holds zarr data that is not a domainfm tile store; choose another --out")
    return meta["attributes"]


def _refuse_changed_inputs(
    out: Path, attrs: dict, spec: StoreSpec, planned: list[str], inputs: dict, per_source: list[str], overwrite: bool
) -> None:
    """Refuses a rerun whose spec, reader or options differ from what the store at ``out`` was built with.

    ``overwrite`` lets an unfinished store continue under the new options (fragments made under other
    options are redone). A complete store is also refused when its sources were added, removed or have
    changed since (it is never silently left stale, nor half rebuilt).
    """
    changes = spec_differences(StoreSpec.from_attrs(attrs).to_attrs(), spec.to_attrs())
    if changes:
        raise StoreError(
            f"{out} holds a store with another spec ("
            + "; ".join(changes)
            + "); pass --overwrite to replace it or choose another --out"
        )
    if not overwrite:
        changes += differences(attrs.get("inputs"), inputs)
    if attrs.get("status") == "complete":
        recorded = attrs.get("planned_sources") or []
        if recorded != planned:
            added = [s for s in planned if s not in recorded]
            removed = [s for s in recorded if s not in planned]
            order = [] if added or removed else ["the same sources in another order"]
            raise StoreError(
                f"{out} is a complete store of other sources ("
                + "; ".join([*(f"added {s}" for s in added), *(f"removed {s}" for s in removed), *order])
                + "); pass --overwrite to rebuild it or choose another --out"
            )
        for entry, path, digest in zip(attrs.get("sources", []), planned, per_source, strict=False):
            if not Path(path).is_file():
                changes.append(f"source {path} no longer exists")
                continue
            now = fingerprint(Path(path))
            moved = [k for k in ("size", "mtime_ns", "sha256_head") if entry.get(k) != now[k]]
            if moved:
                changes.append(f"source {path} changed since it was ingested ({', '.join(moved)})")
            if entry.get("options_sha256") not in (None, digest) and not overwrite:
                changes.append(f"the reader's options for source {path} changed")
    if changes:
        raise StoreError(
            f"{out} was built from other inputs than this run's:\n  "
            + "\n  ".join(changes)
            + "\nRerun with the store's original sources and options, pass --overwrite to rebuild it with these, "
            "or choose another --out."
        )


QC_FOLDER = "qc"  # readers may draw QC pictures here (the slide tiler's tissue masks)
STORE_MEMBERS = ("zarr.json", STAGING, QC_FOLDER)


def _foreign_entries(out: Path) -> list[str]:
    """What in ``out`` a store does not hold: its metadata, staging, zarr nodes and ``_``-named files are its own."""
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name in STORE_MEMBERS or entry.name.startswith("_"):
            continue
        if entry.is_dir() and not entry.is_symlink() and (entry / "zarr.json").is_file():
            continue  # an array or group of the store (tiles, index, companions)
        foreign.append(entry.name)
    return foreign


def _open_or_create(
    out: Path,
    spec: StoreSpec,
    sources: list[str],
    overwrite: bool,
    inputs: dict | None = None,
    per_source: list[str] | None = None,
) -> zarr.Group:
    planned = [str(Path(s).resolve()) for s in sources]
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} is a file, not a tile store; choose another --out")
    if out.exists() and not (out / "zarr.json").is_file() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not a tile store; choose another --out")
    attrs = _read_store_attrs(out) if (out / "zarr.json").is_file() else {}
    foreign = _foreign_entries(out) if out.is_dir() else []
    if foreign:
        raise StoreError(
            f"{out} holds files that are not part of a tile store ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); domainfm writes a store only into a new, empty or store "
            f"folder: choose another --out, or move those files away yourself"
        )
    if attrs is None:
        (out / "zarr.json").unlink()
        attrs = {}
    resuming = attrs.get("status") in ("ingesting", "partial") and attrs.get("planned_sources") == planned
    if overwrite and attrs and not resuming:
        shutil.rmtree(out)  # only ever a tile store (checked above)
        attrs = {}
    inputs = inputs if inputs is not None else inputs_record("", "", {})
    if attrs:
        _refuse_changed_inputs(out, attrs, spec, planned, inputs, per_source or [""] * len(planned), overwrite)
    group = zarr.open_group(out, mode="a")
    if group.attrs.get("status") != "complete":
        layout = choose_layout(spec.tile_shape, spec.dtype, spec.codec)
        group.attrs.put({**initial_attrs(spec, layout), "planned_sources": planned, "inputs": inputs})
    return group


def fragment_key(source: str | Path) -> str:
    """Staging folder name of a source: stable across reruns and across changes to the source list."""
    return hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:16]


def _run_tasks(tasks: list[Any], workers: int, scheduler: str | None, processes: bool) -> list[dict]:
    import dask

    if scheduler:
        from domainfm.shared.optional import require

        distributed = require("distributed", "distributed")
        with distributed.Client(scheduler) as client:
            return client.gather(client.compute(tasks))
    mode = "processes" if processes else "threads"
    return list(dask.compute(*tasks, scheduler=mode, num_workers=workers))


def _with_progress(run: Any, fragments: list[Path], show: bool) -> list[dict]:
    """Runs ``run()`` in a thread while polling the fragments' progress files for a tiles/s bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(value=_capture(run)), daemon=True)
    start = time.perf_counter()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not show, transient=False) as progress:
        task = progress.add_task("ingest sources", total=len(fragments), rate="")
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            tiles = sum(read_progress(f) for f in fragments)
            finished = sum(read_status(f) is not None for f in fragments)
            rate = tiles / max(time.perf_counter() - start, 1e-9)
            progress.update(task, completed=finished, rate=f"{tiles} tiles, {rate:.0f} tiles/s")
    if "error" in result["value"]:
        raise result["value"]["error"]
    return result["value"]["ok"]


def _capture(run: Any) -> dict[str, Any]:
    try:
        return {"ok": run()}
    except BaseException as error:  # re-raised in the caller's thread
        return {"error": error}


def _copy_rows(
    fragments: list[tuple[Path, int, list[int]]],
    start: int,
    stop: int,
    store: Path,
    keys: list[str],
    raw_tiles: bool,
) -> int:
    """Writes global rows ``[start, stop)`` of every array from the fragments that hold them (one shard).

    With ``raw_tiles`` (see :func:`_raw_shards`) the tile shard file is written directly. Returns the
    CRC-32C of the tile shard file written.
    """
    group = zarr.open_group(store, mode="r+")
    crc = None
    with zarr.config.set(WRITE_ALL_CHUNKS):  # in this worker too: all-zero tiles must still be written
        for key in keys:
            parts = []
            for fragment, offset, batches in fragments:
                parts += read_fragment_rows(fragment, batches, key, start - offset, stop - offset)
            array = group[key]
            if key == "tiles" and raw_tiles:
                shard_rows, chunk_rows = int(array.shards[0]), int(array.chunks[0])
                path = shard_file(Path(store) / "tiles", start // shard_rows, array.ndim)
                crc = write_raw_shard(path, parts, chunk_rows, shard_rows // chunk_rows)
            else:
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


def _assemble(
    group: zarr.Group,
    out: Path,
    spec: StoreSpec,
    statuses: list[dict],
    fragment_dirs: list[Path],
    workers: int,
    scheduler: str | None,
    processes: bool,
) -> int:
    import dask

    done = [
        (row, d, s) for row, (d, s) in enumerate(zip(fragment_dirs, statuses, strict=True)) if s["status"] == "done"
    ]
    offsets, rows_of, total = [], [], 0
    for row, fragment, status in done:
        offsets.append((fragment, total, status["batches"]))
        rows_of.append(np.full(status["n_tiles"], row, np.int32))
        total += status["n_tiles"]
    layout = choose_layout(spec.tile_shape, spec.dtype, spec.codec)
    create_arrays(group, spec, total, layout)
    keys = ["tiles", *[f"companions/{name}" for name in spec.companions]]
    rows = int(group["tiles"].shards[0])
    raw = _raw_shards(group["tiles"])
    copies = [dask.delayed(_copy_rows)(offsets, s, min(s + rows, total), out, keys, raw) for s in range(0, total, rows)]
    crcs = _run_tasks(copies, workers, scheduler, processes) if copies else []
    for name in INDEX_COLUMNS:  # a few bytes per tile: assembled in memory, written once
        if name == "source":  # the row in today's source list, whatever the list was when the fragment was made
            parts = rows_of
        else:
            parts = [part for f, _, b in offsets for part in read_fragment_rows(f, b, f"index/{name}", 0, sum(b))]
        if parts and total:
            group[f"index/{name}"][:] = np.concatenate(parts)
    if crcs:
        group[CHECKSUMS][:] = np.asarray(crcs, np.uint32)
    return total


def ingest(
    sources: Sequence[str | Path],
    out: str | Path,
    spec: StoreSpec,
    reader: Reader,
    reader_name: str,
    reader_version: str = "1",
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Ingests ``sources`` into the store at ``out`` (see the module docstring for the guarantees).

    Args:
        sources: Source files, in the order their tiles will appear in the store.
        out: Store folder.
        spec: What the store holds (tile shape, dtype, channels, companions, ...).
        reader: ``reader(path) -> Iterator[TileBatch]``; a module-level function (picklable for processes).
        reader_name: Recorded in the sources table (e.g. ``"<domain>.openslide"``).
        reader_version: Recorded too; bump it when the reader's output changes.
        workers: Local parallel tasks.
        scheduler: ``dask.distributed`` scheduler address; local threads/processes when ``None``.
        processes: Local processes instead of threads (for readers that hold the GIL).
        overwrite: Replace an existing store of other sources.
        progress: Show the progress bar.
    """
    out = Path(out)
    names = [str(s) for s in sources]
    resolved = [Path(s).resolve() for s in sources]
    if len(set(resolved)) != len(resolved):
        twice = sorted({str(r) for r in resolved if resolved.count(r) > 1})
        raise StoreError(f"sources listed twice (under any spelling): {twice}")
    with lock_output(out, "tile store"):  # one writer per store: a second ingest into `out` fails at once
        return _ingest_locked(
            out, names, spec, reader, reader_name, reader_version, workers, scheduler, processes, overwrite, progress
        )


def _ingest_locked(
    out: Path,
    names: list[str],
    spec: StoreSpec,
    reader: Reader,
    reader_name: str,
    reader_version: str,
    workers: int,
    scheduler: str | None,
    processes: bool,
    overwrite: bool,
    progress: bool,
) -> IngestSummary:
    start = time.perf_counter()
    options, own = reader_options(reader, names, out)
    inputs = inputs_record(reader_name, reader_version, options)
    shared = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    per_source = [f"{shared}:{digest}" for digest in own]  # a fragment is kept only under the same options
    group = _open_or_create(out, spec, names, overwrite, inputs, per_source)
    summary = IngestSummary(out)
    staging = out / STAGING
    fragment_dirs = [staging / fragment_key(name) for name in names]
    if group.attrs.get("status") == "complete":
        shutil.rmtree(staging, ignore_errors=True)
        summary.skipped, summary.n_tiles = names, int(group["tiles"].shape[0])
        summary.seconds = time.perf_counter() - start
        return summary
    import dask

    todo = []
    for row, (name, fragment) in enumerate(zip(names, fragment_dirs, strict=True)):
        status = read_status(fragment)
        unchanged = (
            status is not None
            and Path(name).is_file()
            and status["fingerprint"] == fingerprint(Path(name))
            and status.get("reader") == [reader_name, reader_version, per_source[row]]
        )
        if status is not None and status["status"] == "done" and "batches" in status and unchanged:
            summary.skipped.append(name)
        else:
            todo.append(
                dask.delayed(ingest_source)(
                    name, row, str(fragment), spec.to_attrs(), reader, [reader_name, reader_version, per_source[row]]
                )
            )
    if todo:
        _with_progress(lambda: _run_tasks(todo, workers, scheduler, processes), fragment_dirs, progress)
    statuses = [read_status(f) for f in fragment_dirs]
    if any(s is None for s in statuses):
        raise StoreError(f"{out}: some sources did not finish; rerun the same command to resume")
    with zarr.config.set(WRITE_ALL_CHUNKS):
        summary.n_tiles = _assemble(group, out, spec, statuses, fragment_dirs, workers, scheduler, processes)
    table = []
    for name, status, digest in zip(names, statuses, per_source, strict=True):
        entry = {
            **status["fingerprint"],
            "reader": reader_name,
            "reader_version": reader_version,
            "options_sha256": digest,
            "status": status["status"],
            "n_tiles": status.get("n_tiles", 0),
            "error": status.get("error"),
            "meta": status.get("meta", {}),
        }
        table.append(entry)
        if status["status"] == "done":
            summary.done.append(name)
        else:
            summary.failed[name] = status["error"]
    stats = RunningStats(spec.tile_shape[0])
    for status in statuses:
        if status["status"] == "done":
            stats.merge(RunningStats.from_dict(status["stats"]))
    kill_point("attrs")
    group.attrs.update(
        {
            "sources": table,
            "stats": stats.to_dict(),
            "n_tiles": summary.n_tiles,
            "status": "complete" if summary.ok else "partial",
        }
    )
    if summary.ok:
        shutil.rmtree(staging, ignore_errors=True)
    summary.done = [n for n in summary.done if n not in summary.skipped]
    summary.seconds = time.perf_counter() - start
    return summary
