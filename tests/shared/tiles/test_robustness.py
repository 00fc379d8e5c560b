"""Bad input and concurrency cases found in review: each must fail clearly or keep every value."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import StoreError, TileStore

from .conftest import write_sources


def _scored_reader(path: Path):
    tiles = np.load(path)
    yield TileBatch(
        tiles,
        companions={"score": np.arange(len(tiles), dtype=np.int32) + 1, "note": [f"n{i}" for i in range(len(tiles))]},
    )


def test_small_companions_survive_parallel_assembly(tmp_path: Path):
    source = tmp_path / "many.npy"
    np.save(source, np.random.default_rng(0).integers(0, 255, (5000, 1, 4, 4), dtype=np.uint8))
    spec = StoreSpec(
        "generic",
        (1, 4, 4),
        "uint8",
        [{"name": "grey"}],
        companions={"score": Companion((), "int32"), "note": Companion((), "str")},
    )
    summary = ingest([source], tmp_path / "s.zarr", spec, _scored_reader, "test", workers=2, progress=False)
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    assert len(store.shard_ranges()) > 1
    np.testing.assert_array_equal(store.companion("score")[:], np.arange(5000) + 1)
    assert list(store.companion("note")[:]) == [f"n{i}" for i in range(5000)]


def test_overwrite_never_deletes_what_is_not_a_tile_store(tmp_path: Path):
    sources = write_sources(tmp_path / "src", [10])
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match="is not a tile store"):
        ingest(sources, folder, npy_spec(sources[0]), read_npy_tiles, "t", overwrite=True, progress=False)
    assert (folder / "thesis.tex").read_text() == "years of work"
    array_path = tmp_path / "array.zarr"
    zarr.create_array(array_path, shape=(4,), dtype="int32")[:] = 7
    with pytest.raises(StoreError, match="not a domainfm tile store"):
        ingest(sources, array_path, npy_spec(sources[0]), read_npy_tiles, "t", overwrite=True, progress=False)
    assert (zarr.open_array(array_path)[:] == 7).all()


def test_one_source_under_two_spellings_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sources = write_sources(tmp_path, [10])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="sources listed twice"):
        ingest(
            [sources[0], Path("./source_0.npy")],
            tmp_path / "s.zarr",
            npy_spec(sources[0]),
            read_npy_tiles,
            "t",
            progress=False,
        )


def test_lossy_dtype_is_a_failed_source_not_a_silent_cast(tmp_path: Path):
    good = write_sources(tmp_path, [10])[0]
    floats = tmp_path / "floats.npy"
    np.save(floats, np.random.default_rng(0).random((5, 3, 16, 16)))
    summary = ingest([good, floats], tmp_path / "s.zarr", npy_spec(good), read_npy_tiles, "t", progress=False)
    assert list(summary.failed) == [str(floats)]
    assert "reader gave float64 tiles; the store holds uint8" in summary.failed[str(floats)]


def test_changed_reader_version_redoes_finished_fragments(tmp_path: Path):
    sources = write_sources(tmp_path, [10, 12])
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"x")  # keeps the store partial, so its fragments stay
    out = tmp_path / "s.zarr"
    first = ingest([*sources, bad], out, npy_spec(sources[0]), read_npy_tiles, "t", "1", progress=False)
    assert sorted(first.done) == sorted(map(str, sources))
    again = ingest([*sources, bad], out, npy_spec(sources[0]), read_npy_tiles, "t", "1", progress=False)
    assert sorted(again.skipped) == sorted(map(str, sources))
    with pytest.raises(StoreError, match="reader version: '1' -> '2'"):  # never mixed silently
        ingest([*sources, bad], out, npy_spec(sources[0]), read_npy_tiles, "t", "2", progress=False)
    newer = ingest([*sources, bad], out, npy_spec(sources[0]), read_npy_tiles, "t", "2", overwrite=True, progress=False)
    assert newer.skipped == [] and sorted(newer.done) == sorted(map(str, sources))
