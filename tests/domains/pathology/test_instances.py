"""Nuclei/gland instance segmentation (issue 21): cell phantom, instance tiles, HV targets, watershed, GeoJSON, CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from domainfm.cli import main
from domainfm.domains.pathology.instance_data import InstanceDataError, read_instance_labels, tile_instances
from domainfm.domains.pathology.instance_geojson import object_features, rasterise_features
from domainfm.domains.pathology.instances import (
    InstanceSegmenter,
    hover_loss,
    hv_targets,
    instances_from_maps,
    load_segmenter,
    type_targets,
)
from domainfm.shared.backbones import create_backbone
from domainfm.shared.peft.methods import apply_peft
from domainfm.shared.tiles import TileStore
from domainfm.studies.pathology.phantom_cells import NUCLEUS_CLASSES, render_cells

CLASSES = list(NUCLEUS_CLASSES)


def _ious(truth: np.ndarray, other: np.ndarray) -> np.ndarray:
    return np.array([((truth == i) & (other == i)).sum() / ((truth == i) | (other == i)).sum()
                     for i in range(1, truth.max() + 1)])  # fmt: skip


@pytest.fixture(scope="module")
def field():
    return render_cells(3, 160, 0.5)


def test_phantom_truth_is_exact_and_nuclei_differ_by_type(field):
    n = field.nuclei.max()
    assert len(field.nucleus_class) == n + 1 and field.nucleus_class[0] == -1
    assert set(field.nucleus_class[1:].tolist()) == {0, 1, 2}
    for i in range(1, n + 1):  # every id one connected object
        assert ndimage.label(field.nuclei == i)[1] == 1
    areas = np.bincount(field.nuclei.ravel())[1:]
    # objects cut by the field's edge are smaller; compare the median of each type
    median = {c: np.median(areas[field.nucleus_class[1:] == k]) for k, c in enumerate(CLASSES)}
    assert median["lymphocyte"] < median["epithelial"]
    grey = field.image.mean(2)
    assert grey[field.nuclei > 0].mean() < grey[(field.nuclei == 0) & (field.glands == 0)].mean() - 30
    epithelial = np.flatnonzero(field.nucleus_class == 0)
    assert (field.glands[np.isin(field.nuclei, epithelial)] > 0).all()  # epithelial nuclei line the glands
    assert (field.glands[np.isin(field.nuclei, np.flatnonzero(field.nucleus_class == 1))] == 0).all()


def test_tile_instances_clips_renumbers_and_keeps_source_ids():
    ids = np.zeros((6, 6), np.int64)
    ids[0:3, 0:2], ids[4:6, 3:6] = 7, 42
    local, klass, sources = tile_instances(ids[2:6, 1:5], {7: 1, 42: 0}, 4)
    assert local.max() == 2 and (local[0, 0] == 1) and sources[:3].tolist() == [0, 7, 42]
    assert klass.tolist() == [-1, 1, 0, -1, -1]
    assert np.array_equal(sources[local], ids[2:6, 1:5])  # every pixel of every clipped object kept
    with pytest.raises(KeyError):
        tile_instances(ids, {7: 1}, 4)


def _write_dataset(root: Path, n: int = 3, size: int = 96) -> tuple[Path, list]:
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    fields, rows = [], []
    for k in range(n):
        f = render_cells(k, size, 0.5)
        ids = f.nuclei.astype(np.int64) * 3 + 5 * (f.nuclei > 0)  # sparse, non-consecutive ids
        Image.fromarray(f.image).save(images / f"f{k}.png")
        tifffile.imwrite(labels / f"f{k}_label.tif", ids.astype(np.uint16))
        rows += [(f"f{k}", int(i * 3 + 5), CLASSES[c]) for i, c in enumerate(f.nucleus_class) if i]
        fields.append((ids, f))
    with open(root / "classes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "id", "class"), *rows])
    (root / "splits.csv").write_text("image,split\nf0,train\nf1,train\nf2,test\n")
    return root, fields


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    root, fields = _write_dataset(tmp_path_factory.mktemp("instances"))
    store = root / "store.zarr"
    assert main(["pathology", "instances-tile", "--images", str(root / "images"), "--labels", str(root / "labels"),
                 "--classes", str(root / "classes.csv"), "--out", str(store), "--tile_size", "48", "--overlap", "16",
                 "--mpp", "0.5", "--max_instances", "64", "--splits", str(root / "splits.csv")]) == 0  # fmt: skip
    return root, fields, TileStore(store)


def test_ingest_preserves_instance_ids_and_classes_across_tile_edges(dataset):
    _, fields, store = dataset
    assert store.spec.value_scaling["instance_classes"] == sorted(CLASSES)
    data = store.read(np.arange(len(store)), ("instances", "instance_class", "instance_source_id"))
    names = sorted(CLASSES)
    seen: dict[int, set] = {}
    for k in range(len(store)):
        ids, field = fields[int(data["source"][k])]
        x, y = int(data["x"][k]), int(data["y"][k])
        local, sources = data["instances"][k].astype(np.int64), data["instance_source_id"][k]
        crop = ids[y : y + 48, x : x + 48]
        assert np.array_equal(sources[local], crop)  # every pixel's object, clipped at the edge, not dropped
        n = local.max()
        assert set(np.unique(local[local > 0]).tolist()) == set(range(1, n + 1))  # unique ids 1..n per tile
        for i in range(1, n + 1):
            original = (int(sources[i]) - 5) // 3
            assert names[data["instance_class"][k][i]] == CLASSES[field.nucleus_class[original]]
        for s in sources[1 : n + 1]:
            seen.setdefault(int(data["source"][k]), set()).add(int(s))
    for source, (ids, _) in enumerate(fields):
        assert seen[source] == set(np.unique(ids[ids > 0]).tolist())  # no object lost between tiles
    first = [data["instance_source_id"][k][1:] for k in np.flatnonzero(data["source"] == 0)]
    counts = np.bincount(np.concatenate([ids[ids > 0] for ids in first]))

    assert counts.max() >= 2  # objects on tile edges appear (clipped) in every tile they reach
    assert set(store.index["split"][store.index["source"] == 2].tolist()) == {2}


def test_bad_label_images_and_class_tables_are_named(tmp_path: Path, capsys: pytest.CaptureFixture):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    with pytest.raises(InstanceDataError, match=r"rgb\.png: an RGB picture"):
        read_instance_labels(rgb)
    root, _ = _write_dataset(tmp_path / "d", n=1, size=64)
    (root / "classes.csv").write_text("image,id,class\nf0,8,lymphocyte\n")
    inputs = [
        "--images",
        str(root / "images"),
        "--labels",
        str(root / "labels"),
        "--classes",
        str(root / "classes.csv"),
    ]
    code = main(["pathology", "instances-tile", *inputs, "--out", str(tmp_path / "s"), "--tile_size", "32"])
    assert code == 1  # the engine isolates the failed picture and names it with the fix
    assert re.search(r"f0_label.tif: ids \[.*\] have no class in the class table; add rows", capsys.readouterr().out)


def test_hv_targets_point_away_from_each_centre():
    ids = torch.zeros(1, 8, 12, dtype=torch.long)
    ids[0, 1:6, 1:6], ids[0, 2:7, 6:11] = 1, 2  # two touching objects
    hv = hv_targets(ids)[0]
    assert hv[:, ids[0] == 0].abs().max() == 0
    for i in (1, 2):
        inside = ids[0] == i
        assert hv[0][inside].min() == -1 and hv[0][inside].max() == 1
    assert torch.equal(hv[0, 3, 1:6], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # x offsets of object 1
    assert torch.equal(hv[1, 2:7, 8], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))  # y offsets of object 2
    types = type_targets(ids, torch.tensor([[-1, 2, 0]]))
    assert set(types[ids == 1].tolist()) == {3} and set(types[ids == 2].tolist()) == {1}


def test_watershed_of_perfect_maps_separates_touching_nuclei(field):
    ids = torch.from_numpy(field.nuclei.astype(np.int64))[None]
    classes = torch.from_numpy(field.nucleus_class)[None].clamp(min=-1)
    maps = np.zeros((4 + len(CLASSES) + 1, *field.nuclei.shape), np.float32)
    maps[1] = field.nuclei > 0
    maps[0] = 1 - maps[1]
    maps[2:4] = hv_targets(ids)[0].numpy()
    maps[4:] = np.eye(len(CLASSES) + 1)[type_targets(ids, classes)[0].numpy()].transpose(2, 0, 1)
    pred, pred_class, scores = instances_from_maps(maps, min_size=4)
    deployed = maps.copy()
    deployed[2:4] = (maps[2:4] + 1) / 2  # the deployed network's HV scale
    assert np.array_equal(instances_from_maps(deployed, min_size=4)[0], pred)
    from domainfm.shared.tasks.instance_metrics import InstanceScores

    scores_ = InstanceScores(CLASSES)
    scores_.update(field.nuclei, pred, field.nucleus_class, pred_class)
    result = scores_.compute()
    touching = ndimage.label(field.nuclei > 0)[1] < field.nuclei.max()
    assert touching  # the field has touching nuclei, which only the HV maps tell apart
    assert result["pq"] > 0.95 and result["aji"] > 0.95 and abs(result["count_error"]) <= 2
    pure = [i for i in range(1, pred.max() + 1) if len(np.unique(field.nuclei[pred == i])) == 1]
    assert len(pure) > 0.9 * pred.max() and np.allclose(scores[pure], 1.0)  # one-hot types: score 1
    assert all(pred_class[i] == field.nucleus_class[field.nuclei[pred == i][0]] for i in pure)


def test_geojson_round_trip_returns_every_object(field):
    origin, downsample = (1000.0, 2000.0), 2.0
    for ids, classes, names in (
        (field.nuclei, field.nucleus_class, CLASSES),
        (field.glands, field.gland_class, ["gland"]),
    ):
        features = object_features(ids, classes, np.linspace(0, 1, len(classes)), names, origin, downsample)
        assert len(features) == ids.max()
        back, back_class = rasterise_features(json.loads(json.dumps(features)), ids.shape, names, origin, downsample)
        assert _ious(ids, back).min() > 0.95
        assert np.array_equal(back_class, classes)
        props = features[-1]["properties"]
        assert props["classification"]["name"] == names[classes[-1]] and props["measurements"]["score"] == 1.0
    one = np.zeros((4, 4), np.int32)
    one[2, 1] = 1  # one pixel: level-0 square [1002, 1004) x [2004, 2006)
    ring = np.array(object_features(one, [-1, 0], [0, 0.5], ["n"], origin, downsample)[0]["geometry"]["coordinates"][0])
    assert np.allclose(ring.mean(0)[:2], [1003.0, 2005.0], atol=0.3)


def test_head_on_every_backbone_family_keeps_the_tile_size():
    ids = torch.zeros(2, 32, 32, dtype=torch.long)
    ids[:, 4:12, 4:12] = 1
    classes = torch.tensor([[-1, 0], [-1, 1]])
    for name in ("test_vit", "test_swin", "test_resnet"):
        model = InstanceSegmenter(apply_peft(create_backbone(name, img_size=32), "linear"), 2, width=8)
        output = model(torch.randn(2, 3, 32, 32))
        assert output.shape == (2, 4 + 3, 32, 32)
        hover_loss(output, ids, classes).backward()
        assert all(p.grad is None for p in model.backbone.parameters())  # frozen encoder
        assert model.head.branches[0][1].weight.grad.abs().sum() > 0


def test_cli_trains_scores_and_predicts_geojson(dataset, tmp_path: Path):
    root, _, store = dataset
    run = tmp_path / "run"
    assert main(["pathology", "instances-train", "--store", str(store.path), "--out", str(run), "--epochs", "4",
                 "--batch_size", "8", "--width", "16", "--lr", "3e-3", "--device", "cpu", "--json"]) == 0  # fmt: skip
    trained = json.loads((run / "train.json").read_text())
    assert trained["last_epoch_loss"] < 0.8 * trained["first_epoch_loss"]
    _, meta = load_segmenter(run / "instances.safetensors")
    assert meta["class_names"] == sorted(CLASSES) and meta["peft"] == "linear"
    assert main(["pathology", "instances-eval", "--checkpoint", str(run / "instances.safetensors"),
                 "--store", str(store.path), "--device", "cpu", "--json"]) == 0  # fmt: skip
    out = tmp_path / "pred"
    picture = root / "images" / "f2.png"
    assert main(["pathology", "predict", "--checkpoint", str(run / "instances.safetensors"),
                 "--input", str(picture), "--out", str(out), "--device", "cpu", "--json"]) == 0  # fmt: skip
    ids = tifffile.imread(out / "instances" / "f2.tif")
    collection = json.loads((out / "geojson" / "f2.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == ids.max() > 0
    back, _ = rasterise_features(collection["features"], ids.shape, sorted(CLASSES))
    assert _ious(ids, back).mean() > 0.9
    assert Image.open(out / "overlays" / "f2.png").size == (96, 96)
    row = next(csv.DictReader((out / "predictions.csv").open()))
    assert row["input"] == "f2.png" and int(row["objects"]) == ids.max()
    assert sum(int(row[f"objects_{name}"]) for name in sorted(CLASSES)) == ids.max()
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"not a slide")  # whole slides are predicted (test_instances_slides.py); a broken one is named
    assert main(["pathology", "predict", "--checkpoint", str(run / "instances.safetensors"),
                 "--input", str(slide), "--out", str(tmp_path / "slide_pred"), "--device", "cpu"]) == 2  # fmt: skip


def test_geojson_polygons_on_a_slide_become_the_same_instance_tiles(field, tmp_path: Path):
    from domainfm.domains.pathology.instance_geojson import write_feature_collection

    picture = tmp_path / "field.png"
    Image.fromarray(field.image).save(picture)
    features = object_features(field.nuclei, field.nucleus_class, np.ones(200), CLASSES)
    write_feature_collection(tmp_path / "field.geojson", features)
    store = tmp_path / "slides.zarr"
    assert main(["pathology", "instances-tile", "--images", str(picture), "--polygons", str(tmp_path / "field.geojson"),
                 "--out", str(store), "--tile_size", "48", "--overlap", "8", "--mpp", "0.5", "--assume_mpp", "0.5",
                 "--min_tissue", "0"]) == 0  # fmt: skip
    tiles = TileStore(store)
    names = tiles.spec.value_scaling["instance_classes"]
    assert names == sorted(CLASSES) and len(tiles) == 9  # the slide grid: origins 0, 40, 80 (tiles that fit)
    data = tiles.read(np.arange(len(tiles)), ("instances", "instance_class", "instance_source_id"))
    for k in range(len(tiles)):
        x, y = int(data["x"][k]), int(data["y"][k])
        local, sources = data["instances"][k].astype(np.int64), data["instance_source_id"][k]
        # the n-th polygon is object n of the truth: the tile holds the truth's crop, objects clipped at its edges
        assert np.array_equal(sources[local], field.nuclei[y : y + 48, x : x + 48])
        for i in range(1, local.max() + 1):
            assert names[data["instance_class"][k][i]] == CLASSES[field.nucleus_class[sources[i]]]


def test_any_decoder_width_builds():
    for width in (5, 12, 32):  # stems of 8, 8 and 12 channels: group norms of 8, 8 and 4 groups
        model = InstanceSegmenter(create_backbone("test_vit", img_size=32), 2, width=width)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7, 32, 32)
        norms = [m for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert all(m.num_channels % m.num_groups == 0 for m in norms)
        assert {m.num_groups for m in norms if m.num_channels == 12} <= {4}
