"""``domainfm bench stream --peers``: TileStream against the loaders a user would pick instead.

The same tiles (the stream benchmark's ``.npy`` sources: 224 x 224 x 3 uint8), the same batch size, the
same two loader workers, shuffled, for ``epochs`` epochs; every loader hands the consumer decoded uint8
tensors ``[B, 3, 224, 224]``. Each peer builds its format with its own writer, as its documentation
recommends, storing the raw arrays (no image codec, as the domainfm store holds these tiles):

* ``webdataset``: ``ShardWriter`` (1,000 samples per tar shard, ``.npy`` members); read by
  ``WebDataset(shards, shardshuffle=...)`` with a 1,000-sample shuffle buffer, ``.decode()``,
  ``.batched(B)``, through ``WebLoader`` with 2 worker processes;
* ``litdata``: ``litdata.optimize`` (2 workers, 64 MB chunks); read by ``StreamingDataset(shuffle=True)``
  through ``StreamingDataLoader`` with 2 worker processes;
* ``monai``: ``CacheDataset`` (every tile cached in memory, ``cache_rate=1.0``, 2 caching workers) read by
  ``ThreadDataLoader`` (``shuffle=True``, ``num_workers=0``, as MONAI recommends over a cache).

Per peer: ``<peer>_write_s`` (building its format or cache from the sources), ``<peer>_samples_per_s``
(every epoch; the consumer with one torch thread, :func:`run_peers`), ``<peer>_peak_rss_mb`` (this
process's peak while reading; a loader's worker processes are not included) and ``ratio_vs_<peer>`` =
TileStream's samples/s over the same epochs / the peer's. A peer that is not installed is reported as
such (``pip install "domainfm[bench-peers]"``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.engine.memory import peak_memory_mb, reset_peak_memory

PEERS = ("webdataset", "litdata", "monai")
WORKERS = 2
SHARD_SAMPLES = 1000
SHUFFLE_BUFFER = 1000
MISSING = 'not installed: pip install "domainfm[bench-peers]"'


def installed(peer: str) -> bool:
    """Whether ``peer``'s package can be imported here."""
    return importlib.util.find_spec(peer) is not None


def _tiles(sources: list[Path]) -> Iterable[np.ndarray]:
    for source in sources:
        yield from np.load(source, mmap_mode="r")


def litdata_sample(item: tuple[str, int]) -> dict[str, np.ndarray]:
    """One tile for ``litdata.optimize`` (module level, so its worker processes can import it)."""
    path, row = item
    return {"tile": np.ascontiguousarray(np.load(path, mmap_mode="r")[row])}


def _to_batch(sample: Any) -> torch.Tensor:
    """The consumer's uint8 tensor from whatever the loader yields."""
    if isinstance(sample, dict):
        sample = sample["tile"]
    if isinstance(sample, list | tuple):
        sample = sample[0]
    return torch.as_tensor(sample)


def _read(make: Callable[[], Iterable[Any]], epochs: int, expected: int) -> tuple[float, float]:
    """Samples/s and peak RSS of ``epochs`` passes over ``make()``, checking shape, dtype and count."""
    reset_peak_memory()
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for sample in make():
            batch = _to_batch(sample)
            if batch.dtype != torch.uint8 or tuple(batch.shape[1:]) != (3, 224, 224):
                raise RuntimeError(f"a peer delivered {batch.dtype} {tuple(batch.shape)}, not uint8 [B, 3, 224, 224]")
            n += len(batch)
    seconds = time.perf_counter() - start
    if n != expected * epochs:
        raise RuntimeError(f"a peer delivered {n} samples over {epochs} epochs, expected {expected * epochs}")
    return n / seconds, peak_memory_mb()


