import json

import pytest

from domainfm.cli import main


def test_stream_benchmark_reports_every_field(capsys: pytest.CaptureFixture[str], tmp_path):
    args = ["bench", "stream", "--tiles", "300", "--batch_size", "64", "--rounds", "1", "--png_tiles", "128"]
    assert main([*args, "--workdir", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for field in (
        "stream_samples_per_s",
        "png_dataloader_samples_per_s",
        "decode_limit_samples_per_s",
        "ratio_vs_png_dataloader",
        "ratio_vs_decode_limit",
        "peak_rss_mb",
    ):
        assert result[field] > 0, field
    assert result["png_tiles_measured"] == 128 and result["tiles"] == 300
    expected = result["stream_samples_per_s"] / result["decode_limit_samples_per_s"]
    assert result["ratio_vs_decode_limit"] == pytest.approx(expected, abs=0.006)  # rounded to 2 decimals
