"""Tiles per split of a finished store, and the warning an ingest prints when a split is empty."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.splits import split_counts_problem

if TYPE_CHECKING:
    from domainfm.shared.tiles.store import TileStore


def split_counts(index_split: np.ndarray) -> dict[str, int]:
    """Tiles per split name (``train``, ``val``, ``test``, and ``unassigned`` when any) of an ``index/split`` column."""
    column = np.asarray(index_split)
    counts = {name: int((column == code).sum()) for name, code in SPLITS.items()}
    unassigned = int((column < 0).sum())
    return counts | ({"unassigned": unassigned} if unassigned else {})


def warn_empty_splits(store: Path, needed: Iterable[str] = ("train", "val", "test")) -> str | None:
    """Prints (to stderr) and returns a warning naming the store's empty splits; ``None`` when none is empty.

    A store that is incomplete or unreadable is left to the ingest report.
    """
    from domainfm.shared.tiles.store import TileStore

    try:
        opened = TileStore(store)
    except Exception:
        return None
    problem = split_counts_problem(split_counts(opened.index["split"]), needed)
    if problem is not None:
        print(f"warning: {store}: {problem}", file=sys.stderr)
    return problem


class EmptySplitError(DomainfmError):
    """A split a command needs holds no tiles; the message names it, the counts and the fix."""


def require_splits(store: TileStore, needed: Iterable[str], purpose: str) -> dict[str, int]:
    """The store's tiles per split; raises :class:`EmptySplitError` naming ``purpose`` when a needed split is empty."""
    counts = split_counts(store.index["split"])
    problem = split_counts_problem(counts, needed)
    if problem is not None:
        raise EmptySplitError(f"{store.path}: {purpose}: {problem}")
    return counts


def pretraining_tiles(store: Path | str, index_split: np.ndarray, group: str = "group") -> tuple[np.ndarray, list[str]]:
    """Tile ids outside the test split (train, val and unassigned) and the names of the splits they are in.

    Self-supervised pretraining needs no labels and no held-out tiles beyond ``test``, so one slide, scene or
    study can be pretrained on. A store whose every tile is in ``test`` raises :class:`EmptySplitError` naming
    the fix (``group``: what a row of ``--splits`` names, e.g. ``slide``).
    """
    column = np.asarray(index_split)
    ids = np.flatnonzero(column != SPLITS["test"])
    if len(ids) == 0:
        raise EmptySplitError(
            f"{store}: pretraining uses every tile outside the test split, and all {len(column)} tiles are in test; "
            f"assign {group}s to train with --splits CSV (columns: {group},split) and ingest again"
        )
    used = [name for name, n in split_counts(column[ids]).items() if n]
    return ids, used
