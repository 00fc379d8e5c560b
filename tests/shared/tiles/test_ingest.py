import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from domainfm.cli import main
from domainfm.shared.tiles.ingest import STAGING, ingest
from domainfm.shared.tiles.layout import choose_codec
from domainfm.shared.tiles.schema import INDEX_COLUMNS
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import StoreError, TileStore

from .conftest import build_store, write_sources

SIZES = [1500, 0, 700, 900]


def assert_same_store(a: TileStore, b: TileStore) -> None:
    assert a.attrs["status"] == b.attrs["status"] == "complete"
    np.testing.assert_array_equal(a.tiles[:], b.tiles[:])
    for name in INDEX_COLUMNS:
        np.testing.assert_array_equal(a.index[name], b.index[name], err_msg=name)
    assert a.stats == b.stats
    assert [s["n_tiles"] for s in a.sources] == [s["n_tiles"] for s in b.sources]
    assert not (a.path / STAGING).exists() and not (b.path / STAGING).exists()


def test_store_holds_every_tile_in_source_order(small_store):
    store, sources = small_store
    arrays = [np.load(s) for s in sources]
    expected = np.concatenate(arrays)
    np.testing.assert_array_equal(store.tiles[:], expected)
    np.testing.assert_array_equal(store.index["source"], np.repeat(np.arange(4), SIZES))
    np.testing.assert_array_equal(store.index["x"], np.concatenate([np.arange(n) for n in SIZES]))
    per_channel = expected.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(store.stats["mean"], per_channel.mean(1), rtol=1e-12)
    np.testing.assert_allclose(store.stats["std"], per_channel.std(1), rtol=1e-10)
    assert [s["n_tiles"] for s in store.sources] == SIZES
    assert all(s["status"] == "done" and s["size"] > 0 and s["sha256_head"] for s in store.sources)
    assert store.attrs["layout"] == {"tiles_per_chunk": 64, "tiles_per_shard": 1024, "codec": "blosc-lz4"}
    assert store.tiles.shards[0] == 1024 and not (store.path / STAGING).exists()


def test_rerun_of_a_complete_store_does_nothing(small_store):
    store, sources = small_store
    before = (store.path / "tiles" / "c" / "0" / "0" / "0" / "0").stat().st_mtime_ns
    spec = npy_spec(sources[0], codec="blosc-lz4")  # the fixture's spec
    summary = ingest(sources, store.path, spec, read_npy_tiles, "test.npy", progress=False)
    assert summary.ok and summary.skipped == [str(s) for s in sources] and summary.n_tiles == len(store)
    assert (store.path / "tiles" / "c" / "0" / "0" / "0" / "0").stat().st_mtime_ns == before
    with pytest.raises(
        StoreError,
        match=r"complete store of other sources \(removed .*source_2.npy; removed .*source_3.npy\); pass --overwrite",
    ):
        ingest(sources[:2], store.path, spec, read_npy_tiles, "test.npy", progress=False)


def _ingest_command(sources: list[Path], out: Path, workers: int) -> list[str]:
    files = [str(source) for source in sources]
    return [sys.executable, "-m", "domainfm", "tiles", "ingest", *files, "--out", str(out), "--workers", str(workers)]


