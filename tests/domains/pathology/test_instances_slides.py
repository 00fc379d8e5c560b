"""``pathology predict`` of an instance segmenter on whole slides: objects merged across tile edges (issue 21).

The slide is a phantom with nuclei whose level-0 pixels are known exactly (:func:`write_cell_slide`,
lossless, nuclei kept 2 um apart). To test the tiling and merging independently of training quality,
the segmenter's network is replaced by an *oracle* that reads the nuclei off the pixels it is given (dark
pixels, their connected parts, perfect HV and type maps of those parts): it sees only the tile, as a
network does, so objects cut by a tile's edge are cut in its maps too. A run with a trained segmenter
is killed after one slide and resumed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from torch import nn

import domainfm.shared.predict as predict_package
from domainfm.cli import main
from domainfm.domains.pathology import instance_wsi
from domainfm.domains.pathology.instance_geojson import object_features
from domainfm.domains.pathology.instances import hv_targets, instances_from_maps
from domainfm.studies.pathology.phantom_cells import NUCLEUS_CLASSES, render_cells, write_cell_slide

TILE, OVERLAP, MPP = 64, 28, 0.5
STEP = TILE - OVERLAP
SIZE = (TILE + 6 * STEP + 20, TILE + 10 * STEP + 13)  # (height, width): strips past the tiler's grid
NAMES = sorted(NUCLEUS_CLASSES)  # the store's class order


class Oracle(nn.Module):
    """Raw RGB ``[B, 3, H, W]`` -> the maps a perfect segmenter would give for the nuclei it sees."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images.cpu().numpy():
            grey = image.mean(0)
            parts, n = ndimage.label(ndimage.binary_fill_holes(grey < 176))
            sizes = np.bincount(parts.ravel(), minlength=n + 1)
            parts[sizes[parts] < 4] = 0
            foreground = (parts > 0).astype(np.float32)
            hv = hv_targets(torch.from_numpy(parts)[None])[0].numpy()
            means = np.bincount(parts.ravel(), grey.ravel(), n + 1) / np.maximum(
                np.bincount(parts.ravel(), None, n + 1), 1
            )
            kind = np.where(means < 112, NAMES.index("lymphocyte"), np.where(means < 141, NAMES.index("stromal"), 0))
            types = np.where(parts > 0, kind[parts] + 1, 0)
            nc = np.eye(len(NAMES) + 1, dtype=np.float32)[types].transpose(2, 0, 1)
            out.append(np.concatenate([[1 - foreground, foreground], (hv + 1) / 2, nc]))
        return torch.from_numpy(np.stack(out).astype(np.float32))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A segmenter trained for one epoch on 64-px tiles at 0.5 mpp (its card, tiling and a real network)."""
    import tifffile

    from domainfm.domains.pathology.instance_train import train_instances

    root = tmp_path_factory.mktemp("segmenter")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    field = render_cells(5, 128, MPP)
    Image.fromarray(field.image).save(root / "images" / "f.png")
    tifffile.imwrite(root / "labels" / "f.tif", field.nuclei.astype(np.uint16))
    rows = [("image", "id", "class")] + [("f", i, NUCLEUS_CLASSES[c]) for i, c in enumerate(field.nucleus_class) if i]
    with open(root / "classes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    (root / "splits.csv").write_text("image,split\nf,train\n")
    store = root / "store.zarr"
    assert main(["pathology", "instances-tile", "--images", str(root / "images"), "--labels", str(root / "labels"),
                 "--classes", str(root / "classes.csv"), "--out", str(store), "--tile_size", str(TILE),
                 "--mpp", str(MPP), "--splits", str(root / "splits.csv"), "--workers", "1"]) == 0  # fmt: skip
    train_instances(store, root / "run", epochs=1, batch_size=4, width=8, device="cpu")
    return root / "run" / "instances.safetensors"


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("slides")
    return write_cell_slide(folder / "cells.tif", SIZE, MPP, seed=1, glands=1, gap=2.0, stain_variation=0.0, tile=64)


def _predict(checkpoint: Path, inputs: list[Path], out: Path, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    command = ["pathology", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs)]
    status = main([*command, "--out", str(out), "--device", "cpu", "--min_tissue", "0.05", "--json", *extra])
    printed = capsys.readouterr().out
    return status, json.loads(printed[printed.index("{") :]) if "{" in printed else {}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as handle:
        return {row["input"]: row for row in csv.DictReader(handle)}


def _pixels(feature: dict, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices of the level-0 pixels whose centres lie inside a feature's polygon."""
    ring = np.asarray(feature["geometry"]["coordinates"][0], np.float64)
    rows, cols = draw_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
    return np.ravel_multi_index((rows, cols), shape)


