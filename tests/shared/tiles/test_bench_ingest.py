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

    def close(reported: float, a: str, b: str, factor: float = 1.0) -> bool:
        """``reported`` (rounded to 0.01) is factor * a / b of the unrounded rates (reported rounded to 0.1)."""
        rate_a, rate_b = result[f"{a}_sources_per_s"], result[f"{b}_sources_per_s"]
        ratio = factor * rate_a / rate_b
        return abs(reported - ratio) <= 0.005 + ratio * (0.05 / rate_a + 0.05 / rate_b) + 1e-9

    assert close(result["ratio_vs_decode_limit"], "png256_domainfm", "png256_decode_limit")
    assert close(result["speedup_vs_per_source"], "png256_domainfm", "png256_per_source")
    assert close(result["time_ratio_2n_vs_n"], "png256_domainfm", "png256_2n_domainfm", 2.0)
    # the benchmark's stores are its own and removed; its data stays in the work folder given
    assert not list((tmp_path / "work").glob("*.zarr"))
    assert len(list((tmp_path / "work" / "png256_2n").rglob("*.png"))) == 24
