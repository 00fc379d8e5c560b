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
