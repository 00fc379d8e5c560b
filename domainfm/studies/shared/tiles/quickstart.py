"""Quickstart section for the tile store: ingest generated tiles, verify, stream, and draw a contact sheet."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from domainfm.shared.report import SectionResult
from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream
from domainfm.shared.tiles.summary import contact_sheet
from domainfm.shared.tiles.verify import verify_store
from domainfm.studies.shared.tiles.bench import decode_limit, tissue_tiles


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """Builds a 3-source store of tissue-like tiles in ``out_dir`` and measures reading it."""
    sources = []
    for i in range(3):
        path = out_dir / f"source_{i}.npy"
        np.save(path, tissue_tiles(400, seed=seed + i, size=96))
        sources.append(path)
    start = time.perf_counter()
    summary = ingest(
        sources,
        out_dir / "tiles.zarr",
        npy_spec(sources[0], "pathology", ["R", "G", "B"]),
        read_npy_tiles,
        "quickstart.npy",
        progress=False,
    )
    ingest_seconds = time.perf_counter() - start
    for path in sources:
        path.unlink()
    store = TileStore(out_dir / "tiles.zarr")
    problems = verify_store(store.path)
    stream = TileStream(store, 128, device=str(device), seed=seed, normalize=False)
    start, delivered = time.perf_counter(), 0
    for batch in stream:
        delivered += len(batch["tiles"])
    stream_rate = delivered / (time.perf_counter() - start)
    _, limit = decode_limit(store.path)
    figure = contact_sheet(store, out_dir / "contact_sheet.png", n=36, seed=seed)
    rows = [
        {"measure": "tiles ingested", "value": summary.n_tiles},
        {"measure": "ingest tiles/s", "value": summary.n_tiles / ingest_seconds},
        {"measure": "verify problems", "value": len(problems)},
        {"measure": "stream tiles/s (to device)", "value": stream_rate},
        {"measure": "decode limit tiles/s (1 thread)", "value": limit},
        {"measure": "stream / decode limit", "value": stream_rate / limit},
    ]
    text = (
        f"{summary.n_tiles} tissue-like 96x96 tiles from 3 sources into a sharded zarr store "
        f"(`{store.attrs['layout']}`), verified, then streamed once in shuffled batches of 128 to `{device}`. "
        "`domainfm bench stream` measures the full benchmark."
    )
    ok = summary.ok and not problems and delivered == len(store)
    return SectionResult("Tile store and stream", text, rows, [figure.name], {"stream_tiles_per_s": stream_rate}, ok)
