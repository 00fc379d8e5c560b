"""The radiology CLI end to end on a small phantom: phantom, ingest, pretrain, eval retrieval/probe/knn/finetune."""

import json
from pathlib import Path

import pytest

from domainfm.cli import main


def test_phantom_ingest_pretrain_and_every_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    phantom = tmp_path / "phantom"
    assert main(["radiology", "phantom", "--out", str(phantom), "--n", "48", "--retrieval_per_category", "4"]) == 0
    store = str(tmp_path / "studies.zarr")
    ingest = [
        "--images",
        str(phantom / "images"),
        "--reports",
        str(phantom / "reports.csv"),
        "--labels",
        str(phantom / "labels.csv"),
    ]
    assert main(["radiology", "ingest", *ingest, "--out", store, "--size", "32"]) == 0
    text = "{hidden: 32, layers: 2, heads: 2, intermediate: 64, vocab_size: 300, frozen_layers: 1}"
    run = ["--store", store, "--out", str(tmp_path / "run"), "--text", text, "--epochs", "1", "--batch_size", "8"]
    assert main(["radiology", "pretrain", *run, "--projection_dim", "32", "--device", "cpu"]) == 0
    checkpoint = str(tmp_path / "run" / "convirt.safetensors")
    assert (tmp_path / "run" / "config.yaml").is_file() and not (tmp_path / "run" / "resume").exists()
    capsys.readouterr()
    retrieval = ["--candidates", str(phantom / "retrieval" / "candidate.csv")]
    retrieval += ["--image_queries", str(phantom / "retrieval" / "image_query.csv")]
    retrieval += ["--text_queries", str(phantom / "retrieval" / "text_query.csv")]
    assert main(["radiology", "eval", "retrieval", "--checkpoint", checkpoint, *retrieval, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert 0 <= found["text_to_image"]["precision_at_5"] <= 1 and found["chance"] == pytest.approx(1 / 6)
    assert set(found["image_to_image"]["precision_at_5_per_category"]) == set(found["categories"])
    for task in ("probe", "knn", "finetune"):
        extra = ["--finetune_epochs", "1"] if task == "finetune" else []
        args = ["radiology", "eval", task, "--checkpoint", checkpoint, "--store", store, "--fractions", "[0.5]"]
        assert main([*args, *extra, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["init"] for r in rows} == {"convirt", "random"} and all(0 <= r["auroc"] <= 1 for r in rows)


def test_retrieval_without_queries_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "c.safetensors").write_bytes(b"x")
    assert main(["radiology", "eval", "retrieval", "--checkpoint", str(tmp_path / "c.safetensors")]) == 2
    assert "c.safetensors" in capsys.readouterr().err
