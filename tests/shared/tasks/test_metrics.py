import math

import pytest
import torch

from domainfm.shared.tasks.metrics import binary_auroc, multiclass_macro_auroc, multilabel_macro_auroc


def rank_auroc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """AUROC by counting pairs: P(score of a positive > score of a negative), ties count half."""
    pos, neg = scores[target == 1], scores[target == 0]
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_binary_auroc_of_four_scores():
    # positives 0.8 and 0.35, negatives 0.4 and 0.1: 3 of the 4 positive-negative pairs are ordered
    scores, target = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])
    assert binary_auroc(scores, target) == pytest.approx(0.75)
    assert binary_auroc(torch.tensor([0.5, 0.5, 0.5, 0.9]), target) == pytest.approx(
        rank_auroc(torch.tensor([0.5, 0.5, 0.5, 0.9]), target)
    )


def test_binary_auroc_of_one_class_is_nan():
    assert math.isnan(binary_auroc(torch.tensor([0.1, 0.9]), torch.tensor([1, 1])))


def test_multilabel_leaves_out_labels_with_one_value():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(30, 3, generator=generator)
    labels = (torch.rand(30, 3, generator=generator) > 0.5).long()
    labels[:, 2] = 0  # degenerate: torchmetrics alone would count it as 0
    expected = (rank_auroc(scores[:, 0], labels[:, 0]) + rank_auroc(scores[:, 1], labels[:, 1])) / 2
    assert multilabel_macro_auroc(scores, labels) == pytest.approx(expected)
    # logits give the same ranking, hence the same AUROC
    assert multilabel_macro_auroc(torch.logit(scores), labels) == pytest.approx(expected)
    assert math.isnan(multilabel_macro_auroc(scores, torch.ones_like(labels)))


def test_multiclass_is_one_vs_rest_over_present_classes():
    generator = torch.Generator().manual_seed(1)
    probabilities = torch.rand(40, 4, generator=generator).softmax(1)
    target = torch.randint(0, 3, (40,), generator=generator)  # class 3 absent
    expected = sum(rank_auroc(probabilities[:, c], (target == c).long()) for c in range(3)) / 3
    assert multiclass_macro_auroc(probabilities, target, 4) == pytest.approx(expected)
    assert math.isnan(multiclass_macro_auroc(probabilities, torch.zeros(40, dtype=torch.long), 4))


def test_multiclass_takes_logits_through_softmax():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(25, 3, generator=generator) * 3
    target = torch.randint(0, 3, (25,), generator=generator)
    assert multiclass_macro_auroc(logits, target) == pytest.approx(multiclass_macro_auroc(logits.softmax(1), target))


def test_two_classes_is_the_binary_auroc():
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    target = torch.tensor([0, 0, 1, 1])
    assert multiclass_macro_auroc(probabilities, target) == pytest.approx(0.75)
