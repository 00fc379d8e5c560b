"""Remote-sensing ingest of real layouts: splits per scene, BigEarthNet label JSON, chip sizes, named refusals."""

import json
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.domains.remote_sensing.scenes import read_labels, scene_key
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore

rasterio = pytest.importorskip("rasterio")

SCENE_A, SCENE_B = "S2A_MSIL2A_20170613T101031", "S2B_MSIL2A_20170924T93020"


def write_patch(folder: Path, name: str, labels: list[str], offset: int = 0, value: int | None = None) -> None:
    """A BigEarthNet-style patch: 120 x 120 px at 10 m (B02, B03, B04), B05 at 20 m, and its labels JSON."""
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    for band, resolution in (("B02", 10), ("B03", 10), ("B04", 10), ("B05", 20)):
        n = 1200 // resolution
        data = rng.integers(900, 1200, (n, n)).astype(np.uint16) if value is None else np.full((n, n), value, np.uint16)
        profile = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
                   "transform": from_origin(500000 + offset, 4000000, resolution, resolution), "nodata": 0}  # fmt: skip
        with rasterio.open(folder / f"{name}_{band}.tif", "w", **profile) as handle:
            handle.write(data, 1)
    (folder / f"{name}_labels_metadata.json").write_text(json.dumps({"labels": labels, "tile_source": "x"}))


@pytest.fixture
def patches(tmp_path: Path) -> Path:
    """Two datatakes with two patches each, in BigEarthNet's folder-per-patch layout."""
    root = tmp_path / "S2"
    write_patch(root / f"{SCENE_A}_1_1", f"{SCENE_A}_1_1", ["Pastures"])
    write_patch(root / f"{SCENE_A}_1_2", f"{SCENE_A}_1_2", ["Pastures", "Coniferous forest"], offset=1200)
    write_patch(root / f"{SCENE_B}_7_3", f"{SCENE_B}_7_3", ["Sea and ocean"])
    write_patch(root / f"{SCENE_B}_7_4", f"{SCENE_B}_7_4", ["Coniferous forest"], offset=1200)
    return root


def test_scene_keys_group_sentinel2_datatakes_and_keep_other_files_apart():
    assert scene_key(f"x/{SCENE_A}_87_48_B02.tif") == SCENE_A  # BigEarthNet patch: datatake, row, column
    assert scene_key("S2A_MSIL1C_20170613T101031_N0205_R022_T33UUP_20170613T101608.tif") == "S2A_MSIL1C_20170613T101031"
    assert scene_key("field_2020_05_B04.tif") == "field_2020_05"  # not Sentinel-2: the band set is the scene
    assert scene_key("a/MOD021KM.A2020001.0000.hdf", modis=True) == "MOD021KM.A2020001.0000.hdf"


def test_labels_are_read_from_bigearthnet_json_one_file_or_a_folder(patches: Path):
    names, table = read_labels(patches)
    assert names == ["Coniferous forest", "Pastures", "Sea and ocean"]
    assert table[f"{SCENE_A}_1_2"] == [1, 1, 0] and table[f"{SCENE_B}_7_3"] == [0, 0, 1]
    one = next(patches.rglob(f"{SCENE_B}_7_4_labels_metadata.json"))
    assert read_labels(one) == (["Coniferous forest"], {f"{SCENE_B}_7_4": [1]})


