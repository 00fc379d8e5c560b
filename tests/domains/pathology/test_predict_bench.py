"""`domainfm bench predict-memory`'s measurement: each command's own peak RSS, from its own process."""

from pathlib import Path

import pytest

from domainfm.studies.pathology.predict_bench import measure_process

ALLOCATE = """
import json, sys
import numpy as np
from domainfm.shared.engine.memory import peak_memory_mb
block = np.ones(json.loads(sys.argv[1])[0] * 2**20, np.uint8)  # touched: resident
print("BENCH " + json.dumps({"status": 0, "peak_rss_mb": peak_memory_mb()}))
"""


def test_the_peak_is_the_child_process_own():
    small, large = measure_process([0], ALLOCATE), measure_process([256], ALLOCATE)
    assert large["peak_rss_mb"] - small["peak_rss_mb"] == pytest.approx(256, abs=24)


def test_a_failing_command_is_named(tmp_path: Path):
    missing = tmp_path / "missing.safetensors"
    command = [
        "pathology",
        "predict",
        "--checkpoint",
        str(missing),
        "--input",
        str(tmp_path),
        "--out",
        str(tmp_path / "x"),
    ]
    with pytest.raises(RuntimeError, match=r"(?s)pathology predict .* exited with 2.*missing\.safetensors"):
        measure_process(command)


@pytest.mark.slow
def test_the_benchmark_reports_peaks_floors_and_growth_over_three_sizes(tmp_path: Path):
    from domainfm.studies.pathology.predict_bench import run_predict_memory_benchmark

    result = run_predict_memory_benchmark(size=1536, tile_px=64, batch=8, folder=tmp_path)
    slides = result["slides"]
    assert [s["slide_px"] for s in slides] == [384, 768, 1536]
    assert slides[0]["tiles"] < slides[1]["tiles"] < slides[2]["tiles"]
    for s in slides:  # each peak against its own command's floor, measured in its own process
        assert s["tiler_above_floor_mb"] == pytest.approx(s["tiler_peak_rss_mb"] - result["tiler_floor_mb"], abs=0.06)
        assert s["predict_above_floor_mb"] == pytest.approx(
            s["predict_peak_rss_mb"] - result["predict_floor_mb"], abs=0.06
        )
    assert result["predict_peak_rss_mb"] == slides[-1]["predict_peak_rss_mb"]
    assert result["ratio_predict_vs_tiler"] == pytest.approx(
        slides[-1]["predict_peak_rss_mb"] / slides[-1]["tiler_peak_rss_mb"], abs=0.006
    )
    assert result["predict_growth_mb"] == pytest.approx(
        slides[-1]["predict_peak_rss_mb"] - slides[0]["predict_peak_rss_mb"], abs=0.06
    )
    assert result["predict_floor_mb"] > result["tiler_floor_mb"]  # torch's model stack, which the tiler never loads
    assert not list(tmp_path.glob("slide_*.svs"))  # the phantoms are removed as the benchmark goes
