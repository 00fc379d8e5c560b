"""``domainfm bench tiling``: the slide tiler against a naive PNG loop and OpenSlide's read limit, in one run.

On a generated phantom Aperio SVS of ``size`` x ``size`` pixels (JPEG tiles, pyramid, 0.5 mpp), tiling
224-px tiles at 0.5 mpp (20x, the common case):

(a) ``tiler``: ``domainfm pathology tile`` end to end (thumbnail, tissue mask, QC picture, parallel
    reads, staging, store assembly and statistics), tiles/s;
(b) ``naive_png``: what CLAM-style scripts do: one ``read_region`` per tile, converted to RGB and saved as
    a PNG file, in a plain loop (measured on the first ``naive_tiles`` tiles);
(c) ``read_limit``: the fastest plain read a user could write: ``threads`` threads, one
    ``openslide.OpenSlide`` handle per thread, ``numpy.asarray(slide.read_region(...))`` of the RGBA image
    and nothing else (no compositing on white, no channel-first copy, nothing kept), in the faster of two
    orders, measured each round: ``read_alternate`` (thread k reads tiles k, k + threads, ...) and
    ``read_halves`` (thread k reads the k-th run of consecutive tiles: each handle's tile cache serves its
    neighbours, about 18 % less CPU than alternating on this slide): ``ratio_vs_read_limit`` = (a) / (c).
    Everything the tiler does beyond decoding (alpha, layout, statistics, staging, assembly, tissue
    detection) counts against it.

(a) and (c) run in interleaved rounds, each tiler round into a new store (the previous round's is deleted
before the clock starts); medians of the rates and of the per-round ratios are reported.

Two more read passes show where the tiler's time goes, each over the same tiles with the tiler's own
thread pool and batches: ``rgb_read`` reads through ``read_region`` and composites on white into
channel-first RGB batches (what this benchmark called its read limit before #20), ``native_read`` decodes
with OpenSlide's C ``read_region`` straight into numpy, without the PIL image, as the tiler does
(:func:`~domainfm.domains.pathology.slides.read_bgra`); ``ratio_vs_native_read`` is what staging,
statistics and store assembly cost on top of the tiler's own read.

``peak_rss_mb`` is the process's peak over the whole run (phantom generation included). Ratios are
taken within the run, so they hold on a noisy machine.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.shared.config import PositiveInt
from domainfm.shared.engine.memory import peak_memory_mb


def plain_read_limit(
    slide_path: Path, coords: np.ndarray, level: int, size: int, threads: int, order: str = "alternate"
) -> float:
    """Tiles/s of the plain read: one handle per thread, ``numpy.asarray`` of the RGBA image.

    ``order``: ``alternate`` (thread k reads tiles k, k + threads, ...) or ``halves`` (thread k reads the
    k-th run of consecutive tiles, ``numpy.array_split``).
    """
    import openslide

    parts = [coords[k::threads] for k in range(threads)]
    if order == "halves":
        parts = np.array_split(coords, threads)

    def read(part: int) -> int:
        slide = openslide.OpenSlide(str(slide_path))
        try:
            for x, y in parts[part]:
                np.asarray(slide.read_region((int(x), int(y)), level, (size, size)))
        finally:
            slide.close()
        return len(parts[part])

    start = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="plain-read") as pool:
        n = sum(pool.map(read, range(threads)))
    return n / (time.perf_counter() - start)


def _tiler_read(slide_path: Path, plan: Any, params: Any, public_api: bool = True) -> float:
    from domainfm.domains.pathology.tiling import RegionReader, read_tiles

    reader = RegionReader(slide_path, params.threads, public_api)
    start, n = time.perf_counter(), 0
    try:
        for mpp, (coords, _, side) in plan.grids.items():
            for tiles in read_tiles(reader, plan.info, coords, mpp, side, params):
                n += len(tiles)
    finally:
        reader.close()
    return n / (time.perf_counter() - start)


def _naive_png(slide_path: Path, coords: np.ndarray, tile_px: int, folder: Path) -> float:
    import openslide

    folder.mkdir(parents=True, exist_ok=True)
    slide = openslide.OpenSlide(str(slide_path))
    start = time.perf_counter()
    for x, y in coords:
        slide.read_region((int(x), int(y)), 0, (tile_px, tile_px)).convert("RGB").save(folder / f"{x}_{y}.png")
    seconds = time.perf_counter() - start
    slide.close()
    return len(coords) / seconds


def run_tiling_benchmark(
    size: int, tile_px: int, threads: int, naive_tiles: int, folder: Path, rounds: int = 3
) -> dict[str, Any]:
    """Runs (a), (b) and (c) on a phantom slide in ``folder``; returns the JSON fields (medians over rounds)."""
    import statistics

    from domainfm.domains.pathology.slides import best_level, open_slide
    from domainfm.domains.pathology.tiling import TilingParams, plan_slide, tile_slides
    from domainfm.studies.pathology.phantom import write_phantom_slide

    start = time.perf_counter()
    slide = write_phantom_slide(folder / "bench.svs", size, seed=0, mpp=0.5)
    results: dict[str, Any] = {"slide_px": [size, size], "slide_mb": round(slide.path.stat().st_size / 2**20, 1)}
    results["phantom_seconds"] = round(time.perf_counter() - start, 1)
    params = TilingParams(mpps=(0.5,), tile_px=tile_px, threads=threads)
    handle = open_slide(slide.path)
    plan = plan_slide(handle, slide.path, params)
    handle.close()
    coords, _, side = plan.grids[0.5]
    level = best_level(plan.info.level_downsamples, side / tile_px)
    region = max(1, round(side / plan.info.level_downsamples[level]))
    results.update(tiles=len(coords), threads=threads, rounds=rounds)
    measured: dict[str, list[float]] = {"tiler": [], "read_limit": [], "rgb_read": [], "native_read": []}
    measured.update(read_alternate=[], read_halves=[])
    for _ in range(rounds):  # interleaved, so drift on a noisy machine hits every variant alike
        for order in ("alternate", "halves"):
            measured[f"read_{order}"].append(plain_read_limit(slide.path, coords, level, region, threads, order))
        measured["read_limit"].append(max(measured["read_alternate"][-1], measured["read_halves"][-1]))
        measured["rgb_read"].append(_tiler_read(slide.path, plan, params))
        shutil.rmtree(folder / "tiles.zarr", ignore_errors=True)  # the last round's store: not the tiler's work
        start = time.perf_counter()
        summary = tile_slides([slide.path], folder / "tiles.zarr", params, workers=2, progress=False)
        measured["tiler"].append(len(coords) / (time.perf_counter() - start))
        if not summary.ok or summary.n_tiles != len(coords):
            raise RuntimeError(f"the tiler wrote {summary.n_tiles} tiles, expected {len(coords)}: {summary.report()}")
        measured["native_read"].append(_tiler_read(slide.path, plan, params, public_api=False))
    naive = _naive_png(slide.path, coords[:naive_tiles], tile_px, folder / "png")
    for name, values in measured.items():
        results[f"{name}_tiles_per_s"] = round(statistics.median(values), 1)
        results[f"{name}_rounds"] = [round(v, 1) for v in values]
    results["naive_png_tiles_per_s"] = round(naive, 1)
    results["naive_tiles_measured"] = min(naive_tiles, len(coords))
    results["ratio_vs_naive_png"] = round(results["tiler_tiles_per_s"] / naive, 2)
    ratios = [t / r for t, r in zip(measured["tiler"], measured["read_limit"], strict=True)]
    results["ratio_vs_read_limit"] = round(statistics.median(ratios), 2)
    results["ratio_vs_read_limit_rounds"] = [round(r, 2) for r in ratios]
    results["ratio_vs_native_read"] = round(results["tiler_tiles_per_s"] / results["native_read_tiles_per_s"], 2)
    results["native_read_vs_read_limit"] = round(
        results["native_read_tiles_per_s"] / results["read_limit_tiles_per_s"], 2
    )
    results["peak_rss_mb"] = round(peak_memory_mb(), 1)
    return results


def run_peer_benchmark(
    size: int, tile_px: int, threads: int, folder: Path, rounds: int, envs: Path | None
) -> dict[str, Any]:
    """The tiler against tiatoolbox and lazyslide on the benchmark's phantom slide (child processes)."""
    from domainfm.studies.pathology.phantom import write_phantom_slide
    from domainfm.studies.pathology.tiling_peers import run_tiling_peers

    start = time.perf_counter()
    slide = write_phantom_slide(folder / "bench.svs", size, seed=0, mpp=0.5)
    results: dict[str, Any] = {"slide_px": [size, size], "slide_mb": round(slide.path.stat().st_size / 2**20, 1)}
    results["phantom_seconds"] = round(time.perf_counter() - start, 1)
    results.update(tile_px=tile_px, mpp=0.5, threads=threads)
    return results | run_tiling_peers(slide.path, folder, tile_px, threads, rounds, envs)


