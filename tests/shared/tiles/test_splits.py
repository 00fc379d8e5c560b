"""Splits as data: a user's CSV overrides the per-group hash; bad CSVs and empty splits are named."""

from pathlib import Path

import pytest

from domainfm.shared.tiles.schema import SPLITS, stable_split
from domainfm.shared.tiles.splits import SplitsError, group_split, read_splits_csv, split_counts_problem


def test_csv_columns_and_split_names_in_any_case(tmp_path: Path):
    path = tmp_path / "splits.csv"
    path.write_text("\ufeffPatient,Split\np1,Train\np2,validation\np3,TEST\n")
    table = read_splits_csv(path)
    assert table.key_column == "Patient" and dict(table.splits) == {"p1": "train", "p2": "val", "p3": "test"}
    assert [group_split(g, table) for g in ("p1", "p2", "p3")] == [SPLITS["train"], SPLITS["val"], SPLITS["test"]]
    assert group_split("a.svs", table, aliases=("p3",)) == SPLITS["test"]  # file name first, then its stem


def test_without_a_table_the_group_hash_decides():
    assert [group_split(f"s{i}") for i in range(50)] == [stable_split(f"s{i}") for i in range(50)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slide,fold\na,1\n", "needs a column 'split'"),
        ("slide,split\na,holdout\n", "line 2: unknown split 'holdout'"),
        ("slide,split\na,train\na,test\n", "line 3: 'a' is listed in two splits"),
        ("", "no rows"),
    ],
)
def test_bad_csv_names_the_file_and_the_fix(tmp_path: Path, text: str, message: str):
    path = tmp_path / "splits.csv"
    path.write_text(text)
    with pytest.raises(SplitsError, match=message) as caught:
        read_splits_csv(path)
    assert str(path) in str(caught.value)


def test_a_group_missing_from_the_table_is_named(tmp_path: Path):
    path = tmp_path / "splits.csv"
    path.write_text("scene,split\nA,train\n")
    with pytest.raises(
        SplitsError, match=r"'B' is not listed \(add a row 'B,<train\|val\|test>' under the column 'scene'"
    ):
        group_split("B", read_splits_csv(path))


def test_empty_splits_are_named_with_the_counts():
    assert split_counts_problem({"train": 5, "val": 2, "test": 1}) is None
    message = split_counts_problem({"train": 0, "val": 0, "test": 9})
    assert message.startswith("split(s) train, val hold no tiles (train 0, val 0, test 9)") and "--splits" in message
    assert split_counts_problem({"train": 3, "test": 0}, needed=("train",)) is None
