"""Splits grouped by slide, as data: a --splits CSV, what pretraining reads, and empty splits named with the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.domains.pathology.data_splits import EmptySplitError, pretraining_tiles, require_splits
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles import TileStore
from domainfm.studies.pathology.phantom import write_phantom_slide

OBJECTIVE = '{"out_dim": 32, "head_hidden": 16, "head_bottleneck": 8, "local_size": 32, "n_local": 1}'


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_slide(tmp_path_factory.mktemp("one") / "only.svs", 768, seed=3, mpp=0.5).path


def _tile(slide: Path, out: Path, splits: Path) -> int:
    return main(["pathology", "tile", str(slide), "--out", str(out), "--tile_size", "64", "--splits", str(splits)])


def test_pretraining_reads_every_split_but_test():
    ids, used = pretraining_tiles("s.zarr", np.array([2, 2, 0, 1, -1, 0], np.int8))
    assert ids.tolist() == [2, 3, 4, 5] and used == ["train", "val", "unassigned"]
    with pytest.raises(EmptySplitError, match=r"s\.zarr: .*all 2 tiles are in test; .*--splits CSV"):
        pretraining_tiles("s.zarr", np.array([2, 2], np.int8))


def test_a_needed_empty_split_is_named_with_the_fix():
    with pytest.raises(EmptySplitError, match=r"e\.zarr: a probe needs .* split\(s\) test hold no tiles .*--splits"):
        require_splits("e.zarr", np.array([0, 0, 1], np.int8), ("train", "test"), "a probe")
    require_splits("e.zarr", np.array([0, 2], np.int8), ("train", "test"), "a probe")  # both present: no error
    assert issubclass(EmptySplitError, DomainfmError)


def test_a_single_slide_in_test_warns_at_tiling_and_pretraining_names_the_split(
    slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    splits = tmp_path / "splits.csv"
    splits.write_text("Source,Split\nonly.svs,TEST\n")  # key column and split name in any case
    store = tmp_path / "t.zarr"
    assert _tile(slide, store, splits) == 0
    index = TileStore(store).index
    assert len(index["split"]) > 0 and (index["split"] == 2).all()
    assert "split(s) train, val hold no tiles" in capsys.readouterr().err
    code = main(["pathology", "pretrain", "--store", str(store), "--out", str(tmp_path / "p"), "--epochs", "1",
                 "--objective", OBJECTIVE, "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "are in test" in err and "--splits" in err and "batch_size" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_tiling_warns_naming_the_empty_splits(slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    splits = tmp_path / "splits.csv"
    splits.write_text("slide,split\nonly,Validation\n")  # by stem; validation means val
    assert _tile(slide, tmp_path / "v.zarr", splits) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "split(s) train, test hold no tiles" in err
    assert (TileStore(tmp_path / "v.zarr").index["split"] == 1).all()


def test_a_single_train_slide_pretrains_and_says_which_splits(slide: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text("slide,split\nonly.svs,val\n")
    store = tmp_path / "t.zarr"
    assert _tile(slide, store, splits) == 0
    capsys.readouterr()
    assert main(["pathology", "pretrain", "--store", str(store), "--out", str(tmp_path / "p"), "--epochs", "1",
                 "--batch_size", "4", "--objective", OBJECTIVE, "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    n = len(TileStore(store))
    assert f"on {n} tiles of split(s) val (test held out)" in out


def test_a_slide_missing_from_the_splits_csv_is_named(slide: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text("slide,split\nother.svs,train\n")
    assert _tile(slide, tmp_path / "m.zarr", splits) == 1  # the slide fails by name, the run reports it
    assert "'only.svs' is not listed" in capsys.readouterr().out
