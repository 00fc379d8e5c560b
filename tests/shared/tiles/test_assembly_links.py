"""Staged tile files that are whole shards are linked into the store: the store is the one copying writes."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from domainfm.shared.tiles import assembly, packs
from domainfm.shared.tiles.ingest import STAGING, ingest
from domainfm.shared.tiles.schema import TileBatch
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.verify import verify_store

from .conftest import write_sources
from .test_packs import assert_same_contents


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store's arrays and metadata, by relative path (staging and locks left out)."""
    found = {}
    for path in sorted(store.rglob("*")):
        relative = path.relative_to(store).as_posix()
        if path.is_file() and not relative.startswith("_"):
            found[relative] = path.read_bytes()
    return found


def _same_store(a: Path, b: Path) -> None:
    assert_same_contents(TileStore(a), TileStore(b))
    files_a, files_b = _files(a), _files(b)
    assert sorted(files_a) == sorted(files_b)
    for name in files_a:
        if name != "zarr.json":  # the root attributes hold the run's own timings and paths
            assert files_a[name] == files_b[name], name


def _count_links(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    linked: list[int] = []
    real = assembly.link_raw_shard

    def spy(*args, **kwargs):
        crc = real(*args, **kwargs)
        linked.append(crc)
        return crc

    monkeypatch.setattr(assembly, "link_raw_shard", spy)
    return linked


def _no_links(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assembly, "link_raw_shard", lambda *args, **kwargs: None)


def _ingest(sources: list[Path], out: Path, reader=read_npy_tiles, **kwargs):
    spec = npy_spec(sources[0], codec="none")
    return ingest(sources, out, spec, reader, "test.npy", progress=False, **kwargs)


def test_linked_shards_are_the_shards_copying_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # 1024 tiles of 16 x 16 RGB per shard: the first source fills two whole shards and a part of the third
    sources = write_sources(tmp_path / "src", [2100, 700], shape=(3, 16, 16))
    linked = _count_links(monkeypatch)
    assert _ingest(sources, tmp_path / "linked.zarr").ok
    assert len(linked) == 2 and all(crc is not None for crc in linked)  # shards 0 and 1; shard 2 spans both
    assert os.stat(next((tmp_path / "linked.zarr" / "tiles").rglob("0/0/0/0"))).st_nlink == 1  # staging is gone
    with monkeypatch.context() as patch:
        _no_links(patch)
        assert _ingest(sources, tmp_path / "copied.zarr").ok
    _same_store(tmp_path / "linked.zarr", tmp_path / "copied.zarr")
    store = TileStore(tmp_path / "linked.zarr")
    np.testing.assert_array_equal(store.tiles[:], np.concatenate([np.load(s) for s in sources]))
    assert verify_store(tmp_path / "linked.zarr") == []  # checksums, index CRCs and statistics hold


def test_a_last_partial_shard_is_linked_with_its_padding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sources = write_sources(tmp_path / "src", [1024 + 100], shape=(3, 16, 16))  # 100 rows: 2 of 64-row chunks
    linked = _count_links(monkeypatch)
    assert _ingest(sources, tmp_path / "linked.zarr").ok
    assert len(linked) == 2
    _no_links(monkeypatch)
    assert _ingest(sources, tmp_path / "copied.zarr").ok
    _same_store(tmp_path / "linked.zarr", tmp_path / "copied.zarr")


def _flaky_reader(path: Path) -> Iterator[TileBatch]:
    """The npy reader; a source with a ``.broken`` marker beside it fails after its first batch."""
    for number, batch in enumerate(read_npy_tiles(path)):
        if number == 1 and Path(str(path) + ".broken").exists():
            raise OSError("simulated read failure")
        yield batch


@pytest.mark.parametrize("failing_first", [False, True])
def test_a_rerun_after_a_failure_reassembles_linked_shards_exactly(tmp_path: Path, failing_first: bool):
    """A partial store keeps its staging (linked into shards); the rerun's shards move or stay, all exact."""
    sizes = [1500, 2100] if failing_first else [2100, 1500]
    sources = write_sources(tmp_path / "src", sizes, shape=(3, 16, 16))
    flaky = sources[0] if failing_first else sources[1]
    marker = Path(str(flaky) + ".broken")
    marker.touch()
    out = tmp_path / "resumed.zarr"
    first = _ingest(sources, out, _flaky_reader)
    assert not first.ok and list(first.failed) == [str(flaky)]
    assert (out / STAGING).is_dir()
    marker.unlink()
    again = _ingest(sources, out, _flaky_reader)
    assert again.ok and again.done == [str(flaky)]
    assert _ingest(sources, tmp_path / "fresh.zarr", _flaky_reader).ok
    _same_store(out, tmp_path / "fresh.zarr")
    np.testing.assert_array_equal(TileStore(out).tiles[:], np.concatenate([np.load(s) for s in sources]))


def _cli(sources: list[Path], out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "domainfm", "tiles", "ingest", *map(str, sources), "--out", str(out)]
    command += ["--workers", "1", "--codec", "none"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_a_kill_during_linked_assembly_resumes_to_the_same_store(tmp_path: Path):
    sources = write_sources(tmp_path / "src", [3000], shape=(3, 16, 16))  # shards 0 and 1 linked, 2 too
    out = tmp_path / "killed.zarr"
    killed = _cli(sources, out, {"DOMAINFM_TEST_KILL_AT": "shard:2"})  # after two shards were linked
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (out / STAGING).is_dir()
    resumed = _cli(sources, out)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _cli(sources, tmp_path / "ref.zarr").returncode == 0
    _same_store(out, tmp_path / "ref.zarr")


def test_flushes_hold_whole_shards_where_the_store_keeps_raw_tiles(tmp_path: Path):
    sources = write_sources(tmp_path / "src", [700, 700, 700], shape=(3, 16, 16))
    pack = tmp_path / "pack"
    spec = npy_spec(sources[0], codec="none")
    packs.ingest_pack([str(s) for s in sources], [0, 1, 2], str(pack), spec.to_attrs(), read_npy_tiles, [None] * 3)
    lines = packs.read_journal(pack)
    assert [line["rows"] for line in lines] == [1024, 1024, 52]
    # a source is journalled with the flush that holds its last row
    assert [[e["start"] for e in line["sources"]] for line in lines] == [[0], [700], [1400]]
    raw = (pack / "data" / "tiles" / "000000.raw").read_bytes()
    assert raw == np.concatenate([np.load(s) for s in sources])[:1024].tobytes()
    import crc32c

    assert lines[0]["crc"] == crc32c.crc32c(raw)
