"""Shared staging packs: many sources staged together give the store per-source staging gives, and resume."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from domainfm.shared.tiles import packs
from domainfm.shared.tiles.ingest import STAGING, ingest
from domainfm.shared.tiles.packs import JOURNAL, plan_packs, read_journal, read_staged
from domainfm.shared.tiles.schema import INDEX_COLUMNS, TileBatch
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import CHECKSUMS, TileStore

from .conftest import write_sources

# many small sources (single tiles, a few tiles, empty ones), as radiographs and patch sets are
SIZES = [1, 3, 0, 1, 2, 1, 1, 40, 1, 0, 5, 1, 1, 1, 2, 1, 1, 1, 7, 1] * 3


def assert_same_contents(a: TileStore, b: TileStore) -> None:
    """Tiles, index, statistics, shard checksums and the per-source provenance are equal."""
    np.testing.assert_array_equal(a.tiles[:], b.tiles[:])
    for name in INDEX_COLUMNS:
        np.testing.assert_array_equal(a.index[name], b.index[name], err_msg=name)
    np.testing.assert_array_equal(a.group[CHECKSUMS][:], b.group[CHECKSUMS][:])
    assert a.attrs["stats"] == b.attrs["stats"]
    assert a.attrs["sources"] == b.attrs["sources"]
    assert a.attrs["status"] == b.attrs["status"]


def _ingest(sources: list[Path], out: Path, **kwargs):
    spec = npy_spec(sources[0], codec="none")
    return ingest(sources, out, spec, read_npy_tiles, "test.npy", progress=False, **kwargs)


def test_packed_ingest_equals_per_source_ingest(tmp_path: Path):
    sources = write_sources(tmp_path / "src", SIZES, shape=(3, 8, 8))
    packed = _ingest(sources, tmp_path / "packed.zarr", workers=2)
    single = _ingest(sources, tmp_path / "single.zarr", workers=2, sources_per_pack=1)
    assert packed.ok and single.ok and packed.n_tiles == sum(SIZES)
    a, b = TileStore(tmp_path / "packed.zarr"), TileStore(tmp_path / "single.zarr")
    assert_same_contents(a, b)
    expected = np.concatenate([np.load(s) for s in sources])
    np.testing.assert_array_equal(a.tiles[:], expected)
    np.testing.assert_array_equal(a.index["source"], np.repeat(np.arange(len(SIZES)), SIZES))
    values = expected.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(a.stats["mean"], values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(a.stats["std"], values.std(1), rtol=1e-10)
    assert [s["path"] for s in a.sources] == [str(s.resolve()) for s in sources]
    assert [s["n_tiles"] for s in a.sources] == SIZES
    assert all(s["sha256_head"] and s["meta"] == {"group": Path(s["path"]).stem} for s in a.sources)


def test_small_files_share_packs_and_a_large_file_gets_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    files = write_sources(tmp_path, [1] * 10 + [400] + [1] * 5, shape=(3, 16, 16))
    monkeypatch.setattr(packs, "PACK_SOURCE_BYTES", 200_000)  # the 400-tile file (307 kB) is "large"
    plan = plan_packs([str(f) for f in files], workers=1, per_pack=8)
    assert plan == [list(range(8)), [8, 9], [10], list(range(11, 16))]
    assert plan_packs([str(f) for f in files], workers=2) == [[i, i + 1] for i in range(0, 10, 2)] + [
        [10],
        [11, 12],
        [13, 14],
        [15],
    ]


def _failing_reader(path: Path) -> Iterator[TileBatch]:
    """The npy reader; a file with a ``.broken`` marker fails after three batches (two flushed, one buffered)."""
    for number, batch in enumerate(read_npy_tiles(path)):
        if number == 4 and Path(f"{path}.broken").exists():
            raise OSError(f"{path}: read error after three batches")
        yield batch


def test_a_source_failing_mid_pack_leaves_no_rows_and_a_rerun_retries_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(packs, "FLUSH_BYTES", 4000)  # flushes inside sources (the bad one too) and between them
    monkeypatch.setattr("domainfm.shared.tiles.sources.BATCH", 16)
    good = write_sources(tmp_path / "src", [20, 3, 50, 2, 9], shape=(3, 8, 8))
    bad = tmp_path / "src" / "bad.npy"
    np.save(bad, np.full((60, 3, 8, 8), 7, np.uint8))
    Path(f"{bad}.broken").touch()
    sources = [good[0], good[1], bad, good[2], good[3], good[4]]
    spec = npy_spec(good[0], codec="none")
    out = tmp_path / "store.zarr"
    summary = ingest(sources, out, spec, _failing_reader, "test.npy", workers=1, progress=False, sources_per_pack=10)
    assert list(summary.failed) == [str(bad)] and "read error after three batches" in summary.failed[str(bad)]
    with pytest.warns(UserWarning, match="sources failed"):
        store = TileStore(out)
    np.testing.assert_array_equal(store.tiles[:], np.concatenate([np.load(s) for s in good]))
    np.testing.assert_array_equal(store.index["source"], np.repeat([0, 1, 3, 4, 5], [20, 3, 50, 2, 9]))
    staged = read_staged(out / STAGING)
    assert len(staged) == len(sources)  # one pack, every source journalled once
    assert len({item.pack for items in staged.values() for item in items}) == 1
    # the file is fixed: the rerun reads only the failed source, and the store equals a fresh build
    Path(f"{bad}.broken").unlink()
    summary = ingest(sources, out, spec, _failing_reader, "test.npy", workers=1, progress=False)
    assert summary.ok and summary.done == [str(bad)] and len(summary.skipped) == 5
    fresh = ingest(sources, tmp_path / "fresh.zarr", spec, _failing_reader, "test.npy", progress=False)
    assert fresh.ok
    assert_same_contents(TileStore(out), TileStore(tmp_path / "fresh.zarr"))


def test_a_journal_line_cut_short_by_a_kill_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(packs, "FLUSH_BYTES", 1)  # a flush per batch: a source is journalled with the next one
    sources = write_sources(tmp_path / "src", [4, 5, 6], shape=(3, 8, 8))
    pack = tmp_path / "pack"
    packs.ingest_pack(
        [str(s) for s in sources], [0, 1, 2], str(pack), npy_spec(sources[0]).to_attrs(), read_npy_tiles, [None] * 3
    )
    lines = (pack / JOURNAL).read_text().splitlines()
    assert [json.loads(line)["rows"] for line in lines] == [4, 5, 6, 0]
    assert [len(json.loads(line)["sources"]) for line in lines] == [0, 1, 1, 1]
    (pack / JOURNAL).write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert [line["rows"] for line in read_journal(pack)] == [4, 5]
    staged = read_staged(tmp_path, ["pack"])
    assert list(staged) == [str(sources[0].resolve())] and staged[str(sources[0].resolve())][0].entry["n_tiles"] == 4


def _cli(sources: list[Path], out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "domainfm", "tiles", "ingest", *map(str, sources), "--out", str(out)]
    command += ["--workers", "1"]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_a_kill_inside_a_pack_resumes_with_only_the_rest(tmp_path: Path):
    sources = write_sources(tmp_path / "src", [2] * 40, shape=(3, 8, 8))  # 4 packs of 10 sources, one worker
    out = tmp_path / "killed.zarr"
    killed = _cli(sources, out, {"DOMAINFM_TEST_KILL_AT": "batch:25"})  # inside the third pack
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    staged = read_staged(out / STAGING)
    assert len(staged) == 20  # the first two packs were journalled
    resumed = _cli(sources, out)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "20 source(s)" in resumed.stdout and "20 already done" in resumed.stdout
    assert _cli(sources, tmp_path / "ref.zarr").returncode == 0  # the same command, never killed
    assert_same_contents(TileStore(out), TileStore(tmp_path / "ref.zarr"))
    assert not (out / STAGING).exists()
