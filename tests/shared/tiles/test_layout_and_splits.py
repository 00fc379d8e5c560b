"""`tiles ingest` of plain arrays: channels-last arrays refused by name or read with --layout nhwc, and
--splits giving each file's tiles a split (otherwise unassigned), with the file recorded as the group."""

from pathlib import Path

import numpy as np

from domainfm.cli import main
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore


def pictures(path: Path, n: int = 5, seed: int = 0) -> np.ndarray:
    """``n`` RGB pictures of 16 x 16 in channels-last order, as most image arrays are saved."""
    array = np.random.default_rng(seed).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    np.save(path, array)
    return array


def test_a_channels_last_array_is_refused_by_name_unless_the_layout_is_given(tmp_path: Path, capsys):
    array = pictures(tmp_path / "rgb.npy")
    out = tmp_path / "s.zarr"
    assert main(["tiles", "ingest", str(tmp_path / "rgb.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rgb.npy holds shape (5, 16, 16, 3), which looks channels-last" in err and "--layout nhwc" in err
    assert not out.exists()
    assert main(["tiles", "ingest", str(tmp_path / "rgb.npy"), "--out", str(out), "--layout", "nhwc"]) == 0
    store = TileStore(out)
    assert store.spec.tile_shape == (3, 16, 16)
    np.testing.assert_array_equal(np.asarray(store.tiles[:]), array.transpose(0, 3, 1, 2))
    assert (store.index["split"] == -1).all()  # no --splits: unassigned, as before


def test_splits_csv_assigns_each_file_and_records_it(tmp_path: Path, capsys):
    for i in range(3):
        pictures(tmp_path / f"site{i}.npy", n=4, seed=i)
    splits = tmp_path / "splits.csv"
    splits.write_text("source,split\nsite0,train\nsite1.npy,val\nsite2,test\n")
    out = tmp_path / "s.zarr"
    files = [str(tmp_path / f"site{i}.npy") for i in range(3)]
    assert main(["tiles", "ingest", *files, "--out", str(out), "--layout", "nhwc", "--splits", str(splits)]) == 0
    store = TileStore(out)
    assert store.index["split"].tolist() == [SPLITS["train"]] * 4 + [SPLITS["val"]] * 4 + [SPLITS["test"]] * 4
    assert [s["meta"]["group"] for s in store.sources] == ["site0", "site1", "site2"]
    capsys.readouterr()
    splits.write_text("source,split\nsite0,train\nsite1,train\n")
    assert main(["tiles", "ingest", *files, "--out", str(tmp_path / "t.zarr"), "--layout", "nhwc",
                 "--splits", str(splits)]) == 2  # fmt: skip
    assert "'site2' is not listed" in capsys.readouterr().err and not (tmp_path / "t.zarr").exists()


def test_an_ingest_with_an_empty_split_warns(tmp_path: Path, capsys):
    pictures(tmp_path / "a.npy")
    splits = tmp_path / "splits.csv"
    splits.write_text("source,split\na,train\n")
    argv = ["tiles", "ingest", str(tmp_path / "a.npy"), "--out", str(tmp_path / "s.zarr"), "--layout", "nhwc"]
    assert main([*argv, "--splits", str(splits)]) == 0
    assert "split(s) val, test hold no tiles (train 5, val 0, test 0)" in capsys.readouterr().err
