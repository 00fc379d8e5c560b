"""`domainfm bench tiling` on a small slide: every pass runs, the store is complete, and the rates and ratios
are what the timed work took, on a clock that moves by known amounts only while that work runs."""

import json
from pathlib import Path

import pytest

from domainfm.cli import main

# seconds per tile of each timed pass, per round; the medians of the rates and the median of the per-round
# ratios differ from the ratio of the medians and from means, so a wrong summary gives other numbers
# the plain read's two orders per round (alternate, halves): alternate 100, 500, 50; halves 50, 1000, 40;
# the read limit is the faster of each round's two: 100, 1000, 50, median 100
READ_PLAIN = [0.010, 0.020, 0.002, 0.001, 0.020, 0.025]
RGB_READ = [0.005, 0.005, 0.001]  # rates 200, 200, 1000: median 200
NATIVE_READ = [0.004, 0.004, 0.002]  # rates 250, 250, 500: median 250
TILER = [0.020, 0.004, 0.100]  # rates 50, 250, 10: median 50; tiler / read limit 0.5, 0.25, 0.2: median 0.25
NAIVE_PNG = 0.040  # rate 25


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_bench_tiling_reports_the_timed_rates_and_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    import threading

    import openslide
    from PIL import Image

    from domainfm.domains.pathology import tiling
    from domainfm.studies.pathology import bench

    clock = _Clock()
    state = {"in_tiler": False, "plain": 0, "public": 0, "native": 0, "tiler": 0, "naive": 0, "plain_tiles": 0}
    lock = threading.Lock()
    real_read_region, real_plain = openslide.OpenSlide.read_region, bench.plain_read_limit
    real_read_tiles, real_tile_slides, real_save = tiling.read_tiles, tiling.tile_slides, Image.Image.save
    work = tmp_path / "bench"

    def read_tiles(reader, *args, **kwargs):
        if state["in_tiler"]:  # the tiler's own reads are inside its timed call
            yield from real_read_tiles(reader, *args, **kwargs)
            return
        kind = "public" if reader.public_api else "native"
        seconds = (RGB_READ if reader.public_api else NATIVE_READ)[state[kind]]
        state[kind] += 1
        for tiles in real_read_tiles(reader, *args, **kwargs):
            clock.now += seconds * len(tiles)
            yield tiles

    def tile_slides(slides, out, *args, **kwargs):
        state["in_tiler"] = True
        try:
            summary = real_tile_slides(slides, out, *args, **kwargs)
        finally:
            state["in_tiler"] = False
        clock.now += TILER[state["tiler"]] * summary.n_tiles
        state["tiler"] += 1
        return summary

    def save(image, fp, *args, **kwargs):
        if Path(fp).parent == work / "png":  # the naive loop's PNG files
            clock.now += NAIVE_PNG
            state["naive"] += 1
        return real_save(image, fp, *args, **kwargs)

    def read_region(slide, *args, **kwargs):
        if threading.current_thread().name.startswith("plain-read"):  # the plain read limit's threads only
            with lock:
                clock.now += READ_PLAIN[state["plain"] - 1]
                state["plain_tiles"] += 1
        return real_read_region(slide, *args, **kwargs)

    def plain_read_limit(*args, **kwargs):
        state["plain"] += 1
        return real_plain(*args, **kwargs)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", read_region)
    monkeypatch.setattr(bench, "plain_read_limit", plain_read_limit)
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(tiling, "read_tiles", read_tiles)
    monkeypatch.setattr(tiling, "tile_slides", tile_slides)
    monkeypatch.setattr(Image.Image, "save", save)
    args = ["bench", "tiling", "--size", "2000", "--naive_tiles", "20", "--rounds", "3", "--json"]
    assert main([*args, "--workdir", str(work)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tiles"] > 20 and result["rounds"] == 3
    assert state["plain_tiles"] == 6 * result["tiles"]  # every tile read by the plain loop, in each order and round
    assert {k: state[k] for k in ("plain", "public", "native", "tiler", "naive")} == {
        "plain": 6,
        "public": 3,
        "native": 3,
        "tiler": 3,
        "naive": 20,
    }
    assert result["read_limit_rounds"] == pytest.approx([100.0, 1000.0, 50.0])
    assert result["read_alternate_rounds"] == pytest.approx([100.0, 500.0, 50.0])
    assert result["read_halves_rounds"] == pytest.approx([50.0, 1000.0, 40.0])
    assert result["rgb_read_rounds"] == pytest.approx([200.0, 200.0, 1000.0])
    assert result["rgb_read_tiles_per_s"] == pytest.approx(200.0)
    assert result["native_read_rounds"] == pytest.approx([250.0, 250.0, 500.0])
    assert result["native_read_vs_read_limit"] == pytest.approx(2.5)
    assert result["tiler_rounds"] == pytest.approx([50.0, 250.0, 10.0])
    assert result["read_limit_tiles_per_s"] == pytest.approx(100.0)
    assert result["native_read_tiles_per_s"] == pytest.approx(250.0)
    assert result["tiler_tiles_per_s"] == pytest.approx(50.0)
    assert result["naive_png_tiles_per_s"] == pytest.approx(25.0) and result["naive_tiles_measured"] == 20
    assert result["ratio_vs_read_limit_rounds"] == pytest.approx([0.5, 0.25, 0.2])
    assert result["ratio_vs_read_limit"] == pytest.approx(0.25)  # median of the per-round ratios
    assert result["ratio_vs_native_read"] == pytest.approx(0.2)
    assert result["ratio_vs_naive_png"] == pytest.approx(2.0)
    assert 0 < result["peak_rss_mb"] < 4096
    assert len(list((work / "png").glob("*.png"))) == 20
    assert json.loads((work / "tiles.zarr" / "zarr.json").read_text())["attributes"]["status"] == "complete"
