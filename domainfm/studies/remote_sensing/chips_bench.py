"""``domainfm bench chips --peers``: remote-sensing chips from GeoTIFFs, domainfm's store against TorchGeo.

Generated in the work folder with rasterio: ``files`` multi-band GeoTIFFs (``bands`` bands of uint16
reflectance-like values, ``side`` x ``side`` px, 10 m pixels in UTM 32N, tiled 256 px, DEFLATE, as
Sentinel-2 L2A products are often kept), placed apart so no chip spans two files. Both pipelines hand the
consumer the same thing: float32 tensors ``[batch, bands, chip, chip]`` of every ``chip`` x ``chip``
window of every file, once per epoch, with two worker threads or processes:

(a) ``domainfm``: ``remote-sensing ingest`` (:func:`~domainfm.domains.remote_sensing.data.ingest_chips`,
    2 workers) once into a tile store, then :class:`~domainfm.shared.tiles.stream.TileStream`
    (shuffled, 2 reading threads, ``normalize=False``) for each epoch;
(b) ``torchgeo``: ``RasterDataset(paths=files)`` (native CRS and resolution, file handles cached, as the
    defaults) sampled by ``GridGeoSampler(size=chip, stride=chip)`` through a ``DataLoader`` with 2
    worker processes and ``collate_fn=stack_samples`` (TorchGeo's documented way to read a raster set
    chip by chip; the grid is not shuffled, so TorchGeo reads each file in order).

Reported: setup (domainfm's ingest; TorchGeo's dataset index), the seconds of every epoch, and chips/s
over one epoch and over ``epochs`` epochs counting setup: ``ratio_vs_torchgeo_1_epoch`` and
``ratio_vs_torchgeo_<epochs>_epochs`` are domainfm's chips/s over TorchGeo's, so the ingest counts against
domainfm (``ratio_vs_torchgeo_by_epochs``: the same after 1, 2, ... epochs);
``ratio_vs_torchgeo_per_epoch`` compares one epoch after setup. Both pipelines' first epochs must deliver
the same number of chips and the same sum of values (``checksum_match``), so they read the same data.
The consumer keeps torch to one intra-op thread, as in ``bench stream --peers``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.config import PositiveInt

WORKERS = 2
MISSING = 'not installed: pip install "domainfm[bench-peers]"'


def write_rasters(folder: Path, files: int, side: int, bands: int, seed: int = 0) -> list[Path]:
    """``files`` tiled, DEFLATE-compressed uint16 GeoTIFFs of ``bands`` bands, 10 m pixels, 1 km apart."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    paths = []
    for i in range(files):
        origin_x = 300000.0 + i * (side * 10 + 1000)  # 1 km of nothing between files
        profile = {
            "driver": "GTiff", "width": side, "height": side, "count": bands, "dtype": "uint16",
            "crs": "EPSG:32632", "transform": from_origin(origin_x, 5000000.0, 10.0, 10.0),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        }  # fmt: skip
        path = folder / f"scene_{i:03d}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            for b in range(bands):
                phase = rng.uniform(0, 2 * np.pi, 2)
                field = 3000 + 1500 * np.sin(6 * xx + phase[0]) * np.cos(4 * yy + phase[1])
                noise = rng.normal(0, 200, (side, side))
                dst.write(np.clip(field + noise, 1, 10000).astype(np.uint16), b + 1)
        paths.append(path)
    return paths


def _consume(batches: Iterable[torch.Tensor], shape: tuple[int, ...], checksum: bool) -> tuple[int, float]:
    """Chips and (optionally) the float64 sum of every value, checking dtype and shape of each batch."""
    n, total = 0, 0.0
    for batch in batches:
        if batch.dtype != torch.float32 or tuple(batch.shape[1:]) != shape:
            raise RuntimeError(f"a pipeline delivered {batch.dtype} {tuple(batch.shape)}, not float32 [B, *{shape}]")
        n += len(batch)
        if checksum:
            total += float(batch.sum(dtype=torch.float64))
    return n, total


