"""Verification stamps: a shard file checked in full is trusted by later processes only while its stat is unchanged."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from domainfm.shared.tiles import shards as shards_module
from domainfm.shared.tiles import stamps as stamps_module
from domainfm.shared.tiles.shards import ShardCorruptError
from domainfm.shared.tiles.stamps import STAMPS
from domainfm.shared.tiles.store import TileStore, forget_verified
from domainfm.shared.tiles.stream import TileStream

from .conftest import build_store


@pytest.fixture
def checked_files(monkeypatch) -> list[Path]:
    """The shard files each full check reads (every decoder call that was given a CRC to check)."""
    seen: list[Path] = []
    copy_rows = shards_module.ShardDecoder.copy_rows

    def spy(self, path, rows, targets, expected_crc=None):
        if expected_crc is not None:
            seen.append(Path(path))
        return copy_rows(self, path, rows, targets, expected_crc)

    monkeypatch.setattr(shards_module.ShardDecoder, "copy_rows", spy)
    return seen


def _stream_all(path: Path) -> np.ndarray:
    forget_verified()  # as a new process would start
    store = TileStore(path)
    tiles = [batch["tiles"].numpy() for batch in TileStream(store, 256, shuffle=False, normalize=False, device="cpu")]
    return np.concatenate(tiles)


@pytest.fixture
def stamped_store(tmp_path: Path, monkeypatch) -> TileStore:
    monkeypatch.setattr(stamps_module, "RACY_NS", 0)  # the store was written a moment ago
    store, _ = build_store(tmp_path, [1500, 700], codec="none")
    return store


def test_a_later_process_skips_files_checked_in_full_and_reads_the_same_tiles(stamped_store, checked_files):
    first = _stream_all(stamped_store.path)
    n_shards = len(stamped_store.shard_ranges())
    assert len(set(checked_files)) == n_shards  # the first reader checked every shard file
    stamps = json.loads((stamped_store.path / STAMPS).read_text())
    assert sorted(stamps) == sorted(
        str(stamped_store.shard_file(s).relative_to(stamped_store.path)) for s in range(n_shards)
    )
    checked_files.clear()
    second = _stream_all(stamped_store.path)
    assert checked_files == []  # nothing checked again: every file's stat is the one stamped
    assert np.array_equal(first, second)


@pytest.mark.parametrize("how", ["rewritten", "mtime_restored", "swapped"])
def test_a_file_changed_after_its_stamp_is_checked_again_and_refused(stamped_store, checked_files, how):
    _stream_all(stamped_store.path)
    shard0, shard1 = stamped_store.shard_file(0), stamped_store.shard_file(1)
    if how == "swapped":
        shard0.rename(shard0.with_name("moved"))
        shard1.rename(shard0)
        shard0.with_name("moved").rename(shard1)
    else:
        before = shard0.stat()
        data = bytearray(shard0.read_bytes())
        data[100] ^= 0xFF
        with open(shard0, "r+b") as handle:  # same inode, same size
            handle.write(bytes(data))
        if how == "mtime_restored":  # as bit rot would look: the modification time set back
            os.utime(shard0, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert shard0.stat().st_mtime_ns == before.st_mtime_ns
    checked_files.clear()
    with pytest.raises(ShardCorruptError, match="does not match its recorded checksum"):
        _stream_all(stamped_store.path)
    assert checked_files  # the changed file was checked again, not trusted


def test_files_changed_just_before_their_check_are_not_stamped(tmp_path: Path, checked_files):
    store, _ = build_store(tmp_path, [1500], codec="none")  # written a moment ago, RACY_NS as shipped
    _stream_all(store.path)
    assert not (store.path / STAMPS).exists() or json.loads((store.path / STAMPS).read_text()) == {}
    checked_files.clear()
    _stream_all(store.path)
    assert checked_files  # checked again: a racily clean file is never trusted


def test_a_damaged_stamp_file_only_costs_a_check(stamped_store, checked_files):
    _stream_all(stamped_store.path)
    (stamped_store.path / STAMPS).write_text('{"tiles/c/0/0/0/0": [1, 2, "x"]')  # cut short and wrong
    checked_files.clear()
    _stream_all(stamped_store.path)
    assert len(set(checked_files)) == len(stamped_store.shard_ranges())


def test_a_store_that_cannot_take_stamps_still_streams_checked(stamped_store, checked_files, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(stamps_module.os, "replace", refuse)
    first = _stream_all(stamped_store.path)
    assert not (stamped_store.path / STAMPS).exists()
    assert not list(stamped_store.path.glob(f"{STAMPS}*"))  # no temporary left behind
    checked_files.clear()
    assert np.array_equal(_stream_all(stamped_store.path), first)
    assert len(set(checked_files)) == len(stamped_store.shard_ranges())  # every file checked again
