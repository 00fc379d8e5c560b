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

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.splits import split_counts_problem


class EmptySplitError(DomainfmError):
    """A split that a command needs holds no (labelled) tiles; the message names it and ``--splits``."""


def split_counts(split: np.ndarray) -> dict[str, int]:
    """Tiles per split name (``unassigned`` for -1 when any)."""
    counts = {name: int((split == code).sum()) for name, code in SPLITS.items()}
    unassigned = int((split < 0).sum())
    return counts | ({"unassigned": unassigned} if unassigned else {})


def require_splits(store: Path | str, split: np.ndarray, needed: Iterable[str], what: str) -> None:
    """Raises :class:`EmptySplitError` naming ``store``, ``what`` needs and the empty splits among ``needed``."""
    problem = split_counts_problem(split_counts(split), tuple(needed))
    if problem is not None:
        raise EmptySplitError(f"{store}: {what} needs tiles in these splits, but {problem}; then re-tile")


def pretraining_tiles(store: Path | str, split: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Tile ids outside the test split (train, val and unassigned) and the names of the splits they are in.

    A store whose every tile is in ``test`` (one slide that hashed there) raises :class:`EmptySplitError`.
    """
    ids = np.flatnonzero(split != SPLITS["test"])
    if len(ids) == 0:
        counts = split_counts(split)
        raise EmptySplitError(
            f"{store}: pretraining uses every tile outside the test split, and all {counts.get('test', 0)} tiles "
            "are in test; assign slides to train with --splits CSV (columns: slide,split) and re-tile"
        )
    used = [name for name, n in split_counts(split[ids]).items() if n]
    return ids, used
