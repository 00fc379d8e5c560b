"""`domainfm bench ingest` on a few files: every data set is ingested completely and the ratios are the
ratios of the reported medians."""

import json

import pytest

from domainfm.cli import main


def test_bench_ingest_reports_consistent_rates_and_ratios(capsys: pytest.CaptureFixture[str], tmp_path):
    pytest.importorskip("pydicom")
    args = ["bench", "ingest", "--images", "12", "--rounds", "1", "--size", "32", "--json"]
    assert main([*args, "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and result["rounds"] == 1
    png, jpg, dcm = (int(part.split()[0]) for part in result["mixed_files"].split(", "))
    assert png + jpg + dcm == 12 and dcm >= 1  # the seeded mix holds every kind
    for name in ("png256_decode_limit", "png256_domainfm", "png256_per_source", "png256_2n_domainfm"):
        assert result[f"{name}_rounds"] == [result[f"{name}_sources_per_s"]]
    ratio = result["png256_domainfm_sources_per_s"] / result["png256_decode_limit_sources_per_s"]
    assert result["ratio_vs_decode_limit"] == pytest.approx(ratio, abs=0.01)
    speedup = result["png256_domainfm_sources_per_s"] / result["png256_per_source_sources_per_s"]
    assert result["speedup_vs_per_source"] == pytest.approx(speedup, abs=0.01)
    growth = 2 * result["png256_domainfm_sources_per_s"] / result["png256_2n_domainfm_sources_per_s"]
    assert result["time_ratio_2n_vs_n"] == pytest.approx(growth, abs=0.01)
    # the benchmark's stores are its own and removed; its data stays in the work folder given
    assert not list((tmp_path / "work").glob("*.zarr"))
    assert len(list((tmp_path / "work" / "png256_2n").rglob("*.png"))) == 24
