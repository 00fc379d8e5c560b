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
