import json
from pathlib import Path

import numpy as np
import pytest
import torch

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


def _pairs_in_order(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """AUROC as the fraction of positive-negative pairs scored in the right order (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    return float(((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean())


def test_evaluate_scores_by_hand():
    from domainfm.studies.shared.peft.compare import _evaluate

    # the backbone and head pass the logits through; predicted 0 0 0 0 1 | 1 2 | 2 2, true 0 x5, 1 x2, 2 x2
    logits = torch.tensor(
        [
            [3.0, 0, 0],
            [2.0, 1, 0],
            [2.0, 0, 1],
            [1.0, 0, 0],
            [0, 1.0, 0],
            [0, 2.0, 0],
            [0, 0, 2.0],
            [1, 0, 1.5],
            [0, 1, 3.0],
        ]
    )
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2])
    stream = [{"tiles": logits[:4], "label": labels[:4]}, {"tiles": logits[4:], "label": labels[4:]}]
    scores = _evaluate(torch.nn.Identity(), torch.nn.Identity(), stream, 3)
    assert scores["accuracy"] == pytest.approx(7 / 9)  # the share of tiles right, not the mean recall (0.77)
    probabilities = logits.softmax(1)
    expected = sum(_pairs_in_order(probabilities[:, c], labels == c) for c in range(3)) / 3
    assert scores["auroc"] == pytest.approx(expected, abs=1e-6)


def test_compare_writes_tables_and_reattachable_adapters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.studies.shared.peft import compare

    real_evaluate, recomputed = compare._evaluate, []

    def evaluate_spy(backbone, head, stream, classes):
        """Recomputes accuracy and one-vs-rest AUROC from the model's own val logits, alongside the real call."""
        scores = real_evaluate(backbone, head, stream, classes)
        with torch.no_grad():
            batches = list(stream)
            logits = torch.cat([head(backbone(b["tiles"])).float().cpu() for b in batches])
        labels = torch.cat([b["label"].long().cpu() for b in batches])
        probabilities = logits.softmax(1)
        assert all(0 < int((labels == c).sum()) < len(labels) for c in range(classes)), "every class in val"
        recomputed.append(
            {
                "accuracy": float((logits.argmax(1) == labels).double().mean()),
                "auroc": sum(_pairs_in_order(probabilities[:, c], labels == c) for c in range(classes)) / classes,
            }
        )
        return scores

    monkeypatch.setattr(compare, "_evaluate", evaluate_spy)
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
        assert row["step_ms"] > 0
        assert row["reattach_max_abs_diff"] == 0.0
        assert (out / "adapters" / f"{row['method']}_0.5.safetensors").is_file()
    assert rows[0]["trainable"] == 0 and 0 < rows[1]["fraction_of_backbone"] < 0.2
    # each row's scores are those of its model's val logits
    assert len(recomputed) == len(rows)
    for row, expected in zip(rows, recomputed, strict=True):
        assert row["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6), row["method"]
        assert row["auroc"] == pytest.approx(expected["auroc"], abs=1e-5), row["method"]
    table = (out / "results.md").read_text()
    assert "| dvpt | 0.500 |" in table and (out / "config.yaml").is_file()
