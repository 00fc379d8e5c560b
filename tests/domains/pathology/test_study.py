"""The PLUTO acceptance at small scale: pretrained embeddings beat random-initialised ones on held-out slides."""

from pathlib import Path

import pytest

from domainfm.studies.pathology.workflow import run_study


@pytest.mark.slow
def test_pretrained_embeddings_separate_tissue_classes_better_than_random_init(tmp_path: Path):
    results = run_study(
        tmp_path, slides=8, slide_size=1536, test_slides=3, pretrain_epochs=24, mil_epochs=10, device="cpu",
        progress=False,
    )  # fmt: skip
    score = {(r["init"], r["labelled"]): r["balanced_accuracy"] for r in results["probe"]}
    for labelled in (1.0, 0.1):
        assert score["pluto", labelled] > score["random", labelled] + 0.05, score
    assert results["mil"]["test_slides"] == 3 and len(results["mil"]["heatmaps"]) == 3
    assert (tmp_path / "results.md").read_text().count("| pluto |") == 2