def test_folder_ingest_splits_per_scene_from_a_csv_and_records_the_scene(patches: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text(f"scene,split\n{SCENE_A},train\n{SCENE_B},test\n")
    out = tmp_path / "s2.zarr"
    code = main(["remote-sensing", "ingest", str(patches), "--out", str(out), "--chip", "32", "--labels", str(patches),
                 "--splits", str(splits)])  # fmt: skip
    assert code == 0
    assert "split(s) val hold no tiles" in capsys.readouterr().err  # warned at ingest, not at training
    store = TileStore(out)
    assert len(store.sources) == 4 and len(store) == 4 * 9  # 3 x 3 chips of 32 px in 120 px, all bands on one grid
    groups = [source["meta"]["group"] for source in store.sources]
    assert groups == [SCENE_A, SCENE_A, SCENE_B, SCENE_B]
    split, source = store.index["split"], store.index["source"]
    assert (split[source < 2] == SPLITS["train"]).all() and (split[source >= 2] == SPLITS["test"]).all()
    assert store.spec.label_names == ["Coniferous forest", "Pastures", "Sea and ocean"]
    np.testing.assert_array_equal(np.asarray(store.companion("labels")[:])[source == 2][0], [0, 0, 1])
    assert [c["name"] for c in store.spec.channels] == ["B02", "B03", "B04", "B05"]


def test_hashed_splits_never_put_one_scene_in_two_splits(patches: Path, tmp_path: Path):
    out = tmp_path / "s2.zarr"
    assert main(["remote-sensing", "ingest", str(patches), "--out", str(out), "--chip", "32"]) == 0
    store = TileStore(out)
    for first in (0, 2):  # the two patches of each datatake
        chips = np.isin(store.index["source"], [first, first + 1])
        assert len(np.unique(store.index["split"][chips])) == 1


@pytest.mark.parametrize(
    ("chip", "says"),
    [("60", "use a multiple of 32; sizes that fit 120 x 120: 32, 64, 96"), ("128", "use --chip 32, 64, 96")],
)
def test_chip_sizes_the_encoders_or_the_patches_cannot_use_are_refused_naming_valid_sizes(
    patches: Path, tmp_path: Path, capsys, chip: str, says: str
):
    assert main(["remote-sensing", "ingest", str(patches), "--out", str(tmp_path / "c.zarr"), "--chip", chip]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and not (tmp_path / "c.zarr").exists()


def test_an_ingest_that_writes_no_chip_fails_with_the_reason(tmp_path: Path, capsys):
    write_patch(tmp_path / "empty", f"{SCENE_A}_1_1", ["Pastures"], value=0)  # every pixel is nodata
    assert (
        main(["remote-sensing", "ingest", str(tmp_path / "empty"), "--out", str(tmp_path / "e.zarr"), "--chip", "32"])
        == 2
    )
    assert "no chip written from 1 source(s)" in capsys.readouterr().err


def test_arrays_and_unknown_bands_are_refused_in_one_line(patches: Path, tmp_path: Path, capsys):
    np.save(tmp_path / "chips.npy", np.zeros((2, 3, 32, 32), np.float32))
    assert main(["remote-sensing", "ingest", str(tmp_path / "chips.npy"), "--out", str(tmp_path / "n.zarr")]) == 2
    assert "chips.npy: a NumPy array is not a raster" in capsys.readouterr().err
    assert main(["remote-sensing", "ingest", str(patches), "--out", str(tmp_path / "b.zarr"), "--bands", "B99"]) == 2
    err = capsys.readouterr().err
    assert "unknown band(s) B99; the files hold B02, B03, B04, B05" in err and len(err.strip().splitlines()) == 1


def test_training_without_a_test_split_is_refused_before_any_epoch(patches: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text(f"scene,split\n{SCENE_A},train\n{SCENE_B},val\n")
    out = tmp_path / "s2.zarr"
    argv = ["remote-sensing", "ingest", str(patches), "--out", str(out), "--chip", "32", "--labels", str(patches)]
    assert main([*argv, "--splits", str(splits)]) == 0
    capsys.readouterr()
    assert main(["remote-sensing", "train", "--store", str(out), "--task", "multilabel", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "training the multilabel task" in err and "split(s) test hold no tiles (train 18, val 18, test 0)" in err


def test_the_contact_sheet_shows_true_colour_with_a_percentile_stretch(patches: Path, tmp_path: Path):
    from PIL import Image

    from domainfm.shared.tiles.summary import _display_channels, contact_sheet

    out = tmp_path / "s2.zarr"
    assert main(["remote-sensing", "ingest", str(patches), "--out", str(out), "--chip", "32"]) == 0
    store = TileStore(out)
    assert [store.spec.channels[c]["name"] for c in _display_channels(store)] == ["B04", "B03", "B02"]
    sheet = np.asarray(Image.open(contact_sheet(store, tmp_path / "sheet.png", n=4)).convert("L"), np.float32)
    # values 900-1200 stretched by their own 2-98 % (not by 0..max): mid-grey tiles, not black ones
    assert np.percentile(sheet[sheet < 250], 50) > 60


def test_pretraining_reads_every_chip_outside_test_and_names_the_split_when_none(patches: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text(f"scene,split\n{SCENE_A},val\n{SCENE_B},test\n")
    out = tmp_path / "s2.zarr"
    assert (
        main(["remote-sensing", "ingest", str(patches), "--out", str(out), "--chip", "32", "--splits", str(splits)])
        == 0
    )
    capsys.readouterr()
    run = ["remote-sensing", "pretrain", "--store", str(out), "--epochs", "1", "--batch_size", "4", "--device", "cpu"]
    assert main([*run, "--out", str(tmp_path / "simmim")]) == 0  # no train chips: the val scene is pretrained on
    assert json.loads((tmp_path / "simmim" / "history.json").read_text())["splits"] == ["val"]
    every = tmp_path / "all_test.csv"
    every.write_text(f"scene,split\n{SCENE_A},test\n{SCENE_B},test\n")
    alone = tmp_path / "test_only.zarr"
    assert (
        main(["remote-sensing", "ingest", str(patches), "--out", str(alone), "--chip", "32", "--splits", str(every)])
        == 0
    )
    capsys.readouterr()
    assert (
        main(["remote-sensing", "pretrain", "--store", str(alone), "--out", str(tmp_path / "none"), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "all 36 tiles are in test" in err and "--splits CSV (columns: scene,split)" in err and "batch_size" not in err
    )


def test_a_scene_missing_from_the_splits_csv_is_refused_before_writing(patches: Path, tmp_path: Path, capsys):
    splits = tmp_path / "splits.csv"
    splits.write_text(f"scene,split\n{SCENE_A},train\n")
    out = tmp_path / "s2.zarr"
    assert (
        main(["remote-sensing", "ingest", str(patches), "--out", str(out), "--splits", str(splits), "--chip", "32"])
        == 2
    )
    assert f"{SCENE_B!r} is not listed" in capsys.readouterr().err and not out.exists()


def test_contact_sheet_composites_follow_the_bands_a_store_holds():
    from domainfm.domains.remote_sensing.bands import BY_NAME
    from domainfm.domains.remote_sensing.data import display

    assert display(["B01", "B02", "B03", "B04", "B08"], "raster")["display_channels"] == ["B04", "B03", "B02"]
    assert display(["B01", "B03", "B04"], "modis")["display_channels"] == ["B01", "B04", "B03"]  # MODIS true colour
    assert display(BY_NAME, "modis")["display_channels"] == ["B07", "B02", "B01"]  # SatVision lacks B04: 7-2-1
    assert "display_channels" not in display(["b1", "b2"], "raster")  # unnamed bands: the first three
