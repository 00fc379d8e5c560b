"""Real BigEarthNet-S2 patches (the six examples `bigearthnet-common` ships, read offline): folder ingest with
the label JSON, all 12 bands on the 10 m grid, one split per Sentinel-2 datatake, then a tiny multi-label
model trained and scored on the test scene."""

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore

pytestmark = pytest.mark.realdata
SCENES = {  # datatake -> patches: two patches of 2017-06-17 come from one acquisition
    "S2A_MSIL2A_20170613T101031": ["S2A_MSIL2A_20170613T101031_87_48"],
    "S2A_MSIL2A_20170617T113321": ["S2A_MSIL2A_20170617T113321_36_85", "S2A_MSIL2A_20170617T113321_4_55"],
    "S2A_MSIL2A_20171221T112501": ["S2A_MSIL2A_20171221T112501_56_35"],
    "S2B_MSIL2A_20170924T93020": ["S2B_MSIL2A_20170924T93020_69_24"],
    "S2B_MSIL2A_20180204T94161": ["S2B_MSIL2A_20180204T94161_57_38"],
}


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's example archive, unpacked (the package itself is not imported: only its data is used)."""
    spec = importlib.util.find_spec("bigearthnet_common")
    assert spec is not None and spec.submodule_search_locations, "install the dev extra: bigearthnet-common"
    archive = Path(next(iter(spec.submodule_search_locations))) / "BigEarthNet-S2-Example.tar.bz2"
    folder = tmp_path_factory.mktemp("bigearthnet")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "BigEarthNet-S2-Example"


def test_bigearthnet_patches_ingest_split_per_scene_and_train_a_multilabel_model(patches: Path, tmp_path: Path, capsys):
    assert sorted(p.name for p in patches.iterdir()) == sorted(p for group in SCENES.values() for p in group)
    splits = tmp_path / "splits.csv"  # one datatake held out for test, one for val, named by scene
    rows = {"S2A_MSIL2A_20171221T112501": "test", "S2B_MSIL2A_20180204T94161": "val"}
    splits.write_text("scene,split\n" + "".join(f"{s},{rows.get(s, 'train')}\n" for s in SCENES))
    store_path = tmp_path / "s2.zarr"
    assert main(["remote-sensing", "ingest", str(patches), "--out", str(store_path), "--chip", "60"]) == 2
    assert "sizes that fit 120 x 120: 32, 64, 96" in capsys.readouterr().err  # the chip the old docs gave
    argv = ["remote-sensing", "ingest", str(patches), "--out", str(store_path), "--chip", "64"]
    assert main([*argv, "--labels", str(patches), "--splits", str(splits)]) == 0
    store = TileStore(store_path)

    # 12 bands at 10, 20 and 60 m, all on the 10 m grid of a 120 x 120 patch: one 64-px chip per patch
    names = [c["name"] for c in store.spec.channels]
    assert names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B11", "B12", "B8A"]
    assert store.spec.value_scaling["resolution"] == 10.0 and len(store) == 6
    chips = np.asarray(store.tiles[:])
    assert (chips[:, names.index("B04")] > 0).all() and np.isfinite(chips).all()  # L2A reflectance, no nodata

    # the labels JSON: each chip carries its patch's CORINE classes
    meta = {json_path.name: json.loads(json_path.read_text()) for json_path in patches.rglob("*_labels_metadata.json")}
    label_names = store.spec.label_names
    assert label_names == sorted({label for record in meta.values() for label in record["labels"]})
    labels = np.asarray(store.companion("labels")[:])
    for row, source in enumerate(store.sources):
        patch = Path(source["path"]).parent.name
        expected = meta[f"{patch}_labels_metadata.json"]["labels"]
        assert [label_names[i] for i in np.flatnonzero(labels[store.index["source"] == row][0])] == sorted(expected)

    # one split per datatake; both patches of 2017-06-17 in train together
    groups = [source["meta"]["group"] for source in store.sources]
    assert groups == [scene for scene, group in SCENES.items() for _ in group]
    split_of = dict(zip(groups, store.index["split"][np.argsort(store.index["source"])].tolist(), strict=False))
    assert split_of == {scene: SPLITS[rows.get(scene, "train")] for scene in SCENES}

    capsys.readouterr()
    train = ["remote-sensing", "train", "--store", str(store_path), "--task", "multilabel", "--epochs", "2"]
    assert main([*train, "--batch_size", "4", "--device", "cpu", "--out", str(tmp_path / "model"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["labelled_chips"] == 4 and result["test_chips"] == 1  # four train patches, one test datatake
    assert (tmp_path / "model" / "multilabel.safetensors").is_file()
