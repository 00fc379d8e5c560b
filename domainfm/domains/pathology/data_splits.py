"""Which splits a pathology command reads, and the one-line error when one it needs holds no tiles.

Tiles of one slide share a split (``pathology tile``: a ``--splits`` CSV read by
:mod:`domainfm.shared.tiles.splits`, else a stable hash of the slide's name), so a store of one slide has
only one split. Self-supervised pretraining needs no labels and no held-out tiles beyond the test split,
so it reads every tile outside ``test`` (:func:`pretraining_tiles`); supervised heads need labelled
``train`` and ``test`` tiles (:func:`require_splits`). An empty split is a :class:`EmptySplitError` that
names the split and the fix, never "lower --batch_size" or a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from domainfm.shared.tiles.split_counts import EmptySplitError, split_counts
from domainfm.shared.tiles.split_counts import pretraining_tiles as shared_pretraining_tiles
from domainfm.shared.tiles.splits import split_counts_problem


def require_splits(store: Path | str, split: np.ndarray, needed: Iterable[str], what: str) -> None:
    """Raises :class:`EmptySplitError` naming ``store``, ``what`` needs and the empty splits among ``needed``."""
    problem = split_counts_problem(split_counts(split), tuple(needed))
    if problem is not None:
        raise EmptySplitError(f"{store}: {what} needs tiles in these splits, but {problem}; then re-tile")


def pretraining_tiles(store: Path | str, split: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Tile ids outside the test split and the splits they are in; every tile in ``test`` names ``--splits``."""
    return shared_pretraining_tiles(store, split, group="slide")
