"""The ingest reader's fast 8-bit path gives the model contract's values bit for bit."""

from pathlib import Path

import numpy as np
from PIL import Image

from domainfm.domains.radiology.images import (
    RAW_8BIT,
    display_transform,
    ingest_tile,
    raw_radiograph,
    read_radiograph,
    read_raw,
)
from domainfm.shared.model import transform_array


def test_the_8bit_table_is_the_contract_arithmetic_per_value():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = raw_radiograph(values / 255.0)
    assert RAW_8BIT.dtype == np.float32
    assert RAW_8BIT[values].tobytes() == expected.tobytes()


def test_read_raw_and_ingest_tile_equal_the_contract_path(tmp_path: Path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey.png"
    Image.fromarray(rng.integers(0, 256, (301, 203), dtype=np.uint8)).save(grey)
    colour = tmp_path / "colour.jpg"
    Image.fromarray(rng.integers(0, 256, (120, 260, 3), dtype=np.uint8)).save(colour, quality=90)
    deep = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65535, (90, 70), dtype=np.uint16)).save(deep)
    for path in (grey, colour, deep):
        contract = raw_radiograph(read_radiograph(path))
        assert read_raw(path).tobytes() == contract.tobytes(), path.name
        expected = transform_array(contract[None], display_transform(64))
        np.testing.assert_array_equal(ingest_tile(path, 64), expected, err_msg=path.name)


def test_the_reader_decodes_the_bytes_ingest_fingerprinted(tmp_path: Path):
    import pytest

    from domainfm.shared.tiles.fragments import HEAD_BYTES, fingerprint, forget_source_bytes, source_bytes

    path = tmp_path / "a.png"
    first = np.full((20, 30), 7, np.uint8)
    Image.fromarray(first).save(path)
    identity = fingerprint(path, keep=True)
    assert source_bytes(path) == path.read_bytes() and identity["size"] == path.stat().st_size
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(path)  # changed after its fingerprint was taken
    np.testing.assert_array_equal(read_raw(path), RAW_8BIT[first])  # the fingerprinted picture, not the new one
    forget_source_bytes()
    assert source_bytes(path) is None
    np.testing.assert_array_equal(read_raw(path), RAW_8BIT[np.full((20, 30), 9, np.uint8)])
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(HEAD_BYTES + 1))
    fingerprint(big, keep=True)
    assert source_bytes(big) is None  # only files read whole are kept
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    fingerprint(broken, keep=True)
    with pytest.raises(ValueError, match=r"broken\.png") as error:
        read_raw(broken)
    assert "BytesIO" not in str(error.value)
    forget_source_bytes()
