"""Real instance labels shipped by a registry package, offline: StarDist's nuclei image and its instance mask.

No package on the registry ships instance-labelled H&E (looked for: scikit-image's data, histolab and
tiatoolbox, which download their samples at run time, cellpose, hover-net, cellvit). StarDist's wheel
(``stardist/data/images``) holds ``img2d.tif``, a 512 x 512 fluorescence micrograph of nuclei (a Data Science
Bowl 2018 image), with ``mask2d.tif``, its hand-drawn instance mask (125 nuclei, ids 1..183 with gaps), and
``histo.jpg``, a real H&E picture without labels. Here the real mask's ids go through ingest and across tile
edges unchanged, its real nucleus outlines survive the GeoJSON round trip, and the watershed separates its
touching nuclei from exact maps. StarDist is read as files only (never imported).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from domainfm.cli import main
from domainfm.domains.pathology.instance_geojson import object_features, rasterise_features
from domainfm.domains.pathology.instances import hv_targets, instances_from_maps
from domainfm.shared.tasks.instance_metrics import InstanceScores
from domainfm.shared.tiles import TileStore

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("stardist")  # locates the wheel without importing it
    folder = Path(spec.submodule_search_locations[0]) / "data" / "images"
    image, mask = tifffile.imread(folder / "img2d.tif"), tifffile.imread(folder / "mask2d.tif")
    low, high = np.percentile(image, [1, 99.8])
    grey = np.clip((image - low) / (high - low) * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, 2), mask.astype(np.int64)


def test_real_instance_ids_survive_ingest_and_tile_edges(nuclei, tmp_path: Path):
    image, mask = nuclei
    assert len(np.unique(mask)) - 1 == 125 and mask.max() == 183
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "dsb.png")
    Image.fromarray(mask.astype(np.uint16)).save(tmp_path / "labels" / "dsb.png")  # 16-bit PNG label image
    store = tmp_path / "store.zarr"
    inputs = ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    assert (
        main(["pathology", "instances-tile", *inputs, "--out", str(store), "--tile_size", "96", "--overlap", "16"]) == 0
    )
    tiles = TileStore(store)
    data = tiles.read(np.arange(len(tiles)), ("instances", "instance_source_id"))
    found = set()
    for k in range(len(tiles)):
        x, y = int(data["x"][k]), int(data["y"][k])
        sources = data["instance_source_id"][k]
        assert np.array_equal(sources[data["instances"][k].astype(np.int64)], mask[y : y + 96, x : x + 96])
        found |= set(sources[sources > 0].tolist())
    assert found == set(np.unique(mask[mask > 0]).tolist())


def test_real_outlines_round_trip_and_touching_nuclei_separate(nuclei):
    _, mask = nuclei
    classes = np.zeros(mask.max() + 1, np.int64)
    features = object_features(mask, classes, np.ones(len(classes)), ["nucleus"], (512.0, 0.0), 0.5)
    back, _ = rasterise_features(features, mask.shape, ["nucleus"], (512.0, 0.0), 0.5)
    ids = np.unique(mask[mask > 0])
    assert len(features) == len(ids)
    ious = [((mask == i) & (back == k)).sum() / ((mask == i) | (back == k)).sum() for k, i in enumerate(ids, 1)]
    assert min(ious) > 0.95
    assert ndimage.label(mask > 0)[1] < len(ids)  # some real nuclei touch
    maps = np.zeros((6, *mask.shape), np.float32)
    maps[1], maps[0] = mask > 0, mask == 0
    maps[2:4] = hv_targets(torch.from_numpy(mask)[None])[0].numpy()
    maps[5] = mask > 0
    pred, _, _ = instances_from_maps(maps, min_size=6)
    scores = InstanceScores()
    scores.update(mask, pred)
    result = scores.compute()
    assert result["pq"] > 0.98 and result["aji"] > 0.98  # 125 of 125 found, one sliver split off
