"""`domainfm bench tiling` on a small slide: every pass runs, the fields are consistent, the store is complete."""

import json

from domainfm.cli import main


def test_bench_tiling_reports_consistent_ratios(tmp_path, capsys):
    work = tmp_path / "bench"
    args = ["bench", "tiling", "--size", "3000", "--naive_tiles", "20", "--rounds", "1", "--json"]
    assert main([*args, "--workdir", str(work)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles"] > 20 and result["rounds"] == 1
    for name in ("tiler", "read_limit", "native_read", "naive_png"):
        assert result[f"{name}_tiles_per_s"] > 0
    ratio = result["tiler_rounds"][0] / result["read_limit_rounds"][0]  # the rounds are rounded to 0.1 tiles/s
    assert abs(result["ratio_vs_read_limit"] - ratio) <= 0.01
    assert abs(result["ratio_vs_naive_png"] - result["tiler_tiles_per_s"] / result["naive_png_tiles_per_s"]) <= 0.01
    assert 0 < result["peak_rss_mb"] < 4096
    assert len(list((work / "png").glob("*.png"))) == 20
    assert json.loads((work / "tiles.zarr" / "zarr.json").read_text())["attributes"]["status"] == "complete"