def _cli_ingest(sources: list[Path], out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = _ingest_command(sources, out, workers=1)
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("point", ["batch:5", "source:2", "shard:2", "attrs:1"])
def test_killed_ingest_resumes_to_the_same_store(tmp_path: Path, point: str):
    reference, sources = build_store(tmp_path / "clean", SIZES)
    out = tmp_path / "killed.zarr"
    killed = _cli_ingest(sources, out, {"DOMAINFM_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with pytest.raises(StoreError, match="ingest has not finished"):
        TileStore(out)
    resumed = _cli_ingest(sources, out)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_store(TileStore(out), reference)


def test_ingest_killed_at_a_random_moment_resumes(tmp_path: Path):
    sources = write_sources(tmp_path, [300] * 24, shape=(3, 64, 64))
    out = tmp_path / "store.zarr"
    command = _ingest_command(sources, out, workers=2)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not any((out / STAGING).glob("*/journal.jsonl")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _cli_ingest(sources, out).returncode == 0
    reference = ingest(sources, tmp_path / "ref.zarr", npy_spec(sources[0]), read_npy_tiles, "x", progress=False)
    assert reference.ok
    assert_same_store(TileStore(out), TileStore(tmp_path / "ref.zarr"))


def test_failed_source_is_recorded_and_the_rest_ingested(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    sources = write_sources(tmp_path, [50, 60])
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not an array")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3, 8, 8), np.uint8))
    out = tmp_path / "store.zarr"
    assert main(["tiles", "ingest", str(sources[0]), str(broken), str(wrong), str(sources[1]), "--out", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"FAILED {broken}: SourceError: {broken} is not a readable .npy array: it has no .npy header" in report
    assert f"FAILED {wrong}: ValueError: reader gave tiles of shape (3, 8, 8), the store holds (3, 16, 16)" in report
    with pytest.warns(UserWarning, match="sources failed during ingest"):
        store = TileStore(out)
    assert len(store) == 110 and store.attrs["status"] == "partial"
    assert [s["status"] for s in store.sources] == ["done", "failed", "failed", "done"]
    # Fixing the sources and rerunning the same command retries only the failed ones.
    np.save(broken, np.zeros((5, 3, 16, 16), np.uint8))
    np.save(wrong, np.ones((4, 3, 16, 16), np.uint8))
    assert main(["tiles", "ingest", str(sources[0]), str(broken), str(wrong), str(sources[1]), "--out", str(out)]) == 0
    assert "2 already done, 0 failed" in capsys.readouterr().out
    store = TileStore(out)
    assert len(store) == 119 and store.attrs["status"] == "complete"
    np.testing.assert_array_equal(store.index["source"], np.repeat([0, 1, 2, 3], [50, 5, 4, 60]))


def test_processes_and_distributed_schedulers_give_the_same_store(tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    reference, sources = build_store(tmp_path / "threads", [300, 200, 100])
    spec = npy_spec(sources[0])
    by_processes = ingest(sources, tmp_path / "p.zarr", spec, read_npy_tiles, "x", processes=True, progress=False)
    assert by_processes.ok
    assert_same_store(TileStore(tmp_path / "p.zarr"), reference)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        on_cluster = ingest(
            sources, tmp_path / "d.zarr", spec, read_npy_tiles, "x", scheduler=cluster.scheduler_address, progress=False
        )
    assert on_cluster.ok
    assert_same_store(TileStore(tmp_path / "d.zarr"), reference)


def test_float_tiles_with_validity_companion(tmp_path: Path):
    from domainfm.shared.tiles.schema import Companion, StoreSpec

    rng = np.random.default_rng(3)
    chips = rng.normal(250, 20, (40, 14, 8, 8)).astype(np.float32)
    valid = (rng.random((40, 1, 8, 8)) > 0.2).astype(np.uint8)
    chips[np.broadcast_to(valid == 0, chips.shape)] = np.nan
    source = tmp_path / "granule.npy"
    np.save(source, chips)
    spec = StoreSpec(
        "remote_sensing",
        (14, 8, 8),
        "float32",
        [{"name": f"band{b}"} for b in range(14)],
        companions={"valid": Companion((1, 8, 8), "uint8"), "note": Companion((), "str")},
    )
    ingest([source], tmp_path / "s.zarr", spec, _granule_reader, "test.granule", progress=False)
    store = TileStore(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.companion("valid")[:], valid)
    assert store.companion("note")[3] == "chip 3"
    keep = np.broadcast_to(valid == 1, chips.shape)
    np.testing.assert_allclose(store.stats["mean"][0], chips[:, 0][keep[:, 0]].astype(np.float64).mean(), rtol=1e-12)
    assert store.tiles.dtype == np.float32 and np.isnan(store.tiles[:]).sum() == np.isnan(chips).sum()
    json.dumps(store.attrs)  # attributes stay JSON


def _granule_reader(path: Path):
    from domainfm.shared.tiles.schema import TileBatch

    chips = np.load(path)
    valid = (~np.isnan(chips[:, :1])).astype(np.uint8)
    yield TileBatch(chips, companions={"valid": valid, "note": [f"chip {i}" for i in range(len(chips))]}, valid=valid)


def test_store_metadata_names_what_is_missing(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="is not a tile store"):
        TileStore(tmp_path / "empty")
    store, _ = build_store(tmp_path, [10])
    group = zarr.open_group(store.path, mode="r+")
    group.attrs["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99, this domainfm reads version 1"):
        TileStore(store.path)


def test_codec_is_chosen_by_measuring_the_first_source(tmp_path: Path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.npy"
    np.save(noise, rng.integers(0, 256, (80, 3, 16, 16), dtype=np.uint8))
    background = tmp_path / "background.npy"
    flat = np.full((80, 3, 16, 16), 240, np.uint8)
    flat[:, :, 4:8, 4:8] = rng.integers(0, 256, (80, 3, 4, 4), dtype=np.uint8)
    np.save(background, flat)
    assert choose_codec(np.load(noise)) == "none"  # incompressible texture: stored raw
    assert choose_codec(flat) == "blosc-lz4"
    assert npy_spec(noise).codec == "none" and npy_spec(background).codec == "blosc-lz4"
    assert npy_spec(noise, codec="zstd-1").codec == "zstd-1"
    summary = ingest([noise, background], tmp_path / "s.zarr", npy_spec(noise), read_npy_tiles, "t", progress=False)
    assert summary.ok and TileStore(tmp_path / "s.zarr").attrs["layout"]["codec"] == "none"
    np.testing.assert_array_equal(TileStore(tmp_path / "s.zarr").tiles[:80], np.load(noise))
    with pytest.raises(ValueError, match="unknown codec 'lz5'"):
        npy_spec(noise, codec="lz5")