def _webdataset(sources: list[Path], folder: Path, batch: int, epochs: int, n: int) -> dict[str, float]:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=SHARD_SAMPLES, verbose=0) as sink:
        for i, tile in enumerate(_tiles(sources)):
            sink.write({"__key__": f"{i:08d}", "npy": np.ascontiguousarray(tile)})
    written = time.perf_counter() - start
    shards = sorted(str(p) for p in folder.glob("shard-*.tar"))

    def make() -> Iterable[Any]:
        dataset = (
            wds.WebDataset(shards, shardshuffle=len(shards), nodesplitter=wds.split_by_node, empty_check=False)
            .shuffle(SHUFFLE_BUFFER)
            .decode()
            .to_tuple("npy")
            .batched(batch, partial=True)
        )
        return wds.WebLoader(dataset, batch_size=None, num_workers=WORKERS)

    rate, peak = _read(make, epochs, n)
    return {"write_s": written, "samples_per_s": rate, "peak_rss_mb": peak}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 (this process and the worker processes it starts) goes to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _litdata(sources: list[Path], folder: Path, batch: int, epochs: int, n: int) -> dict[str, float]:
    import litdata

    items = [(str(s), row) for s in sources for row in range(len(np.load(s, mmap_mode="r")))]
    start = time.perf_counter()
    litdata.optimize(fn=litdata_sample, inputs=items, output_dir=str(folder), chunk_bytes="64MB", num_workers=WORKERS)
    written = time.perf_counter() - start

    def make() -> Iterable[Any]:
        dataset = litdata.StreamingDataset(str(folder), shuffle=True)
        return litdata.StreamingDataLoader(dataset, batch_size=batch, num_workers=WORKERS)

    rate, peak = _read(make, epochs, n)
    return {"write_s": written, "samples_per_s": rate, "peak_rss_mb": peak}


def _monai(sources: list[Path], folder: Path, batch: int, epochs: int, n: int) -> dict[str, float]:
    from monai.data import CacheDataset, ThreadDataLoader

    start = time.perf_counter()
    data = [{"tile": np.array(tile)} for tile in _tiles(sources)]  # copies in memory, not views of the files
    dataset = CacheDataset(data, transform=None, cache_rate=1.0, num_workers=WORKERS, progress=False)
    written = time.perf_counter() - start

    def make() -> Iterable[Any]:
        return ThreadDataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)

    rate, peak = _read(make, epochs, n)
    return {"write_s": written, "samples_per_s": rate, "peak_rss_mb": peak}


def _domainfm(store: Path, batch: int, epochs: int, n: int) -> dict[str, float]:
    from domainfm.shared.tiles.store import TileStore, forget_verified
    from domainfm.shared.tiles.stream import TileStream

    forget_verified()  # the first epoch checks every shard, as a user's first epoch does
    stream = TileStream(TileStore(store), batch, device="cpu", seed=0, normalize=False)
    rate, peak = _read(lambda: ({"tile": b["tiles"]} for b in stream), epochs, n)
    return {"samples_per_s": rate, "peak_rss_mb": peak}


def run_peers(sources: list[Path], store: Path, workdir: Path, batch: int, epochs: int = 2) -> dict[str, Any]:
    """Measures TileStream and every installed peer on ``sources``; returns the JSON fields.

    Every loader's consumer runs with one torch intra-op thread (as the loaders' worker processes do):
    on a busy 2-core machine two OpenMP threads per collating ``torch.stack`` made MONAI's loader and a
    plain DataLoader 10-25x slower, which would measure the machine, not the loader.
    """
    from domainfm.shared.tiles.packs import one_torch_thread

    with one_torch_thread():
        return _run_peers(sources, store, workdir, batch, epochs)


def _run_peers(sources: list[Path], store: Path, workdir: Path, batch: int, epochs: int) -> dict[str, Any]:
    n = sum(len(np.load(s, mmap_mode="r")) for s in sources)
    results: dict[str, Any] = {"peer_epochs": epochs, "peer_workers": WORKERS}
    ours = _domainfm(store, batch, epochs, n)
    results["tilestream_samples_per_s"] = round(ours["samples_per_s"], 1)
    results["tilestream_peak_rss_mb"] = round(ours["peak_rss_mb"], 1)
    runners = {"webdataset": _webdataset, "litdata": _litdata, "monai": _monai}
    for peer in PEERS:
        if not installed(peer):
            results[peer] = MISSING
            continue
        folder = workdir / f"peer-{peer}"
        try:
            measured = runners[peer](sources, folder, batch, epochs, n)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # this benchmark's own folder
        results[f"{peer}_version"] = importlib.metadata.version(peer)
        for key, value in measured.items():
            results[f"{peer}_{key}"] = round(value, 1)
        results[f"ratio_vs_{peer}"] = round(ours["samples_per_s"] / measured["samples_per_s"], 2)
    return results
