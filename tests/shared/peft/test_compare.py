import json
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.studies.shared.peft.compare import label_subset
from domainfm.studies.shared.peft.phantom import build_phantom_store


def test_label_fraction_is_stratified_and_seeded(tmp_path: Path):
    store = build_phantom_store(tmp_path / "p.zarr", n=200, classes=4, size=32, seed=0)
    train = np.flatnonzero(store.index["split"] == 0)
    subset = label_subset(store, 0.25, seed=3)
    assert set(subset) <= set(train) and np.array_equal(subset, label_subset(store, 0.25, seed=3))
    for label in range(4):
        in_class = (store.index["label"][train] == label).sum()
        assert (store.index["label"][subset] == label).sum() == max(1, round(0.25 * in_class))
    assert np.array_equal(label_subset(store, 1.0, seed=0), train)


def test_compare_writes_tables_and_reattachable_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "compare"
    args = [
        "peft",
        "compare",
        "--out",
        str(out),
        "--methods",
        "[linear, dvpt, lora]",
        "--label_fractions",
        "[0.5]",
        "--phantom_tiles",
        "160",
        "--epochs",
        "1",
        "--batch_size",
        "16",
    ]
    assert main(args) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["label_fraction"]) for r in rows] == [("linear", 0.5), ("dvpt", 0.5), ("lora", 0.5)]
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["auroc"] <= 1 and row["step_ms"] > 0
        assert row["reattach_max_abs_diff"] == 0.0
        assert (out / "adapters" / f"{row['method']}_0.5.safetensors").is_file()
    assert rows[0]["trainable"] == 0 and 0 < rows[1]["fraction_of_backbone"] < 0.2
    table = (out / "results.md").read_text()
    assert "| dvpt | 0.500 |" in table and (out / "config.yaml").is_file()
