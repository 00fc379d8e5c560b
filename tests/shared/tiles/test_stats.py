import numpy as np
import pytest

from domainfm.shared.tiles.stats import RunningStats, _uint8_sums


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_streaming_statistics_equal_numpy(dtype: str):
    rng = np.random.default_rng(1)
    data = (rng.normal(100, 30, (97, 4, 9, 7)) * (1000 if dtype == "uint16" else 1)).clip(0, None).astype(dtype)
    parts = [RunningStats(4) for _ in range(3)]
    for i, start in enumerate(range(0, 97, 13)):  # uneven batches spread over three "workers"
        parts[i % 3].update(data[start : start + 13])
    total = RunningStats(4)
    for part in parts:
        total.merge(RunningStats.from_dict(part.to_dict()))
    per_channel = data.transpose(1, 0, 2, 3).reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(total.mean, per_channel.mean(1), rtol=1e-12)
    np.testing.assert_allclose(total.std, per_channel.std(1), rtol=1e-10)
    np.testing.assert_array_equal(total.minimum, per_channel.min(1))
    np.testing.assert_array_equal(total.maximum, per_channel.max(1))
    assert total.count.tolist() == [per_channel.shape[1]] * 4


def test_masked_and_nan_values_are_skipped():
    rng = np.random.default_rng(2)
    data = rng.normal(280, 20, (10, 2, 8, 8)).astype(np.float32)
    valid = rng.random((10, 1, 8, 8)) > 0.3
    data[:, :, 0, 0] = np.nan  # fill values as NaN
    data[~np.broadcast_to(valid, data.shape)] = -999.0  # fill values as a sentinel, masked out
    stats = RunningStats(2)
    stats.update(data, valid.astype(np.uint8))
    for c in range(2):
        keep = valid[:, 0] & ~np.isnan(data[:, c])
        values = data[:, c][keep].astype(np.float64)
        assert stats.count[c] == values.size
        np.testing.assert_allclose(stats.mean[c], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(stats.std[c], values.std(), rtol=1e-10)
    assert stats.minimum.min() > -999


def test_wrong_channel_count_is_an_error():
    with pytest.raises(ValueError, match=r"expected a batch \[N, 3, ...\]"):
        RunningStats(3).update(np.zeros((2, 4, 5, 5)))


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 300, 300), (1, 260, 260)])
def test_uint8_sums_are_exact_at_the_block_limit(shape: tuple[int, int, int]):
    """Blocks of 2**16 values accumulate squares in uint32: all-255 data is the overflow worst case."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, (37, *shape), dtype=np.uint8)
    data[:5] = 255
    values = data.transpose(1, 0, 2, 3).reshape(shape[0], -1).astype(np.int64)
    totals, squares = _uint8_sums(data)
    np.testing.assert_array_equal(totals, values.sum(1))
    np.testing.assert_array_equal(squares, (values * values).sum(1))
    stats = RunningStats(shape[0])
    stats.update(data)
    np.testing.assert_allclose(stats.mean, values.mean(1), rtol=1e-15)
    np.testing.assert_allclose(stats.std, values.std(1), rtol=1e-12)
