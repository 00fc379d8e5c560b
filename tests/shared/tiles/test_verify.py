import json
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream
from domainfm.shared.tiles.verify import verify_store


def test_sound_store_verifies(small_store, capsys: pytest.CaptureFixture[str]):
    store, _ = small_store
    assert verify_store(store.path) == []
    assert main(["tiles", "verify", str(store.path)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


def test_truncated_shard_is_named(small_store, capsys: pytest.CaptureFixture[str]):
    store, _ = small_store
    shard = store.shard_file(1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["tiles", "verify", str(store.path)]) == 1
    out = capsys.readouterr().out
    assert "tiles shard 1 is corrupt: shard file" in out and "tiles/c/1/0/0/0" in out and "checksum" in out
    with pytest.raises(Exception, match=r"shard file .*tiles/c/1/0/0/0 is corrupt or truncated"):
        for _ in TileStream(store, 64, normalize=False):
            pass


def test_deleted_shard_and_index_entry_are_named(small_store, capsys: pytest.CaptureFixture[str]):
    store, _ = small_store
    store.shard_file(2).unlink()
    (store.path / "index" / "x" / "c" / "0").unlink()
    assert main(["tiles", "verify", str(store.path), "--quick"]) == 1
    out = capsys.readouterr().out
    assert "tiles chunk 2/0/0/0 (tiles/c/2/0/0/0) is missing" in out
    assert "index/x chunk 0 (index/x/c/0) is missing" in out


def test_schema_mismatch_and_incomplete_status_are_named(small_store):
    store, _ = small_store
    meta_path = store.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["status"] = "ingesting"
    meta_path.write_text(json.dumps(meta))
    assert verify_store(store.path)[0].startswith("status is 'ingesting'")
    meta["attributes"]["schema_version"] = 0
    meta_path.write_text(json.dumps(meta))
    (problem,) = verify_store(store.path)
    assert "schema version 0" in problem
    meta["attributes"]["schema_version"] = 1
    meta["attributes"]["status"] = "complete"
    meta["attributes"]["tile_shape"] = [3, 32, 32]
    meta_path.write_text(json.dumps(meta))
    assert any("attributes say (3, 32, 32)" in p for p in verify_store(store.path))


def test_source_counts_must_match_the_index(small_store):
    store, _ = small_store
    meta_path = store.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["sources"][0]["n_tiles"] = 7
    meta_path.write_text(json.dumps(meta))
    assert any("1500 tiles in the index, 7 recorded" in p for p in verify_store(store.path))


def test_inspect_prints_and_draws(small_store, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    store, _ = small_store
    sheet = tmp_path / "sheet.png"
    assert main(["tiles", "inspect", str(store.path), "--sheet", str(sheet), "--n", "16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_tiles"] == 3100 and info["splits"] == {"unassigned": 3100}
    assert [s["n_tiles"] for s in info["sources"]] == [1500, 0, 700, 900]
    assert sheet.stat().st_size > 5000 and np.allclose(info["stats"]["mean"], store.stats["mean"])
    assert main(["tiles", "inspect", str(store.path)]) == 0
    assert "channel c0" in capsys.readouterr().out and store.path.with_name("store.zarr.contact_sheet.png").is_file()


def test_chunk_marked_absent_in_a_valid_index_is_named(small_store):
    import google_crc32c

    store, _ = small_store
    path = store.shard_file(0)
    data = bytearray(path.read_bytes())
    entries = store.shard_rows // int(store.tiles.chunks[0])
    index_start = len(data) - 16 * entries - 4
    data[index_start : index_start + 16] = np.full(2, 2**64 - 1, "<u8").tobytes()  # chunk 0: "not stored"
    index = bytes(data[index_start:-4])
    data[-4:] = np.uint32(google_crc32c.value(index)).tobytes()
    path.write_bytes(bytes(data))
    problems = verify_store(store.path)
    assert any("tiles shard 0 is corrupt" in p and "inner chunk 0 is missing" in p for p in problems), problems


def test_damaged_chunk_names_the_shard_file(small_store):
    store, _ = small_store
    path = store.shard_file(1)
    data = bytearray(path.read_bytes())
    data[0:16] = bytes(16)  # destroy the first Blosc header; the index and its checksum stay valid
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"tiles/c/1/0/0/0 does not match its recorded checksum"):
        store.read_shard(1)
    unchecked = TileStore(store.path, verify_reads="off")  # the decoder still refuses what it cannot decode
    with pytest.raises(Exception, match=r"tiles/c/1/0/0/0: inner chunk 0 cannot be decoded"):
        unchecked.read_shard(1)
