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
    """Tiles per split name (``train``, ``val``, ``test``) of an ``index/split`` column."""
    column = np.asarray(index_split)
    return {name: int((column == code).sum()) for name, code in SPLITS.items()}


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
