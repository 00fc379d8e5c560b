"""The seeded choice of labelled training examples (label-fraction and label-count experiments)."""

from __future__ import annotations

import numpy as np


def label_fraction(
    ids: np.ndarray,
    fraction: float | None = None,
    seed: int = 0,
    *,
    labels: np.ndarray | None = None,
    count: int | None = None,
    minimum: int = 2,
) -> np.ndarray:
    """A seeded subset of ``ids`` (sorted): the same ids for the same arguments on every machine.

    Args:
        ids: The candidate ids (e.g. the labelled tiles of the train split).
        fraction: Share of ``ids`` to keep (``round(fraction * n)``).
        seed: Seed of the choice (``numpy.random.default_rng``).
        labels: One class per id: the choice is then stratified, ``max(1, round(fraction * n_c))`` ids of
            each class ``c`` in ascending class order, so every class keeps at least one example.
        count: Instead of ``fraction``, keep this many ids (plain choice, at most all of them).
        minimum: Without ``labels``, keep at least this many ids (at most all of them).
    """
    ids = np.asarray(ids)
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction and count")
    rng = np.random.default_rng(seed)
    if count is not None:
        size = min(count, len(ids))
    elif labels is not None:
        labels = np.asarray(labels)
        if labels.shape != ids.shape:
            raise ValueError(f"labels {labels.shape} and ids {ids.shape} differ in shape")
        chosen = [
            rng.choice(ids[labels == label], size=max(1, round(fraction * int((labels == label).sum()))), replace=False)
            for label in np.unique(labels)
        ]
        return np.sort(np.concatenate(chosen)) if chosen else ids[:0]
    else:
        size = min(len(ids), max(minimum, round(fraction * len(ids))))
    return np.sort(rng.choice(ids, size=size, replace=False))
