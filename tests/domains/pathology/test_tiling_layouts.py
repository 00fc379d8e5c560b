"""The tiler's fast paths (banded reading threads, shards linked from staging) change no byte of the store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domainfm.domains.pathology.tiling import TilingParams, band_edges, tile_slides
from domainfm.shared.tiles import TileStore, assembly
from domainfm.shared.tiles.schema import INDEX_COLUMNS
from domainfm.shared.tiles.store import CHECKSUMS
from domainfm.studies.pathology.phantom import write_phantom_slide


def _array_files(store: Path) -> dict[str, bytes]:
    """The bytes of every array file (tiles, index, companions, checksums, their metadata)."""
    return {
        p.relative_to(store).as_posix(): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).parts[0] not in ("zarr.json", "qc") and not p.name.startswith("_")
    }


def test_banded_linked_tiling_writes_the_store_of_a_plain_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    slide = write_phantom_slide(tmp_path / "a.svs", 4096, seed=1, mpp=0.25).path
    linked: list[int] = []
    real = assembly.link_raw_shard
    monkeypatch.setattr(assembly, "link_raw_shard", lambda *a, **k: linked.append(1) or real(*a, **k))
    fast = tmp_path / "fast.zarr"
    assert tile_slides([slide], fast, TilingParams(mpps=(0.25,), tile_px=224), progress=False).ok
    with monkeypatch.context() as patch:
        patch.setattr(assembly, "link_raw_shard", lambda *a, **k: None)  # every shard copied
        plain = tmp_path / "plain.zarr"  # one reading thread (the statistics depend on the batches: the same)
        params = TilingParams(mpps=(0.25,), tile_px=224, threads=1)
        assert tile_slides([slide], plain, params, progress=False).ok
    a, b = TileStore(fast), TileStore(plain)
    assert a.tiles.shape[0] > 128 and len(linked) == 2  # two shards of 128 rows (the last one partial), both linked
    assert _array_files(fast) == _array_files(plain)
    for name in INDEX_COLUMNS:
        np.testing.assert_array_equal(a.index[name], b.index[name], err_msg=name)
    np.testing.assert_array_equal(a.group[CHECKSUMS][:], b.group[CHECKSUMS][:])
    assert a.attrs["stats"] == b.attrs["stats"]
    mine = lambda sources: [{k: v for k, v in s.items() if k != "options_sha256"} for s in sources]  # noqa: E731
    assert mine(a.attrs["sources"]) == mine(b.attrs["sources"])  # the options differ: --threads
    tiles = a.tiles[:]
    values = tiles.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(a.stats["mean"], values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(a.stats["std"], values.std(1), rtol=1e-10)
    import openslide

    handle = openslide.OpenSlide(str(slide))
    for i in range(0, len(tiles), 17):  # opaque tissue: the stored tile is OpenSlide's RGB, exactly
        x, y = int(a.index["x"][i]), int(a.index["y"][i])
        rgba = np.asarray(handle.read_region((x, y), 0, (224, 224)))
        assert rgba[..., 3].min() == 255
        np.testing.assert_array_equal(tiles[i], rgba[..., :3].transpose(2, 0, 1))


def test_band_edges_split_the_tiles_evenly_by_column():
    coords = np.array([(x, y) for y in range(0, 50, 10) for x in range(0, 100, 10)] + [(0, 60), (10, 60)])
    edges = band_edges(coords, 2)
    band = np.searchsorted(edges, coords[:, 0], side="right")
    assert abs(int((band == 0).sum()) - int((band == 1).sum())) <= 5  # whole columns: 27 and 25 tiles
    assert coords[band == 0, 0].max() < coords[band == 1, 0].min()
    assert band_edges(coords, 1).size == 0
    assert set(np.searchsorted(band_edges(coords, 3), coords[:, 0], side="right")) == {0, 1, 2}
