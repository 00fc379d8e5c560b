"""The radiology CLI end to end on a small phantom: phantom, ingest, pretrain, eval retrieval/probe/knn/finetune."""

import csv
import json
from pathlib import Path

import pytest
import torch

from domainfm.cli import main


def _pairs_in_order(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC as the fraction of positive-negative pairs scored in the right order (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    return float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())


def test_phantom_ingest_pretrain_and_every_eval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.radiology import evaluate

    # what the evaluations score: the similarities and relevance of each (direction, k), each test-split AUROC
    ranked, scored = [], []
    real_precision, real_auroc = evaluate.precision_at_k, evaluate.multilabel_macro_auroc

    def precision_spy(similarity, relevant, k):
        ranked.append((similarity.clone(), relevant.clone(), k))
        return real_precision(similarity, relevant, k)

    def auroc_spy(scores, labels):
        scored.append((scores.clone(), labels.clone()))
        return real_auroc(scores, labels)

    monkeypatch.setattr(evaluate, "precision_at_k", precision_spy)
    monkeypatch.setattr(evaluate, "multilabel_macro_auroc", auroc_spy)
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
    assert found["chance"] == pytest.approx(1 / 6)
    # text-to-image P@5 recomputed: per query the share of relevant images among the 5 most similar, averaged
    # per category, then over categories (image-to-image is scored first, so its k=5 call comes first)
    similarity, relevant, _ = [call for call in ranked if call[2] == 5][1]
    with open(phantom / "retrieval" / "text_query.csv", newline="") as handle:
        query_categories = [row["Variable"] for row in csv.DictReader(handle)]
    assert len(query_categories) == len(similarity)
    per_query = []
    for row, hits in zip(similarity.tolist(), relevant.tolist(), strict=True):
        top = sorted(range(len(row)), key=lambda j: -row[j])[:5]
        per_query.append(sum(hits[j] for j in top) / 5)
    per_category = {
        c: sum(p for p, q in zip(per_query, query_categories, strict=True) if q == c) / query_categories.count(c)
        for c in dict.fromkeys(query_categories)
    }
    assert found["text_to_image"]["precision_at_5_per_category"] == pytest.approx(per_category)
    assert found["text_to_image"]["precision_at_5"] == pytest.approx(sum(per_category.values()) / len(per_category))
    assert set(found["image_to_image"]["precision_at_5_per_category"]) == set(found["categories"])
    for task in ("probe", "knn", "finetune"):
        extra = ["--finetune_epochs", "1"] if task == "finetune" else []
        args = ["radiology", "eval", task, "--checkpoint", checkpoint, "--store", store, "--fractions", "[0.5]"]
        assert main([*args, *extra, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["init"] for r in rows} == {"convirt", "random"}
        # each row's AUROC is the macro AUROC of its test-split scores, recomputed pair by pair
        assert len(scored) == len(rows)
        for row, (scores, labels) in zip(rows, scored, strict=True):
            both = [j for j in range(labels.shape[1]) if 0 < int(labels[:, j].sum()) < len(labels)]
            assert both, "the test split must hold positives and negatives of some finding"
            expected = sum(_pairs_in_order(scores[:, j], labels[:, j].bool()) for j in both) / len(both)
            assert row["auroc"] == pytest.approx(expected, abs=1e-6), (task, row["init"])
        scored.clear()


def test_retrieval_without_queries_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "c.safetensors").write_bytes(b"x")
    assert main(["radiology", "eval", "retrieval", "--checkpoint", str(tmp_path / "c.safetensors")]) == 2
    assert "c.safetensors" in capsys.readouterr().err
