"""``domainfm bench stream``: TileStream against a PNG DataLoader and the codec's decode limit, in one run.

On a generated store of N tissue-like 224x224x3 uint8 tiles (written by the ingest engine):

(a) ``stream``: TileStream samples/s delivered to the device (shuffled, this machine's default device),
    checking every shard file against its recorded CRC-32C as the first read of a store does (the
    process's record of checked files and the store's verification stamps are cleared before the pass);
    ``stream_stamped`` the next pass as a new process sees it (its own record cleared, the stamps the
    checked pass left kept: :mod:`domainfm.shared.tiles.stamps`); ``stream_unchecked`` the same with
    ``verify_reads="off"``; ``checksum_cost_ratio`` and ``stamped_cost_ratio`` the first two against it
    (1.0: the checks cost nothing);
(b) ``png_dataloader``: ``torch.utils.data.DataLoader`` with 2 workers over the same tiles saved as PNG
    files, shuffled, decoding with Pillow;
(c) ``decode_limit``: one tight loop on one thread mapping every shard file and decompressing each inner
    chunk with the same codec (numcodecs) into a preallocated array: what decoding alone allows. For an
    uncompressed store "decoding" is copying each chunk out of the mapped file.

The store's codec is what ingest chooses for these tiles (``codec="auto"``: textured tissue compresses
about 1.01x, so they are stored uncompressed, as the pathology tiler stores them); ``--codec blosc-lz4``
measures the compressed layout instead.

``peak_rss_mb`` is the whole run's peak (data generation and ingest included); ``stream_peak_rss_mb``
the peak while streaming and ``stream_rss_increase_mb`` what streaming added to the process (Linux: freed
heap is returned to the OS and the peak counter reset before each stream pass).

Ratios are taken within this one run, so they hold on a noisy machine.
"""

from __future__ import annotations

import mmap
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from domainfm.shared.config import PositiveInt
from domainfm.shared.engine.memory import peak_memory_mb, reset_peak_memory

SOURCE_TILES = 1000


