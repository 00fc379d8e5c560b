"""Cloud IoU, mean IoU, false-negative rate and multilabel AUROC on hand-counted pixels and scenes."""

import pytest
import torch

from domainfm.domains.remote_sensing.downstream import _scores


def test_cloud_scores_by_hand():
    # cloud where the logit is > 0 (a logit of exactly 0 is clear)
    logits = torch.tensor([2.0, 1.0, -1.0, 0.0, 3.0, -2.0, -3.0, 0.5, -0.5, -4.0]).reshape(1, 2, 5)
    truth = torch.tensor([1, 1, 1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.float32).reshape(1, 2, 5)
    scores = _scores("segment", logits, truth)
    # true positives 3, false negatives 2 (-1.0 and 0.0), false positives 1 (3.0), true negatives 4
    assert scores["cloud_iou"] == pytest.approx(3 / (3 + 1 + 2))
    assert scores["miou"] == pytest.approx((3 / 6 + 4 / (4 + 1 + 2)) / 2)
    assert scores["false_negative_rate"] == pytest.approx(2 / 5)
    # the curtain task is scored the same way
    assert _scores("curtain", logits, truth) == scores


def test_multilabel_macro_auroc_by_hand():
    target = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, 0.0], [-1.0, 3.0], [0.5, -2.0], [1.0, 1.0]])
    # label 0: positives 2.0 0.5 against -1.0 1.0 order 3 of 4 pairs; label 1: 3.0 -2.0 against 0.0 1.0: 2 of 4
    assert _scores("multilabel", logits, target)["macro_auroc"] == pytest.approx((3 / 4 + 2 / 4) / 2)