def _key(feature: dict) -> tuple:
    return feature["geometry"]["type"], json.dumps(feature["geometry"]["coordinates"])


def test_objects_across_tile_edges_are_found_once_and_equal_one_picture(
    segmenter, slide, tmp_path, capsys, monkeypatch
):
    original = predict_package.load_for_domain

    def with_oracle(*args, **kwargs):
        deployable = original(*args, **kwargs)
        deployable.network = Oracle()
        return deployable

    monkeypatch.setattr(predict_package, "load_for_domain", with_oracle)
    monkeypatch.setattr(instance_wsi, "REGION_TILES", 1)  # regions of one 64-px tile: many edges to cross
    out = tmp_path / "predicted"
    status, summary = _predict(segmenter, [slide.path], out, capsys, "--overlap", str(OVERLAP))
    assert status == 0 and summary["predicted"] == 1
    collection = json.loads((out / "geojson" / "cells.geojson").read_text())
    assert collection["domainfm"]["overlap_px"] == OVERLAP and collection["domainfm"]["slide_mpp"] == MPP
    features = collection["features"]
    assert all(f["geometry"]["type"] == "Polygon" for f in features)  # no object cut into pieces
    assert all(f["properties"]["objectType"] == "detection" for f in features)

    # every object once: no two polygons share a pixel, and every truth nucleus is matched by exactly one
    shape = SIZE
    cover = np.zeros(shape[0] * shape[1], np.int32)
    masks = [_pixels(f, shape) for f in features]
    for pixels in masks:
        cover[pixels] += 1
    assert cover.max() == 1
    truth = slide.field.nuclei
    owner = np.zeros(shape[0] * shape[1], np.int64)
    for k, pixels in enumerate(masks, start=1):
        owner[pixels] = k
    owner = owner.reshape(shape)
    starts = [np.append(np.arange(0, n - TILE + 1, STEP), n - TILE) for n in (shape[1], shape[0])]  # + flush
    edges_x = sorted({*starts[0][1:], *(starts[0][:-1] + TILE)})  # every tile edge inside the slide
    edges_y = sorted({*starts[1][1:], *(starts[1][:-1] + TILE)})
    crossing, ious, classes_right = 0, [], 0
    for i, box in enumerate(ndimage.find_objects(truth), start=1):
        mask = truth == i
        found = np.unique(owner[mask])
        found = found[found > 0]
        assert len(found) == 1, f"truth nucleus {i} is covered by objects {found.tolist()}"
        k = int(found[0])
        mine = owner == k
        ious.append((mask & mine).sum() / (mask | mine).sum())
        classes_right += (
            features[k - 1]["properties"]["classification"]["name"] == NUCLEUS_CLASSES[slide.field.nucleus_class[i]]
        )
        crossing += any(box[1].start < e < box[1].stop for e in edges_x) or any(
            box[0].start < e < box[0].stop for e in edges_y
        )
    assert len(features) == truth.max()  # nothing found twice, nothing missed
    assert crossing >= 100  # most nuclei straddle the edges of tiles (and lie in two or four tiles)
    assert min(ious) > 0.95 and np.mean(ious) > 0.98
    assert classes_right >= 0.9 * truth.max()

    # the merged slide equals the same region predicted as one picture (objects inside the slide: all)
    maps = Oracle()(torch.from_numpy(slide.field.image.transpose(2, 0, 1)).float()[None])[0].numpy()
    ids, pred_class, scores = instances_from_maps(maps, 6)
    whole = object_features(ids, pred_class, scores, NAMES)
    inside = [f for f, box in zip(whole, ndimage.find_objects(ids), strict=True) if box is not None]
    assert sorted(map(_key, features)) == sorted(map(_key, inside))
    by_key = {_key(f): f["properties"] for f in whole}
    assert all(f["properties"] == by_key[_key(f)] for f in features)  # same class, same score

    row = _rows(out)["cells.tif"]
    assert row["type"] == "slide_instances" and int(row["objects"]) == len(features)
    assert int(row["tiles"]) == len(starts[0]) * len(starts[1]) and int(row["overlap"]) == OVERLAP
    counts = {name: sum(f["properties"]["classification"]["name"] == name for f in features) for name in NAMES}
    assert all(int(row[f"objects_{name}"]) == counts[name] for name in NAMES)
    assert int(row["cut_objects"]) == 0
    area = shape[0] * shape[1] * MPP**2 / 1e6
    assert 0.8 * area <= float(row["tissue_mm2"]) <= area
    assert float(row["objects_per_mm2"]) == pytest.approx(len(features) / float(row["tissue_mm2"]), rel=1e-4)
    with Image.open(out / "overlays" / "cells.png") as overlay:
        assert overlay.format == "PNG" and overlay.info["Software"] == "domainfm predict"


