"""Tile-probe and slide-MIL scores on hand-built predictions whose accuracy, balanced accuracy and AUROC are
worked out by hand (AUROC: the fraction of positive-negative pairs ranked the right way, no ties)."""

import pytest
import torch

from domainfm.domains.pathology import mil
from domainfm.domains.pathology.heads import classification_scores

# 8 tiles, 4 classes, class 3 never true; predicted (argmax) 0 0 0 3 | 1 0 | 2 0
PROBABILITIES = torch.tensor(
    [
        [0.70, 0.10, 0.10, 0.10],
        [0.60, 0.20, 0.10, 0.10],
        [0.50, 0.10, 0.30, 0.10],
        [0.20, 0.10, 0.10, 0.60],
        [0.30, 0.50, 0.10, 0.10],
        [0.40, 0.30, 0.20, 0.10],
        [0.10, 0.20, 0.60, 0.10],
        [0.45, 0.15, 0.35, 0.05],
    ]
)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])


def test_probe_scores_by_hand():
    scores = classification_scores(PROBABILITIES, LABELS, 4)
    assert scores["accuracy"] == pytest.approx(5 / 8)
    # recall 3/4, 1/2, 1/2 over the classes that occur (class 3, predicted once but never true, is left out)
    assert scores["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1 / 2) / 3)
    # one-vs-rest AUROC over the classes present: class 0 positives 0.7 0.6 0.5 0.2 against negatives
    # 0.3 0.4 0.1 0.45 order 13 of 16 pairs; classes 1 and 2 order every pair
    assert scores["macro_auroc"] == pytest.approx((13 / 16 + 1 + 1) / 3)


def _evaluate(monkeypatch: pytest.MonkeyPatch, probabilities: list[list[float]], labels: list[int]) -> dict:
    n_classes = len(probabilities[0])
    monkeypatch.setattr(mil, "predict_mil", lambda model, bags: torch.tensor(probabilities))
    bags = [torch.zeros(2, 4) for _ in labels]
    return mil.evaluate_mil(mil.GatedABMIL(4, n_classes), bags, labels)


def test_mil_scores_by_hand(monkeypatch: pytest.MonkeyPatch):
    # predicted 0 2 | 1 1: class 2 is predicted but never true
    probabilities = [[0.6, 0.1, 0.3], [0.22, 0.2, 0.58], [0.2, 0.7, 0.1], [0.25, 0.5, 0.25]]
    scores = _evaluate(monkeypatch, probabilities, [0, 0, 1, 1])
    assert scores["accuracy"] == pytest.approx(3 / 4) and scores["n_slides"] == 4
    # mean recall over the classes seen in labels or predictions: 1/2, 1 and 0 (class 2)
    assert scores["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # class 0: positives 0.6 0.22 against 0.2 0.25 order 3 of 4 pairs; class 1: all pairs; class 2 absent
    assert scores["auroc"] == pytest.approx((3 / 4 + 1) / 2)
    # a class neither true nor predicted does not count towards the balanced accuracy
    unseen = _evaluate(monkeypatch, [[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.3, 0.5, 0.2]], [0, 0, 1, 1])
    assert unseen["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)


def test_binary_mil_auroc_ranks_the_positive_class(monkeypatch: pytest.MonkeyPatch):
    # P(class 1): positives 0.8 0.4 against negatives 0.2 0.6 order 3 of 4 pairs
    scores = _evaluate(monkeypatch, [[0.8, 0.2], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]], [0, 1, 0, 1])
    assert scores["auroc"] == pytest.approx(3 / 4)
    assert scores["accuracy"] == pytest.approx(2 / 4) and scores["balanced_accuracy"] == pytest.approx(1 / 2)
