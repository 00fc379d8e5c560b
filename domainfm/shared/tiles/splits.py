"""Splits as data, decided per group: a ``--splits`` CSV, or a stable hash of the group key.

Tiles of one group (a slide, a MODIS granule or scene, a patient or study, a segmentation case) must land in
one split, or train and test share the group and the score leaks. Each domain's reader names its group key
(:func:`group_split`); a user's CSV (:func:`read_splits_csv`) overrides the hash for the keys it lists.
:func:`split_counts_problem` turns the tile counts per split into the message a user needs when a split
is empty.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS, stable_split

KEY_COLUMNS = ("group", "source", "slide", "scene", "granule", "patient", "study", "case", "image", "name", "id")
SPLIT_NAMES = {name: name for name in SPLITS} | {"validation": "val", "valid": "val", "training": "train"}


class SplitsError(DomainfmError):
    """A splits CSV that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class SplitTable:
    """Group key -> split name, from a user's CSV (:func:`read_splits_csv`)."""

    path: Path
    key_column: str
    splits: Mapping[str, str]

    def lookup(self, *candidates: str) -> str | None:
        """The split of the first candidate key the table lists (e.g. a file name, then its stem)."""
        for key in candidates:
            if key in self.splits:
                return self.splits[key]
        return None


def read_splits_csv(path: str | Path) -> SplitTable:
    """Reads a CSV of ``<key>,split`` rows; the key column may be any of :data:`KEY_COLUMNS` (any case).

    Split names are ``train``, ``val`` (or ``validation``/``valid``) and ``test``, in any case.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise SplitsError(f"{path}: cannot be read as a splits CSV ({error})") from error
    columns = {c.strip().lower(): c for c in (rows[0].keys() if rows else [])}
    key = next((columns[c] for c in KEY_COLUMNS if c in columns), None)
    if not rows or key is None or "split" not in columns:
        raise SplitsError(
            f"{path}: a splits CSV needs a column 'split' and a key column (one of {', '.join(KEY_COLUMNS)}); "
            f"it has {sorted(columns.values()) or 'no rows'}"
        )
    table: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name = (row[columns["split"]] or "").strip().lower()
        if name not in SPLIT_NAMES:
            raise SplitsError(f"{path}, line {line}: unknown split {row[columns['split']]!r}; use train, val or test")
        group = (row[key] or "").strip()
        if group in table and table[group] != SPLIT_NAMES[name]:
            raise SplitsError(f"{path}, line {line}: {group!r} is listed in two splits")
        table[group] = SPLIT_NAMES[name]
    return SplitTable(path, key, table)


def group_split(
    group: str,
    table: SplitTable | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    aliases: Iterable[str] = (),
) -> int:
    """The split id of a group: the table's entry (for ``group`` or one of its ``aliases``), else its hash.

    A table that lists none of the keys is an error naming the group: a partly listed dataset would
    otherwise split silently by hash.
    """
    if table is None:
        return stable_split(group, val_fraction, test_fraction)
    name = table.lookup(group, *aliases)
    if name is None:
        raise SplitsError(
            f"{table.path}: {group!r} is not listed (add a row '{group},<train|val|test>' under the column "
            f"'{table.key_column}')"
        )
    return SPLITS[name]


def split_counts_problem(counts: Mapping[str, int], needed: Iterable[str] = ("train", "val", "test")) -> str | None:
    """A sentence naming the empty splits among ``needed`` and the fix, or ``None`` when none is empty."""
    empty = [name for name in needed if counts.get(name, 0) == 0]
    if not empty:
        return None
    held = ", ".join(f"{name} {counts.get(name, 0)}" for name in SPLITS)
    return (
        f"split(s) {', '.join(empty)} hold no tiles ({held}); give more groups (slides, scenes, patients, cases), "
        f"or assign them with --splits CSV (columns: group,split)"
    )
