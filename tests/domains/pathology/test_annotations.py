"""Tile labels from annotations: GeoJSON/QuPath polygons (by area), label masks (majority), CSV points, folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.pathology.annotations import (
    LabelError,
    collect_labels,
    csv_labels,
    mask_labels,
    polygon_labels,
    read_label_csv,
    read_polygons,
)
from domainfm.shared.tiles import TileStore

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]


def _feature(ring: list, name: str, qupath: bool = True) -> dict:
    properties = {"classification": {"name": name, "color": [255, 0, 0]}} if qupath else {"name": name}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def _shift(ring: list, dx: float, dy: float = 0) -> list:
    return [[x + dx, y + dy] for x, y in ring]


def test_a_tile_takes_the_class_covering_enough_of_its_area(tmp_path: Path):
    path = tmp_path / "a.geojson"
    # Tumor covers x 0..100, Stroma x 100..160 (both y 0..100); an unclassified outline labels nothing
    stroma = [[100, 0], [160, 0], [160, 100], [100, 100], [100, 0]]
    outline = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_shift(SQUARE, 0)]}}
    features = [_feature(SQUARE, "Tumor"), _feature(stroma, "Stroma", qupath=False), outline]
    path.write_text(json.dumps(features))  # QuPath's export: a plain list of features
    polygons = read_polygons(path)
    assert sorted(n for n, _ in polygons) == ["Stroma", "Tumor"]
    names = ("Stroma", "Tumor")
    coords = np.array([[0, 0], [50, 0], [80, 0], [100, 0], [200, 0]])  # 50x50 tiles
    # [0,50): all tumor; [50,100): tumor; [80,130): 20/50 tumor, 30/50 stroma; [100,150): stroma; [200,..): none
    assert polygon_labels(polygons, names, coords, 50, 0.5).tolist() == [1, 1, 0, 0, -1]
    assert polygon_labels(polygons, names, coords, 50, 0.7).tolist() == [1, 1, -1, 0, -1]


def test_overlapping_polygons_of_one_class_count_once(tmp_path: Path):
    path = tmp_path / "o.geojson"
    left = [[0, 0], [30, 0], [30, 100], [0, 100], [0, 0]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(left, "T"), _feature(left, "T")]}))
    # the same 30 % strip twice is still 30 % of a 100 px tile: below 0.5
    assert polygon_labels(read_polygons(path), ("T",), np.array([[0, 0]]), 100, 0.5).tolist() == [-1]


def test_a_mask_labels_tiles_by_majority_at_its_downsample(tmp_path: Path):
    mask = np.zeros((25, 50), np.uint8)  # a 200 x 100 slide at downsample 4
    mask[:, 25:] = 2
    mask[:, 40:] = 255  # unlabelled
    Image.fromarray(mask).save(tmp_path / "m.png")
    names = ("0", "2")
    coords = np.array([[0, 0], [80, 0], [84, 0], [160, 0]])  # 40 px tiles: 10 mask px
    labels = mask_labels(tmp_path / "m.png", names, coords, 40, 4.0, (200, 100))
    assert labels.tolist() == [0, 0, 1, -1]  # at 80: 5 px of 0, 5 of 2 (a tie: the lower id); at 84: 4 and 6
    with pytest.raises(LabelError, match=r"m\.png: the mask is 50x25 px, .* 200x100; pass --label_downsample"):
        mask_labels(tmp_path / "m.png", names, coords, 40, 1.0, (200, 100))
    Image.fromarray(np.where(mask == 2, 255, mask).astype(np.uint8)).save(tmp_path / "binary.png")
    with pytest.raises(LabelError, match=r"binary\.png: a 0/255 mask .* save class ids \(0 and 1\)"):
        mask_labels(tmp_path / "binary.png", names, coords, 40, 4.0, (200, 100))


def test_csv_points_label_the_tiles_they_fall_in(tmp_path: Path):
    path = tmp_path / "points.csv"
    path.write_text("Slide,X,Y,Label\na.svs,0,0,tumor\na.svs,60,10,stroma\na.svs,70,20,stroma\nb.svs,0,0,fat\n")
    table = read_label_csv(path)
    names = ("fat", "stroma", "tumor")
    coords = np.array([[0, 0], [50, 0], [100, 0]])
    # a corner point belongs to the tile it starts, not to the tile whose edge ends there
    assert csv_labels(table, Path("/data/a.svs"), names, coords, 50).tolist() == [2, 1, -1]
    assert csv_labels(table, Path("c.svs"), names, coords, 50).tolist() == [-1, -1, -1]
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,klass\na,b\n")
    with pytest.raises(LabelError, match=r"bad\.csv: a labels CSV needs a key column .* label column"):
        read_label_csv(bad)


def test_one_annotation_file_for_several_slides_is_refused(tmp_path: Path):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([_feature(SQUARE, "T")]))
    with pytest.raises(LabelError, match=r"a\.geojson: one \.geojson file labels one slide; .*folder"):
        collect_labels([tmp_path / "a.svs", tmp_path / "b.svs"], path)
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "a.geojson").write_text(json.dumps([_feature(SQUARE, "T")]))
    with pytest.raises(LabelError, match=r"ann: no label file for b\.svs"):
        collect_labels([tmp_path / "a.svs", tmp_path / "b.svs"], folder)


def test_tiling_a_slide_with_geojson_labels_the_tiles_inside(tmp_path: Path, capsys: pytest.CaptureFixture):
    from domainfm.studies.pathology.phantom import write_phantom_slide

    slide = write_phantom_slide(tmp_path / "s.svs", 1024, seed=2, mpp=0.5).path
    ring = [[0, 0], [512, 0], [512, 1024], [0, 1024], [0, 0]]  # left half of the slide, level-0 px
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(ring, "A")]}))
    out = tmp_path / "t.zarr"
    assert main(["pathology", "tile", str(slide), "--out", str(out), "--tile_size", "64", "--min_tissue", "0.1",
                 "--labels", str(tmp_path / "s.geojson")]) == 0  # fmt: skip
    assert "classes: A" in capsys.readouterr().out
    store = TileStore(out)
    x, label = store.index["x"], store.index["label"]
    assert store.spec.label_names == ["A"] and len(x) > 10
    assert ((label == 0) == (x + 64 <= 512)).all()  # tiles wholly left of x=512 are A, the others unlabelled
    assert store.spec.value_scaling["labels"]["overlap"] == 0.5
    assert (out / "qc" / "s.svs.png").is_file()  # slides keep their QC picture


def test_a_tile_classifier_trains_on_annotation_labels(tmp_path: Path, capsys: pytest.CaptureFixture):
    from domainfm.studies.pathology.phantom import write_phantom_slide

    slides, ring = [], [[0, 0], [384, 0], [384, 768], [0, 768], [0, 0]]
    (tmp_path / "ann").mkdir()
    for i in range(2):
        slides.append(str(write_phantom_slide(tmp_path / f"s{i}.svs", 768, seed=i, mpp=0.5).path))
        right = _shift(ring, 384)
        features = [_feature(ring, "left"), _feature(right, "right")]
        (tmp_path / "ann" / f"s{i}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (tmp_path / "splits.csv").write_text("slide,split\ns0,train\ns1,test\n")
    out = tmp_path / "t.zarr"
    assert main(["pathology", "tile", *slides, "--out", str(out), "--tile_size", "64", "--min_tissue", "0.1",
                 "--labels", str(tmp_path / "ann"), "--splits", str(tmp_path / "splits.csv")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["pathology", "train", "--store", str(out), "--out", str(tmp_path / "clf"), "--epochs", "1",
                 "--batch_size", "16", "--device", "cpu", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    store = TileStore(out)
    test_labelled = int(((store.index["split"] == 2) & (store.index["label"] >= 0)).sum())
    assert result["test_tiles"] == test_labelled > 0 and result["train_tiles"] > 0
    from domainfm.domains.pathology.heads import load_tile_classifier

    assert load_tile_classifier(Path(result["classifier"]))[1]["label_names"] == ["left", "right"]


def test_an_image_label_csv_labels_every_tile_of_the_image(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("Image,Class\ntumor/p1.png,tumor\np2.png,normal\n")  # by folder/name or by name
    table = read_label_csv(path)
    names = ("normal", "tumor")
    coords = np.array([[0, 0], [64, 0]])
    assert csv_labels(table, Path("/d/tumor/p1.png"), names, coords, 64).tolist() == [1, 1]
    assert csv_labels(table, Path("/d/x/p2.png"), names, coords, 64).tolist() == [0, 0]
    assert csv_labels(table, Path("/d/normal/p1.png"), names, coords, 64).tolist() == [-1, -1]  # not this p1
