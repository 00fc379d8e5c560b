"""Our uncompressed shard writer produces the bytes zarr writes, so assembly can skip zarr's copies."""

from pathlib import Path

import numpy as np
import pytest
import zarr

from domainfm.shared.tiles.shards import write_raw_shard


@pytest.mark.parametrize("rows", [64, 50, 13, 3])
def test_raw_shards_equal_zarrs_byte_for_byte(rows: int, tmp_path: Path):
    data = np.random.default_rng(rows).integers(0, 256, (rows, 3, 8, 8), dtype=np.uint8)
    reference = zarr.create_array(
        tmp_path / "reference.zarr", shape=data.shape, dtype="uint8", chunks=(4, 3, 8, 8), shards=(32, 3, 8, 8),
        compressors=[], config={"write_empty_chunks": True},
    )  # fmt: skip
    reference[:] = data
    for shard, start in enumerate(range(0, rows, 32)):
        part = data[start : start + 32]
        ours = tmp_path / f"ours-{shard}"
        write_raw_shard(ours, [part[:5], part[5:5], part[5:]], rows_per_chunk=4, chunks_per_shard=8)
        theirs = tmp_path / "reference.zarr" / "c" / str(shard) / "0" / "0" / "0"
        assert ours.read_bytes() == theirs.read_bytes()
        assert not ours.with_name(ours.name + ".partial").exists()
    copy = zarr.open_array(tmp_path / "reference.zarr")
    for shard in range(-(-rows // 32)):
        (tmp_path / "reference.zarr" / "c" / str(shard) / "0" / "0" / "0").write_bytes(
            (tmp_path / f"ours-{shard}").read_bytes()
        )
    np.testing.assert_array_equal(copy[:], data)


def test_a_shard_without_rows_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="no rows"):
        write_raw_shard(tmp_path / "s", [np.zeros((0, 3), np.uint8)], 4, 8)
