"""``domainfm tiles ...``: ingest already-tiled arrays, inspect and verify stores, and the stream benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from domainfm.shared.config import PositiveInt


def ingest_arrays(
    sources: list[Path],
    /,
    out: Path,
    domain: str = "generic",
    channel_names: list[str] | None = None,
    workers: PositiveInt = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    codec: str = "auto",
    layout: Literal["auto", "nchw", "nhwc"] = "auto",
    splits: Path | None = None,
) -> int:
    """Ingest .npy tile arrays [N, C, H, W] (or [N, H, W, C] with --layout nhwc) into a tile store.

    Parallel and resumable. Tiles are unassigned to splits unless ``--splits`` gives each file's split.

    Args:
        sources: ``.npy`` files; their tiles appear in the store in this order.
        out: Store folder.
        domain: Recorded domain of the store.
        channel_names: One name per channel (``c0, c1, ...`` when unset).
        workers: Local parallel tasks.
        scheduler: A dask.distributed scheduler address (e.g. ``tcp://host:8786``); local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other sources.
        codec: ``auto`` (Blosc-LZ4 if it saves 10 % on the first source's tiles, else none),
            ``blosc-lz4``, ``zstd-1`` or ``none``.
        layout: ``nchw`` ([N, C, H, W]), ``nhwc`` ([N, H, W, C], e.g. arrays of RGB pictures) or ``auto``
            (``nchw``, but an array whose last axis looks like channels is refused, naming ``--layout``).
        splits: CSV of source file (name or stem) -> split (train, val, test); every file listed. Each
            file's stem is recorded as its group.
    """
    from functools import partial

    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
    from domainfm.shared.tiles.split_counts import warn_empty_splits
    from domainfm.shared.tiles.splits import group_split, read_splits_csv

    table = read_splits_csv(splits) if splits else None
    for source in sources if table else []:  # every file listed, before anything is written
        group_split(Path(source).stem, table, aliases=(Path(source).name, str(source)))
    spec = npy_spec(sources[0], domain, channel_names, codec, layout)
    reader = partial(read_npy_tiles, layout=layout, splits=table)
    summary = ingest(sources, out, spec, reader, "generic.npy", "1", workers, scheduler, processes, overwrite)
    print(summary.report())
    if summary.ok and table is not None:
        warn_empty_splits(Path(out))
    return 0 if summary.ok else 1


def inspect(store: Path, /, sheet: Path | None = None, n: PositiveInt = 64, json: bool = False) -> int:
    """Counts, channels, statistics and sources of a store, and a PNG contact sheet of sample tiles.

    Args:
        store: The store folder.
        sheet: Where to write the contact sheet (``STORE.contact_sheet.png`` beside the store when unset).
        n: Tiles on the contact sheet.
        json: Print JSON instead of text.
    """
    import json as json_module

    from domainfm.shared.tiles.store import TileStore
    from domainfm.shared.tiles.summary import contact_sheet, describe

    opened = TileStore(store, allow_incomplete=True)
    info = describe(opened)
    default = opened.path.with_name(opened.path.name + ".contact_sheet.png")
    info["contact_sheet"] = str(contact_sheet(opened, sheet or default, n))
    if json:
        print(json_module.dumps(info, indent=2))
        return 0
    print(
        f"{info['path']}: {info['n_tiles']} {info['domain']} tiles {info['tile_shape']} {info['dtype']}, "
        f"status {info['status']}"
    )
    stats = info["stats"]
    for c, channel in enumerate(info["channels"]):
        extra = ", ".join(f"{k}={v}" for k, v in channel.items() if k != "name")
        values = (
            f"mean {stats['mean'][c]:.4g} std {stats['std'][c]:.4g} [{stats['min'][c]}, {stats['max'][c]}]"
            if stats
            else ""
        )
        print(f"  channel {channel['name']:10s} {values} {extra}")
    print(f"  splits {info['splits']}  labels {info['labels']}  companions {info['companions']}")
    for source in info["sources"]:
        print(
            f"  source {source['status']:6s} {source['n_tiles']:7d} tiles  {source['path']}"
            + (f"  ({source['error']})" if source["error"] else "")
        )
    print(f"  contact sheet: {info['contact_sheet']}")
    return 0


def verify(store: Path, /, quick: bool = False) -> int:
    """Check a store: schema, completion, checksums, every shard present and decodable, index consistent.

    Args:
        store: The store folder.
        quick: Check that every shard and index chunk exists without decoding the tiles.
    """
    from domainfm.shared.tiles.verify import verify_notes, verify_store

    problems = verify_store(store, decode=not quick)
    for problem in problems:
        print(f"{store}: {problem}")
    if not problems:
        notes = verify_notes(store)
        print(f"{store}: ok" + "".join(f" (note: {note})" for note in notes))
    return 1 if problems else 0
