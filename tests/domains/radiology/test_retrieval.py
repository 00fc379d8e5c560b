"""Retrieval on CSVs in the ConVIRT repository's CheXpert 8x200 format, with a stub embedding model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.domains.radiology.evaluate import retrieval


class BrightnessModel(torch.nn.Module):
    """Embeds an image by its mean brightness and every sentence alike: retrieval by hand."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        m = images.mean(dim=(1, 2, 3))
        return torch.nn.functional.normalize(torch.stack([m, 1 - m], 1), dim=1)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.ones(len(input_ids), 2), dim=1)


def test_chexpert_format_uncertain_labels_are_not_hits(tmp_path: Path):
    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    for name, value in (("a", 0.1), ("b", 0.2), ("c", 0.8), ("d", 0.9), ("q", 0.12)):
        Image.fromarray(np.full((8, 8), int(value * 255), np.uint8)).save(root / f"{name}.png")
    (tmp_path / "candidate.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,Pleural Effusion,Cardiomegaly\n"
        "CheXpert-v1.0-small/a.png,Male,80,Frontal,AP,1.0,0.0\n"
        "CheXpert-v1.0-small/b.png,Female,70,Frontal,PA,-1.0,0.0\n"
        "CheXpert-v1.0-small/c.png,Male,60,Frontal,AP,0.0,1.0\n"
        "CheXpert-v1.0-small/d.png,Male,50,Frontal,AP,1.0,\n"
    )
    (tmp_path / "image_query.csv").write_text("Variable,Path\nPleural Effusion,CheXpert-v1.0-small/q.png\n")
    (tmp_path / "text_query.csv").write_text("Variable,Text\nCardiomegaly,The heart is enlarged.\n")
    meta = {"image_size": 8, "normalization": {"mean": 0.0, "std": 1.0}}

    def tokenizer(sentences: list[str]) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.zeros(len(sentences), 3, dtype=torch.long),
            "attention_mask": torch.ones(len(sentences), 3),
        }

    found = retrieval(
        BrightnessModel(), tokenizer, meta, tmp_path / "candidate.csv", tmp_path / "image_query.csv",
        tmp_path / "text_query.csv", ks=(1, 2), device="cpu",
    )  # fmt: skip
    assert found["categories"] == ["Pleural Effusion", "Cardiomegaly"]
    # query 0.12: nearest a (1.0: hit), then b (-1.0: uncertain, not a hit)
    assert found["image_to_image"]["precision_at_1"] == 1.0
    assert found["image_to_image"]["precision_at_2"] == 0.5
    assert found["chance"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert set(found["text_to_image"]["precision_at_1_per_category"]) == {"Cardiomegaly"}


def test_precision_at_k_and_macro_auroc_by_hand():
    from domainfm.domains.radiology.evaluate import precision_at_k
    from domainfm.shared.tasks.metrics import multilabel_macro_auroc as macro_auroc

    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.8, 0.6, 0.4]])
    relevant = torch.tensor([[True, True, False, False], [False, False, True, True]])
    # query 0 ranks 0 3 2 1: hits 1 0 0 1; query 1 ranks 1 2 3 0: hits 0 1 1 0
    torch.testing.assert_close(precision_at_k(similarity, relevant, 1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(precision_at_k(similarity, relevant, 3), torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(precision_at_k(similarity, relevant, 9), torch.tensor([0.5, 0.5]))  # k > candidates
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0]])
    scores = torch.tensor([[0.9, 0.5, 0.4], [0.8, 0.1, 0.7], [0.1, 0.3, 0.5], [0.3, 0.2, 0.2]])
    # label 0: positives 0.9 0.1 against 0.8 0.3 order 2 of 4 pairs; label 1 has no positive and is left
    # out; label 2: positives 0.4 0.7 against 0.5 0.2 order 3 of 4
    assert macro_auroc(scores, labels) == pytest.approx((2 / 4 + 3 / 4) / 2)
