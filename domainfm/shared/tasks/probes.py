"""Probes on frozen features: linear (softmax or logistic, one training loop) and cosine kNN.

The linear probes standardise the features with the training set's mean and std, then fit one linear
layer full-batch with Adam (lr 1e-2, L2 through ``weight_decay``) for ``steps`` steps. Each returns
``score(features) -> probabilities`` for new features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Scorer = Callable[[torch.Tensor], torch.Tensor]


def fit_linear_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    outputs: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    activation: Callable[[torch.Tensor], torch.Tensor],
    steps: int = 300,
    weight_decay: float = 1e-4,
    lr: float = 1e-2,
) -> Scorer:
    """One linear layer on standardised features trained on ``loss(logits, targets)``; scores ``activation(logits)``."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    head = nn.Linear(features.shape[1], outputs)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    x = (features - mean) / std
    for _ in range(steps):
        optimizer.zero_grad()
        loss(head(x), targets).backward()
        optimizer.step()
    return lambda f: activation(head((f - mean) / std)).detach()


def fit_softmax_probe(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 300, weight_decay: float = 1e-4
) -> Scorer:
    """Multinomial logistic regression (one class per item, ``labels`` ``[N]``); scores class probabilities."""
    return fit_linear_probe(
        features, labels, n_classes, nn.functional.cross_entropy, lambda z: torch.softmax(z, dim=1), steps, weight_decay
    )


def fit_logistic_probe(
    features: torch.Tensor, labels: torch.Tensor, steps: int = 300, weight_decay: float = 1e-3
) -> Scorer:
    """Logistic regression per label (multi-label, ``labels`` ``[N, L]`` of 0/1); scores per-label probabilities."""
    return fit_linear_probe(
        features,
        labels.float(),
        labels.shape[1],
        nn.functional.binary_cross_entropy_with_logits,
        torch.sigmoid,
        steps,
        weight_decay,
    )


def knn_scores(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Mean label of each test item's ``k`` cosine-nearest train items (per-label scores for multi-label)."""
    similarity = nn.functional.normalize(test, dim=1) @ nn.functional.normalize(train, dim=1).T
    neighbours = similarity.topk(min(k, len(train)), dim=1).indices
    return labels.float()[neighbours].mean(dim=1)