def tissue_tiles(n: int, seed: int, size: int = 224) -> np.ndarray:
    """``n`` tissue-like RGB tiles: smooth stained texture with nuclei-like dots, shifted per tile."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.empty((8, 3, size, size), np.uint8)
    for k in range(8):
        phase = rng.uniform(0, 6.28, 4)
        field = np.sin(9 * xx + phase[0]) * np.cos(7 * yy + phase[1]) + 0.5 * np.sin(23 * (xx + yy) + phase[2])
        dots = (np.sin(61 * xx + phase[3]) * np.sin(59 * yy) > 0.93).astype(np.float64)
        noise = rng.normal(0, 9, (3, size, size))
        pink = np.array([225, 160, 200])[:, None, None] - np.array([40, 60, 30])[:, None, None] * field
        base[k] = np.clip(pink - np.array([120, 140, 60])[:, None, None] * dots + noise, 0, 255).astype(np.uint8)
    shifts = rng.integers(0, size, (n, 2))
    picks = rng.integers(0, 8, n)
    tiles = np.empty((n, 3, size, size), np.uint8)
    for i, (pick, shift) in enumerate(zip(picks, shifts, strict=True)):
        tiles[i] = np.roll(base[pick], tuple(shift), axis=(1, 2))
    return tiles


def _make_sources(folder: Path, n: int) -> list[Path]:
    paths = []
    for i, start in enumerate(range(0, n, SOURCE_TILES)):
        path = folder / f"tiles_{i:04d}.npy"
        np.save(path, tissue_tiles(min(SOURCE_TILES, n - start), seed=i))
        paths.append(path)
    return paths


class _PngTiles(torch.utils.data.Dataset):
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())


def _write_pngs(sources: list[Path], folder: Path) -> list[Path]:
    from PIL import Image

    def write(item: tuple[int, np.ndarray]) -> Path:
        path = folder / f"{item[0]:07d}.png"
        Image.fromarray(item[1].transpose(1, 2, 0)).save(path, compress_level=1)
        return path

    files: list[Path] = []
    with ThreadPoolExecutor(2) as pool:
        for source in sources:
            tiles = np.load(source)
            files += pool.map(write, ((len(files) + i, t) for i, t in enumerate(tiles)))
    return files


def decode_limit(store_path: Path) -> tuple[int, float]:
    """Tiles decoded per second by one thread doing nothing else (see module docstring (c))."""
    from domainfm.shared.tiles.shards import EMPTY, ShardDecoder
    from domainfm.shared.tiles.store import TileStore

    store = TileStore(store_path)
    shard_decoder = ShardDecoder(store.tiles)
    if not shard_decoder.supported:
        raise ValueError(f"{store_path}: the decode limit needs a sharded layout with a numcodecs codec")
    decoder = shard_decoder.decoder  # numcodecs Blosc or Zstd; None when the chunks are stored uncompressed
    tile_bytes = int(np.prod(store.spec.tile_shape)) * np.dtype(store.spec.dtype).itemsize
    per_chunk = int(store.tiles.chunks[0])
    out = np.empty(store.shard_rows * tile_bytes, np.uint8)
    start, n = time.perf_counter(), 0
    for shard, (lo, hi) in enumerate(store.shard_ranges()):
        with (
            open(store.shard_file(shard), "rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data,
        ):
            chunks = store.shard_rows // per_chunk  # the index covers the full shard grid, even at the array's end
            index = np.frombuffer(data[len(data) - 16 * chunks - 4 : len(data) - 4], "<u8").reshape(-1, 2)
            for k, (offset, nbytes) in enumerate(index.tolist()):
                if offset == EMPTY:  # inner chunks past the end of the array are not stored
                    continue
                target = out[k * per_chunk * tile_bytes :][: per_chunk * tile_bytes]  # edge chunks are stored whole
                if decoder is None:
                    target[:] = np.frombuffer(data, np.uint8, count=nbytes, offset=offset)
                else:
                    view = memoryview(data)[offset : offset + nbytes]
                    decoder.decode(view, out=target)
                    view.release()
        n += hi - lo
    return n, n / (time.perf_counter() - start)


def run_stream_benchmark(
    tiles: int,
    batch_size: int,
    device: str,
    png_tiles: int | None,
    workdir: Path,
    rounds: int = 3,
    codec: str = "auto",
    peers: bool = False,
) -> dict:
    """Builds the data in ``workdir`` and measures (a), (b), (c) (and the peers); returns the JSON fields."""
    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
    from domainfm.shared.tiles.stamps import STAMPS, settle, stamped_files
    from domainfm.shared.tiles.store import TileStore, forget_verified
    from domainfm.shared.tiles.stream import TileStream

    sources = _make_sources(workdir, tiles)
    store_path = workdir / "store.zarr"
    t0 = time.perf_counter()
    summary = ingest(
        sources,
        store_path,
        npy_spec(sources[0], "pathology", ["R", "G", "B"], codec),
        read_npy_tiles,
        "bench.npy",
        progress=False,
    )
    ingest_rate = summary.n_tiles / (time.perf_counter() - t0)
    pngs = _write_pngs(sources, workdir)
    peer_results = {}
    if peers:  # before the sources go: every peer builds its own format from them
        from domainfm.studies.shared.tiles.peers import run_peers

        peer_results = run_peers(sources, store_path, workdir, batch_size)
    for source in sources:
        source.unlink()
    results: dict = {
        "tiles": tiles,
        "batch_size": batch_size,
        "rounds": rounds,
        "ingest_tiles_per_s": round(ingest_rate, 1),
    }
    # (a) and (c) interleaved, `rounds` times, medians reported: the machine's noise hits both alike
    samples: dict[str, list[float]] = {
        "stream": [],
        "stream_stamped": [],
        "stream_unchecked": [],
        "stream_normalized": [],
        "decode_limit": [],
    }
    phase_peaks = [peak_memory_mb()]  # data generation and ingest
    settle(store_path / "tiles")  # shard files written less than 2 s before a check are never stamped
    stamps = []
    stream_rss = []
    for _ in range(rounds):
        samples["decode_limit"].append(decode_limit(store_path)[1])
        for name, normalize, checks in (
            ("stream", False, "once"),
            ("stream_stamped", False, "once"),
            ("stream_unchecked", False, "off"),
            ("stream_normalized", True, "once"),
        ):
            before = reset_peak_memory()
            forget_verified()  # as a new process: nothing checked in memory
            if name != "stream_stamped":  # and no stamps: the pass pays every shard's checksum
                (store_path / STAMPS).unlink(missing_ok=True)
            store = TileStore(store_path, verify_reads=checks)
            stream = TileStream(store, batch_size, device=device, seed=0, normalize=normalize)
            start, n = time.perf_counter(), 0
            for batch in stream:
                n += len(batch["tiles"])
            if stream.device.type == "cuda":
                torch.cuda.synchronize(stream.device)
            samples[name].append(n / (time.perf_counter() - start))
            if name == "stream":
                stamps.append(stamped_files(store_path))
            stream_rss.append((peak_memory_mb(), peak_memory_mb() - before))
            if n != tiles:
                raise RuntimeError(f"the stream delivered {n} of {tiles} tiles")
    for name, values in samples.items():
        results[f"{name}_samples_per_s"] = round(statistics.median(values), 1)
        results[f"{name}_rounds"] = [round(v, 1) for v in values]
    results["device"] = str(stream.device)
    # (b) PNG files through a 2-worker DataLoader (a subset when png_tiles is set)
    files = pngs[: png_tiles or len(pngs)]
    loader = torch.utils.data.DataLoader(
        _PngTiles(files), batch_size=batch_size, shuffle=True, num_workers=2, pin_memory=stream.device.type == "cuda"
    )
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch.to(stream.device, non_blocking=True))
    results["png_dataloader_samples_per_s"] = round(n / (time.perf_counter() - start), 1)
    results["png_tiles_measured"] = n
    rate = results["decode_limit_samples_per_s"]
    results["ratio_vs_png_dataloader"] = round(
        results["stream_samples_per_s"] / results["png_dataloader_samples_per_s"], 2
    )
    results["ratio_vs_decode_limit"] = round(results["stream_samples_per_s"] / rate, 2)
    results["checksum_cost_ratio"] = round(
        results["stream_samples_per_s"] / results["stream_unchecked_samples_per_s"], 2
    )
    results["stamped_files"] = min(stamps)  # after each checked first pass: every shard file, when stamping works
    results["stamped_cost_ratio"] = round(
        results["stream_stamped_samples_per_s"] / results["stream_unchecked_samples_per_s"], 2
    )
    results["normalized_ratio_vs_decode_limit"] = round(results["stream_normalized_samples_per_s"] / rate, 2)
    results["stream_peak_rss_mb"] = round(max(peak for peak, _ in stream_rss), 1)
    results["stream_rss_increase_mb"] = round(max(increase for _, increase in stream_rss), 1)
    phase_peaks += [peak for peak, _ in stream_rss] + [peak_memory_mb()]
    results["peak_rss_mb"] = round(max(phase_peaks), 1)
    results["layout"] = TileStore(store_path).attrs["layout"]
    results.update(peer_results)
    return results


def bench_stream(
    tiles: PositiveInt = 20000,
    batch_size: PositiveInt = 256,
    device: str = "auto",
    png_tiles: PositiveInt | None = None,
    rounds: PositiveInt = 3,
    workdir: Path | None = None,
    json: bool = False,
    codec: str = "auto",
    peers: bool = False,
) -> int:
    """TileStream samples/s against a 2-worker PNG DataLoader and the codec's decode limit.

    Args:
        tiles: Tiles in the generated store (224x224x3 uint8).
        batch_size: Tiles per batch for both loaders.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        png_tiles: Measure the PNG loader on this many tiles only (all when unset).
        rounds: Interleaved rounds of the stream and decode-limit passes (medians are reported).
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
        codec: The store's codec: ``auto`` (what ingest chooses for these tiles: none), ``blosc-lz4``,
            ``zstd-1`` or ``none``.
        peers: Also measure webdataset, litdata and MONAI's ThreadDataLoader over a CacheDataset on the same
            tiles, two shuffled epochs each (:mod:`domainfm.studies.shared.tiles.peers`; the optional extra
            ``bench-peers``); a peer that is not installed is reported as such.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        return run_stream_benchmark(tiles, batch_size, device, png_tiles, folder, rounds, codec, peers)

    return run_benchmark(measure, workdir, "domainfm-bench-", json)