def test_owners_fall_back_to_the_nearest_tissue_tile():
    assert [a.tolist() for a in instance_wsi.grid_axes(110, 100, 64, 36)] == [[0, 36, 46], [0, 36]]
    coords = np.array([[0, 0], [36, 0], [0, 36]])  # tile (1, 1) is not tissue
    owners = instance_wsi.TileOwners(np.array([0, 36]), np.array([0, 36]), 64, coords)
    points = np.array([[10.0, 10.0], [50.0, 20.0], [62.0, 58.0], [99.0, 99.0], [63.0, 40.0]])
    rows, cols = owners.owners(points)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0), (0, 1), (0, 1), (-1, -1), (0, 1)]
    # the central regions of a full grid: x < 64 - 28 / 2 = 50 belongs to column 0, x > 50 to column 1
    full = instance_wsi.TileOwners(
        np.array([0, 36]), np.array([0, 36]), 64, np.array([[0, 0], [36, 0], [0, 36], [36, 36]])
    )
    assert full.owners(np.array([[49.9, 10.0], [50.1, 10.0], [10.0, 50.1]]))[1].tolist() == [0, 1, 0]
    assert full.owners(np.array([[10.0, 50.1]]))[0].tolist() == [1]
    assert full.shared_edges(0, 0) == (False, False, True, True)


def test_a_killed_slide_run_resumes_with_the_rest(segmenter, slide, tmp_path, capsys, monkeypatch):
    second = write_cell_slide(tmp_path / "slides" / "d.tif", (160, 200), MPP, seed=2, tile=64)
    inputs = [slide.path, second.path]
    out = tmp_path / "predicted"
    original, calls = instance_wsi.predict_instance_slide, []

    def killed_after_one(*args, **kwargs):
        calls.append(args[1].key)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process is killed while predicting the second slide
        return original(*args, **kwargs)

    monkeypatch.setattr(instance_wsi, "predict_instance_slide", killed_after_one)
    status, _ = _predict(segmenter, inputs, out, capsys)
    assert status == 130 and calls == ["cells.tif", "d.tif"]
    first = (out / "geojson" / "cells.geojson").read_bytes()
    assert not (out / "geojson" / "d.geojson").exists()
    spy = []
    monkeypatch.setattr(
        instance_wsi, "predict_instance_slide", lambda *a, **k: spy.append(a[1].key) or original(*a, **k)
    )
    status, summary = _predict(segmenter, inputs, out, capsys)
    assert status == 0 and spy == ["d.tif"] and summary["skipped"] == 1  # only the slide not finished
    assert (out / "geojson" / "cells.geojson").read_bytes() == first
    rows = _rows(out)
    assert set(rows) == {"cells.tif", "d.tif"} and rows["d.tif"]["type"] == "slide_instances"
    for name in ("cells", "d"):  # the trained segmenter's objects: detections inside the slide, one row each
        collection = json.loads((out / "geojson" / f"{name}.geojson").read_text())
        assert len(collection["features"]) == int(rows[f"{name}.tif"]["objects"])
        for feature in collection["features"]:
            ring = np.asarray(feature["geometry"]["coordinates"][0])
            assert ring.min() >= 0 and ring[:, 0].max() <= SIZE[1] and ring[:, 1].max() <= SIZE[0]
    status, _ = _predict(segmenter, inputs, out, capsys, "--overlap", "20")
    assert status != 0 and (out / "geojson" / "cells.geojson").read_bytes() == first  # other options: refused
