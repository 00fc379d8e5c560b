"""`domainfm bench chips`: both pipelines deliver every chip of every epoch with the same values, the
ratios are domainfm's chips/s over TorchGeo's, and a missing TorchGeo is named as such."""

from pathlib import Path

import pytest

from domainfm.studies.remote_sensing import chips_bench


def test_rasters_are_multiband_geotiffs_apart(tmp_path: Path):
    import rasterio

    paths = chips_bench.write_rasters(tmp_path, files=2, side=64, bands=3)
    with rasterio.open(paths[0]) as a, rasterio.open(paths[1]) as b:
        assert a.count == 3 and a.dtypes[0] == "uint16" and a.crs.to_epsg() == 32632
        assert a.bounds.right < b.bounds.left  # no chip can span two files
        assert a.read(1).std() > 50


def test_domainfm_and_torchgeo_read_the_same_chips(tmp_path: Path):
    pytest.importorskip("torchgeo", reason="torchgeo is in the bench-peers extra")
    result = chips_bench.run_chips_benchmark(
        tmp_path, files=2, side=128, bands=3, chip=64, batch=3, epochs=2, peers=True
    )
    assert result["chips_per_epoch"] == 2 * 4
    assert result["checksum_match"] is True  # the same values arrived at both consumers
    for key in ("1_epoch", "2_epochs", "per_epoch"):
        ratio = result[f"domainfm_chips_per_s_{key}"] / result[f"torchgeo_chips_per_s_{key}"]
        assert result[f"ratio_vs_torchgeo_{key}"] == round(ratio, 2)
    setup, epochs = result["domainfm_setup_s"], result["domainfm_epoch_s"]
    assert len(epochs) == 2 and result["domainfm_chips_per_s_1_epoch"] == pytest.approx(
        8 / (setup + epochs[0]), rel=0.05
    )
    assert result["torchgeo_version"]
    cumulative = [(setup + sum(epochs[:k])) for k in (1, 2)]
    theirs = [result["torchgeo_setup_s"] + sum(result["torchgeo_epoch_s"][:k]) for k in (1, 2)]
    by_epochs = [t / o for o, t in zip(cumulative, theirs, strict=True)]
    assert result["ratio_vs_torchgeo_by_epochs"] == pytest.approx(by_epochs, abs=0.02)


def test_a_missing_torchgeo_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = chips_bench.importlib.util.find_spec
    monkeypatch.setattr(chips_bench.importlib.util, "find_spec", lambda n: None if n == "torchgeo" else real(n))
    result = chips_bench.run_chips_benchmark(
        tmp_path, files=1, side=64, bands=2, chip=32, batch=4, epochs=1, peers=True
    )
    assert result["torchgeo"] == chips_bench.MISSING and "bench-peers" in chips_bench.MISSING
    assert result["chips_per_epoch"] == 4 and not any(k.startswith("ratio") for k in result)


def test_a_wrong_chip_count_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = chips_bench._consume
    monkeypatch.setattr(chips_bench, "_consume", lambda *a: (real(*a)[0] - 1, 0.0))
    with pytest.raises(RuntimeError, match="expected 4"):
        chips_bench.run_chips_benchmark(tmp_path, files=1, side=64, bands=2, chip=32, batch=4, epochs=1, peers=False)