def bench_tiling(
    size: PositiveInt = 20000,
    tile_size: PositiveInt = 224,
    threads: PositiveInt = 2,
    naive_tiles: PositiveInt = 1500,
    rounds: PositiveInt = 3,
    workdir: Path | None = None,
    json: bool = False,
    peers: bool = False,
    sizes: list[PositiveInt] | None = None,
    peer_envs: Path | None = None,
) -> int:
    """Slide tiler tiles/s against a naive read_region + PNG loop and a plain two-thread read_region loop.

    With ``--peers``: the tiler against tiatoolbox and lazyslide on the same slide; with ``--sizes``: the
    tiler alone on slides of each size, tiles/s and peak RSS per size
    (:mod:`domainfm.studies.pathology.tiling_peers`).

    Args:
        size: Side of the generated phantom slide in pixels (at least 20000 for the documented figures).
        tile_size: Tile side in pixels (at 0.5 mpp on a 0.5-mpp slide).
        threads: Region-reading threads of the tiler and of the read limit.
        naive_tiles: Tiles timed for the naive PNG loop.
        rounds: Interleaved rounds of the tiler and the two read passes (medians are reported).
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
        peers: Measure tiatoolbox and lazyslide (each in its own child process) instead of the read passes.
        sizes: Slide sides to measure the tiler's growth on (e.g. ``[10000, 20000, 40000]``), instead.
        peer_envs: Folder of one Python environment per peer (``<peer_envs>/<peer>/bin/python``); by default
            ``$DOMAINFM_PEERS_ENVS``, then ``.venv-peers`` (``make bench-peers-env``), then this environment.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        if sizes:
            from domainfm.studies.pathology.tiling_peers import run_growth

            return run_growth(list(sizes), folder, tile_size, threads, rounds)
        if peers:
            return run_peer_benchmark(size, tile_size, threads, folder, rounds, peer_envs)
        return run_tiling_benchmark(size, tile_size, threads, naive_tiles, folder, rounds)

    return run_benchmark(measure, workdir, "domainfm-bench-tiling-", json)
