"""The ingest engine: many sources -> one tile store, in parallel, resumable, memory bounded.

1. **Plan.** A new store is created with ``status: ingesting``. An unfinished one is resumed (its source
   list may change: staged sources are keyed by resolved path); another spec, a complete store of other
   sources, or anything at ``out`` that is not a tile store is refused rather than mixed or overwritten.
2. **Stage.** Every source without a journalled ``done`` entry (or whose file or reader options changed
   since) is read by the domain's reader into a shared staging pack (:mod:`.packs`): runs of consecutive
   sources, up to 512 small files or one large file per pack, buffered and flushed in bulk, so per-file
   overhead vanishes. Packs run as Dask tasks: local threads (default) or processes, or a
   ``dask.distributed`` cluster when a scheduler address is given (the store must then be on a
   filesystem every worker sees). A failing source is recorded and the others continue. A progress bar
   shows sources, tiles and tiles/s.
3. **Assemble.** The staged rows are copied, shard by shard (one task per shard, so one writer per
   shard), into the sharded store in source order (uncompressed uint8 tiles straight into their shard
   files, or a staged file that is a whole shard linked in place, :mod:`.assembly`; the rest through
   zarr); per-source statistics are merged
   exactly, in source order; the sources table and the attributes are written, ``status: complete`` last.

A run killed at any point and rerun with the same command ends with the same tiles, index and statistics
as an uninterrupted run: journalled sources are kept, the rest are staged again, and assembly is repeated
from the packs. The staging folder is removed once every source succeeded; with failures it stays, so a
rerun only retries the failed sources.

Consistency by construction: the store records what it was built from (:mod:`.inputs`: reader, reader
version, the reader's options, a digest of each source's own options). A rerun with other options is
refused with the differences listed unless ``overwrite`` (then sources staged under other options are
redone); a complete store is also refused when its sources were added, removed or changed since. An
unfinished store may change its source list (e.g. a failed source removed): ``index/source`` and the
sources table are then rebuilt together from the current list at assembly, never taken from staging.
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

import zarr

from domainfm.shared.outputs import lock_output
from domainfm.shared.tiles.assembly import assemble as _assemble
from domainfm.shared.tiles.fragments import Reader, fingerprint, kill_point
from domainfm.shared.tiles.inputs import differences, inputs_record, reader_options, spec_differences
from domainfm.shared.tiles.layout import choose_layout
from domainfm.shared.tiles.packs import (
    Staged,
    ingest_pack,
    new_pack_names,
    one_torch_thread,
    plan_packs,
    read_pack_progress,
    read_staged,
)
from domainfm.shared.tiles.schema import StoreSpec
from domainfm.shared.tiles.stats import RunningStats
from domainfm.shared.tiles.store import WRITE_ALL_CHUNKS, StoreError, initial_attrs

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
    resolved: list[str] | None = None,
) -> zarr.Group:
    planned = resolved if resolved is not None else [str(Path(s).resolve()) for s in sources]
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


def _with_progress(run: Any, packs: list[Path], total: int, show: bool) -> list[dict]:
    """Runs ``run()`` in a thread while polling the packs' progress files for a sources and tiles/s bar."""
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
        task = progress.add_task("ingest sources", total=total, rate="")
        thread.start()
        while thread.is_alive():
            thread.join(0.5)
            counts = [read_pack_progress(p) for p in packs] if show else [(0, 0)]
            tiles, finished = sum(c[0] for c in counts), sum(c[1] for c in counts)
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
    sources_per_pack: int | None = None,
    attrs: dict[str, Any] | None = None,
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
        sources_per_pack: Sources staged together in one pack (:mod:`.packs`); by default up to 512 small
            files, a large file alone. ``1`` stages each source on its own and flushes it at once (as
            ingest did before packs; ``domainfm bench ingest`` measures the difference).
        attrs: More group attributes the domain records (e.g. what was left unpaired), written with the
            store's final attributes in the same metadata write (once the store is complete, only when they
            differ from what it holds).
    """
    out = Path(out)
    names = [str(s) for s in sources]
    resolved = [Path(s).resolve() for s in sources]
    if len(set(resolved)) != len(resolved):
        twice = sorted({str(r) for r in resolved if resolved.count(r) > 1})
        raise StoreError(f"sources listed twice (under any spelling): {twice}")
    with lock_output(out, "tile store"):  # one writer per store: a second ingest into `out` fails at once
        return _ingest_locked(
            out, names, [str(r) for r in resolved], spec, reader, reader_name, reader_version, workers, scheduler,
            processes, overwrite, progress, sources_per_pack, attrs or {},
        )  # fmt: skip


def _reusable(staged: list[Staged], name: str, reader_id: list[str]) -> Staged | None:
    """The newest ``done`` entry of ``name`` made from today's file under today's reader and options."""
    for item in reversed(staged):
        entry = item.entry
        if entry["status"] == "done" and entry.get("reader") == reader_id and Path(name).is_file():
            if entry["fingerprint"] == fingerprint(Path(name)):
                return item
            return None  # the file changed since: every older entry is older still
    return None


def _ingest_locked(
    out: Path,
    names: list[str],
    keys: list[str],
    spec: StoreSpec,
    reader: Reader,
    reader_name: str,
    reader_version: str,
    workers: int,
    scheduler: str | None,
    processes: bool,
    overwrite: bool,
    progress: bool,
    sources_per_pack: int | None,
    attrs: dict[str, Any],
) -> IngestSummary:
    start = time.perf_counter()
    options, own = reader_options(reader, names, out, keys)
    inputs = inputs_record(reader_name, reader_version, options)
    shared = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    per_source = [f"{shared}:{digest}" for digest in own]  # a staged source is kept only under the same options
    reader_ids = [[reader_name, reader_version, digest] for digest in per_source]
    group = _open_or_create(out, spec, names, overwrite, inputs, per_source, keys)
    summary = IngestSummary(out)
    staging = out / STAGING
    if group.attrs.get("status") == "complete":
        shutil.rmtree(staging, ignore_errors=True)
        if any(group.attrs.get(key) != json.loads(json.dumps(value)) for key, value in attrs.items()):
            group.attrs.update(attrs)
        summary.skipped, summary.n_tiles = names, int(group["tiles"].shape[0])
        summary.seconds = time.perf_counter() - start
        return summary
    import dask

    earlier = read_staged(staging)
    staged: list[Staged | None] = [
        _reusable(earlier.get(key, []), name, rid) for name, key, rid in zip(names, keys, reader_ids, strict=True)
    ]
    todo = [row for row, item in enumerate(staged) if item is None]
    summary.skipped = [names[row] for row, item in enumerate(staged) if item is not None]
    if todo:
        plan = plan_packs([names[row] for row in todo], workers, sources_per_pack)
        packs = new_pack_names(len(plan))
        tasks = []
        for pack, positions in zip(packs, plan, strict=True):
            rows = [todo[i] for i in positions]
            tasks.append(
                dask.delayed(ingest_pack)(
                    [names[r] for r in rows],
                    rows,
                    str(staging / pack),
                    spec.to_attrs(),
                    reader,
                    [reader_ids[r] for r in rows],
                    [keys[r] for r in rows],
                )
            )
        run = lambda: _run_tasks(tasks, workers, scheduler, processes)  # noqa: E731
        with one_torch_thread():
            _with_progress(run, [staging / pack for pack in packs], len(todo), progress)
        fresh = read_staged(staging, packs)
        for row in todo:
            found = fresh.get(keys[row])
            staged[row] = found[-1] if found else None
    if any(item is None for item in staged):
        raise StoreError(f"{out}: some sources did not finish; rerun the same command to resume")
    with zarr.config.set(WRITE_ALL_CHUNKS):
        summary.n_tiles = _assemble(group, out, spec, staged, workers, scheduler, processes)
    table = []
    stats = RunningStats(spec.tile_shape[0])
    for name, item, digest in zip(names, staged, per_source, strict=True):
        entry = item.entry  # type: ignore[union-attr]  (None was refused above)
        table.append(
            {
                **entry["fingerprint"],
                "reader": reader_name,
                "reader_version": reader_version,
                "options_sha256": digest,
                "status": entry["status"],
                "n_tiles": entry.get("n_tiles", 0),
                "error": entry.get("error"),
                "meta": entry.get("meta", {}),
            }
        )
        if entry["status"] == "done":
            summary.done.append(name)
            stats.merge(RunningStats.from_dict(entry["stats"]))
        else:
            summary.failed[name] = entry["error"]
    kill_point("attrs")
    group.attrs.update(
        {
            **attrs,
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