def _domainfm(files: list[Path], folder: Path, chip: int, batch: int, epochs: int, shape: tuple) -> dict[str, Any]:
    from domainfm.domains.remote_sensing.data import ingest_chips
    from domainfm.shared.tiles.store import TileStore, forget_verified
    from domainfm.shared.tiles.stream import TileStream

    start = time.perf_counter()
    summary = ingest_chips(files, folder / "chips.zarr", chip=chip, workers=WORKERS, progress=False)
    setup = time.perf_counter() - start
    if not summary.ok:
        raise RuntimeError(summary.report())
    forget_verified()  # the first epoch checks every shard, as a user's first epoch does
    stream = TileStream(TileStore(folder / "chips.zarr"), batch, device="cpu", seed=0, normalize=False, threads=WORKERS)
    seconds, counts, checksum = [], [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        n, total = _consume((b["tiles"] for b in stream), shape, epoch == 0)
        seconds.append(time.perf_counter() - start)
        counts.append(n)
        checksum = total if epoch == 0 else checksum
    return {"setup_s": setup, "epoch_s": seconds, "chips": counts, "checksum": checksum}


def _torchgeo(files: list[Path], chip: int, batch: int, epochs: int, shape: tuple) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    start = time.perf_counter()
    dataset = RasterDataset(paths=[str(f) for f in files])
    sampler = GridGeoSampler(dataset, size=chip, stride=chip)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=WORKERS, collate_fn=stack_samples)
    setup = time.perf_counter() - start
    seconds, counts, checksum = [], [], 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        n, total = _consume((b["image"] for b in loader), shape, epoch == 0)
        seconds.append(time.perf_counter() - start)
        counts.append(n)
        checksum = total if epoch == 0 else checksum
    return {"setup_s": setup, "epoch_s": seconds, "chips": counts, "checksum": checksum}


def run_chips_benchmark(
    folder: Path, files: int, side: int, bands: int, chip: int, batch: int, epochs: int, peers: bool
) -> dict[str, Any]:
    """Writes the rasters in ``folder`` and measures domainfm (and TorchGeo when ``peers``); the JSON fields."""
    from domainfm.shared.tiles.packs import one_torch_thread

    paths = write_rasters(folder / "rasters", files, side, bands)
    shape = (bands, chip, chip)
    results: dict[str, Any] = {
        "files": files, "side_px": side, "bands": bands, "chip": chip, "batch": batch, "epochs": epochs,
        "workers": WORKERS, "raster_mb": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
    }  # fmt: skip
    with one_torch_thread():
        measured = {"domainfm": _domainfm(paths, folder, chip, batch, epochs, shape)}
        if peers and importlib.util.find_spec("torchgeo") is not None:
            measured["torchgeo"] = _torchgeo(paths, chip, batch, epochs, shape)
    expected = (side // chip) ** 2 * files
    for tool, m in measured.items():
        if any(n != expected for n in m["chips"]):
            raise RuntimeError(f"{tool} delivered {m['chips']} chips per epoch, expected {expected}")
        once = m["setup_s"] + m["epoch_s"][0]
        every = m["setup_s"] + sum(m["epoch_s"])
        results[f"{tool}_setup_s"] = round(m["setup_s"], 2)
        results[f"{tool}_epoch_s"] = [round(s, 2) for s in m["epoch_s"]]
        results[f"{tool}_chips_per_s_1_epoch"] = round(expected / once, 1)
        results[f"{tool}_chips_per_s_{epochs}_epochs"] = round(expected * epochs / every, 1)
        results[f"{tool}_chips_per_s_per_epoch"] = round(expected / statistics.median(m["epoch_s"]), 1)
    results["chips_per_epoch"] = expected
    if "torchgeo" in measured:
        results["torchgeo_version"] = importlib.metadata.version("torchgeo")
        for key in ("1_epoch", f"{epochs}_epochs", "per_epoch"):
            ours, theirs = results[f"domainfm_chips_per_s_{key}"], results[f"torchgeo_chips_per_s_{key}"]
            results[f"ratio_vs_torchgeo_{key}"] = round(ours / theirs, 2)
        ours_s, theirs_s = (
            np.cumsum(m["epoch_s"]) + m["setup_s"] for m in (measured["domainfm"], measured["torchgeo"])
        )
        results["ratio_vs_torchgeo_by_epochs"] = [round(t / o, 2) for o, t in zip(ours_s, theirs_s, strict=True)]
        a, b = measured["domainfm"]["checksum"], measured["torchgeo"]["checksum"]
        results["checksum_match"] = bool(abs(a - b) <= 1e-9 * max(abs(a), 1.0))
    elif peers:
        results["torchgeo"] = MISSING
    return results


def bench_chips(
    files: PositiveInt = 16,
    side: PositiveInt = 1024,
    bands: PositiveInt = 6,
    chip: PositiveInt = 128,
    batch: PositiveInt = 32,
    epochs: PositiveInt = 5,
    peers: bool = False,
    workdir: Path | None = None,
    json: bool = False,
) -> int:
    """Remote-sensing chips from multi-band GeoTIFFs: domainfm (ingest once + stream) against TorchGeo.

    Args:
        files: Generated GeoTIFFs.
        side: Side of each GeoTIFF in pixels.
        bands: Bands per GeoTIFF.
        chip: Chip side in pixels (a multiple of 32, as ``remote-sensing ingest`` requires).
        batch: Chips per batch at the consumer.
        epochs: Epochs read (one-epoch figures come from the first).
        peers: Also measure TorchGeo's RasterDataset + GridGeoSampler + DataLoader.
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        return run_chips_benchmark(folder, files, side, bands, chip, batch, epochs, peers)

    return run_benchmark(measure, workdir, "domainfm-bench-chips-", json)
