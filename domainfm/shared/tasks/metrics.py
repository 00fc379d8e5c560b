"""Macro AUROC on torchmetrics, with one rule for degenerate targets.

A label (multi-label) or class (multi-class, one-vs-rest) whose targets hold only one value has no AUROC:
torchmetrics scores it 0 with a warning, which would drag a macro mean down. Here such labels and classes
are left out of the mean, and a mean over none of them is NaN. Scores may be probabilities or logits:
torchmetrics applies a sigmoid (multi-label, binary) or softmax (multi-class) to values outside [0, 1].
"""

from __future__ import annotations

import warnings

import torch


def _mean(per_class: torch.Tensor, valid: torch.Tensor) -> float:
    return float(per_class[valid].double().mean()) if bool(valid.any()) else float("nan")


def binary_auroc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """AUROC of ``scores`` ``[N]`` for binary ``target`` ``[N]``; NaN when ``target`` holds one value only."""
    from torchmetrics.functional.classification import binary_auroc as tm_binary_auroc

    target = target.long()
    if not 0 < int(target.sum()) < len(target):
        return float("nan")
    return float(tm_binary_auroc(scores.float(), target))


def multilabel_macro_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean AUROC over the labels (columns of ``labels`` ``[N, L]``) that hold both values; NaN if none does."""
    from torchmetrics.functional.classification import multilabel_auroc

    labels = labels.long()
    positives = labels.sum(0)
    valid = (positives > 0) & (positives < len(labels))
    if not bool(valid.any()):
        return float("nan")
    columns = valid.nonzero().flatten()
    per_label = multilabel_auroc(scores[:, columns].float(), labels[:, columns], len(columns), average=None)
    return _mean(per_label, torch.ones_like(columns, dtype=torch.bool))


def multiclass_macro_auroc(scores: torch.Tensor, target: torch.Tensor, num_classes: int | None = None) -> float:
    """Macro one-vs-rest AUROC over the classes present in ``target`` ``[N]``; NaN with fewer than two present.

    ``scores`` ``[N, C]`` are class probabilities or logits. With two classes this is the binary AUROC of
    the second column (one-vs-rest AUROC is the same for both classes then).
    """
    from torchmetrics.functional.classification import multiclass_auroc

    num_classes = num_classes or scores.shape[1]
    target = target.long()
    counts = torch.bincount(target, minlength=num_classes)[:num_classes]
    valid = (counts > 0) & (counts < len(target))
    if not bool(valid.any()):
        return float("nan")
    if num_classes == 2:
        probabilities = scores if bool(((scores >= 0) & (scores <= 1)).all()) else scores.softmax(1)
        return binary_auroc(probabilities[:, 1], target)
    with warnings.catch_warnings():  # absent classes: torchmetrics warns and scores them 0; they are left out
        warnings.simplefilter("ignore", UserWarning)
        per_class = multiclass_auroc(scores.float(), target, num_classes, average=None)
    return _mean(per_class, valid)
