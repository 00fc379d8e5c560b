from pathlib import Path

import numpy as np
import pytest

from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import TileStore


def write_sources(folder: Path, sizes: list[int], shape=(3, 16, 16), dtype="uint8", seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, n in enumerate(sizes):
        path = folder / f"source_{i}.npy"
        if np.dtype(dtype).kind == "f":
            np.save(path, rng.normal(0, 1, (n, *shape)).astype(dtype))
        else:
            np.save(path, rng.integers(0, 255, (n, *shape), dtype=dtype))
        paths.append(path)
    return paths


def build_store(folder: Path, sizes: list[int], codec: str = "blosc-lz4", **kwargs) -> tuple[TileStore, list[Path]]:
    sources = write_sources(folder, sizes, **kwargs)
    summary = ingest(
        sources, folder / "store.zarr", npy_spec(sources[0], codec=codec), read_npy_tiles, "test.npy", progress=False
    )
    assert summary.ok, summary.report()
    return TileStore(folder / "store.zarr"), sources


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[TileStore, list[Path]]:
    """About 3 shards of 16x16 RGB tiles (1024 tiles per shard at this size) from 4 sources."""
    return build_store(tmp_path, [1500, 0, 700, 900])
