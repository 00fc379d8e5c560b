"""``pathology mil`` saves a deployable ABMIL slide classifier; ``pathology predict`` runs it on raw slides.

Phantom slides of two sizes are tiled, embedded with a seeded random ``test_vit`` and given to ``pathology
mil``; ``predict`` on the raw test slides must give ``mil``'s own test probabilities (its
``test_predictions.csv``) and the attention the ABMIL head gives on the stored embeddings, within 1e-5,
in the CSV row (top-attended tiles), the QuPath GeoJSON (read with shapely) and the pyramidal map (read
with tifffile); a run killed after one slide is resumed.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from shapely.geometry import box, shape

from domainfm.cli import main
from domainfm.domains.pathology import predict_mil
from domainfm.domains.pathology.embed import read_embeddings
from domainfm.domains.pathology.slide_model import (
    AttentionPool,
    load_slide_classifier,
)
from domainfm.shared.deploy import load_deployable

MPP, TILE_PX, SLIDE_MPP = 2.0, 32, 0.25
SIDE = TILE_PX * MPP / SLIDE_MPP  # a tile's footprint in level-0 pixels
SIZES = {"s0": 1024, "s1": 1024, "s2": 1024, "s3": 1280}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """phantoms -> tile -> embed (random test_vit) -> mil; the folder holding all of it."""
    root = tmp_path_factory.mktemp("mil")
    for seed, (name, size) in enumerate(SIZES.items()):
        command = ["pathology", "phantom", "--out", str(root / f"{name}.svs"), "--size", str(size)]
        assert main([*command, "--seed", str(seed + 3)]) == 0
    (root / "splits.csv").write_text("slide,split\ns0,train\ns1,train\ns2,test\ns3,test\n")
    slides = [str(root / f"{name}.svs") for name in SIZES]
    assert main(["pathology", "tile", *slides, "--out", str(root / "tiles.zarr"), "--mpp", str(MPP), "--tile_size",
                 str(TILE_PX), "--splits", str(root / "splits.csv"), "--workers", "1"]) == 0  # fmt: skip
    assert main(["pathology", "embed", "--store", str(root / "tiles.zarr"), "--out", str(root / "emb.zarr"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["pathology", "mil", "--embeddings", str(root / "emb.zarr"), "--out", str(root / "mil"),
                 "--epochs", "3", "--json"]) == 0  # fmt: skip
    return root


def _predict(checkpoint: Path, inputs: list[Path], out: Path, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    command = ["pathology", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs)]
    status = main([*command, "--out", str(out), "--device", "cpu", "--json", *extra])
    printed = capsys.readouterr().out
    return status, json.loads(printed[printed.index("{") :]) if "{" in printed else {}


def _csv(path: Path, key: str) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row[key]: row for row in csv.DictReader(handle)}


def _stored_bag(root: Path, slide: str) -> tuple[np.ndarray, torch.Tensor]:
    """Level-0 corners and embeddings of one slide's tiles, as ``pathology mil`` bags them."""
    embeddings = read_embeddings(root / "emb.zarr")
    row = [Path(s["path"]).name for s in embeddings.slides].index(slide)
    keep = (embeddings.slide == row) & np.isclose(embeddings.mpp, MPP)
    return embeddings.coords[keep], torch.from_numpy(embeddings.features[keep])


def test_mil_predictions_on_raw_slides_equal_mil_evaluation(trained: Path, tmp_path: Path, capsys):
    checkpoint = trained / "mil" / "slide_classifier.safetensors"
    deployable = load_deployable(checkpoint)
    assert deployable.card.kind == "pathology.slide_classifier" and deployable.card.transform["size"] == [32, 32]
    names = deployable.card.class_names
    model, meta = load_slide_classifier(checkpoint)
    assert meta["mpps"] == [MPP] and meta["encoder"]["name"] == "test_vit"
    evaluation = _csv(trained / "mil" / "test_predictions.csv", "slide")
    slides = [trained / "s2.svs", trained / "s3.svs"]
    status, summary = _predict(checkpoint, slides, tmp_path / "out", capsys)
    assert status == 0 and summary["predicted"] == 2 and not summary["failed"]
    rows = _csv(tmp_path / "out" / "predictions.csv", "input")
    for slide in slides:
        row, expected = rows[slide.name], evaluation[slide.name]
        # the slide's probabilities: what `pathology mil` scored on the stored embeddings of this slide
        measured = np.array([float(row[f"P({n})"]) for n in names])
        np.testing.assert_allclose(measured, [float(expected[f"P({n})"]) for n in names], atol=1e-5)
        assert row["predicted"] == expected["predicted"]
        # attention: the head on the stored bag (mil's evaluation and heat-map path)
        corners, bag = _stored_bag(trained, slide.name)
        with torch.no_grad():
            logits, attention = model.head(bag)
            tile_p = torch.softmax(model.head.classifier(model.head.project(bag)), 1).numpy()
        np.testing.assert_allclose(measured, torch.softmax(logits, 0).numpy(), atol=1e-5)
        attention = attention.numpy()
        order = {tuple(c): i for i, c in enumerate(corners.tolist())}
        top = np.argsort(-attention, kind="stable")[:5]
        for k, i in enumerate(top, start=1):
            assert (int(row[f"top{k}_x"]), int(row[f"top{k}_y"])) == tuple(corners[i])
            assert float(row[f"top{k}_attention"]) == pytest.approx(attention[i], abs=1e-5)
        assert int(row["tiles"]) == len(corners) and float(row["tile_side_level0"]) == SIDE
        # GeoJSON: one square per stored tile, attention and the slide model's per-tile P(CLASS)
        collection = json.loads((tmp_path / "out" / "geojson" / f"{slide.stem}.geojson").read_text())
        features = collection["features"]
        found = [shape(f["geometry"]).bounds[:2] for f in features]
        assert sorted(found) == sorted(map(tuple, corners.astype(float).tolist()))
        for feature, (x, y) in zip(features, found, strict=True):
            assert shape(feature["geometry"]).equals(box(x, y, x + SIDE, y + SIDE))
            i = order[(int(x), int(y))]
            values = feature["properties"]["measurements"]
            assert values["attention"] == pytest.approx(attention[i], abs=1e-5)
            np.testing.assert_allclose([values[f"P({n})"] for n in names], tile_p[i], atol=1e-5)
            assert feature["properties"]["classification"]["name"] == names[int(tile_p[i].argmax())]
        assert sum(f["properties"]["measurements"]["attention"] for f in features) == pytest.approx(1, abs=1e-5)
        # the pyramidal map: one pixel per grid cell, attention, P(CLASS) and class channels
        with tifffile.TiffFile(tmp_path / "out" / "maps" / f"{slide.stem}.tif") as tif:
            levels = [level.asarray() for level in tif.series[0].levels]
            numerator, denominator = tif.pages[0].tags["XResolution"].value
        assert numerator / denominator == pytest.approx(1e4 / (TILE_PX * MPP))
        grid = int((SIZES[slide.stem] - SIDE) // SIDE + 1)
        assert levels[0].shape == (len(names) + 2, grid, grid) and levels[0].dtype == np.float32
        cols, rows_ = (corners / SIDE).round().astype(int).T
        np.testing.assert_allclose(levels[0][0, rows_, cols], attention, atol=1e-6)
        np.testing.assert_allclose(levels[0][1:-1, rows_, cols].T, tile_p, atol=1e-6)
        assert np.count_nonzero(levels[0][-1]) == len(corners)
        with Image.open(tmp_path / "out" / "overlays" / f"{slide.stem}.png") as overlay:
            assert overlay.format == "PNG" and overlay.size[0] > 200


def test_streamed_pooling_equals_the_whole_bag():
    from domainfm.domains.pathology.mil import GatedABMIL

    torch.manual_seed(0)
    head = GatedABMIL(16, 3).eval()
    bag = torch.randn(50, 16) * 4
    with torch.no_grad():
        logits, attention = head(bag)
        pool = AttentionPool(head, len(bag))
        for part in torch.split(bag, 7):  # scores rise and fall across parts: the running maximum rescales
            h = head.project(part)
            pool.add(h, head.attention_scores(h))
    np.testing.assert_allclose(pool.attention(), attention.numpy(), atol=1e-6)
    np.testing.assert_allclose(pool.logits(), logits.numpy(), atol=1e-5)


def test_killed_mil_predict_resumes_with_the_rest(trained: Path, tmp_path: Path, capsys, monkeypatch):
    checkpoint = trained / "mil" / "slide_classifier.safetensors"
    slides = [trained / "s2.svs", trained / "s3.svs"]
    out = tmp_path / "predicted"
    original, calls = predict_mil.predict_mil_slide, []

    def killed_after_one(*args, **kwargs):
        calls.append(args[1].key)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process is killed while predicting the second slide
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_mil, "predict_mil_slide", killed_after_one)
    status, _ = _predict(checkpoint, slides, out, capsys)
    assert status == 130 and calls == ["s2.svs", "s3.svs"]
    first = (out / "geojson" / "s2.geojson").read_bytes()
    assert not (out / "geojson" / "s3.geojson").exists() and not (out / "maps" / "s3.tif").exists()
    spy = []
    monkeypatch.setattr(predict_mil, "predict_mil_slide", lambda *a, **k: spy.append(a[1].key) or original(*a, **k))
    status, summary = _predict(checkpoint, slides, out, capsys)
    assert status == 0 and spy == ["s3.svs"] and summary["skipped"] == 1
    assert (out / "geojson" / "s2.geojson").read_bytes() == first
    assert set(_csv(out / "predictions.csv", "input")) == {"s2.svs", "s3.svs"}


def test_pictures_and_tile_options_are_refused(trained: Path, tmp_path: Path, capsys):
    checkpoint = trained / "mil" / "slide_classifier.safetensors"
    picture = tmp_path / "tile.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(picture)
    status, summary = _predict(checkpoint, [picture], tmp_path / "pictures", capsys)
    assert status == 2 and "predicts whole slides" in summary["failed"]["tile.png"]
    command = ["pathology", "predict", "--checkpoint", str(checkpoint), "--input", str(trained / "s2.svs")]
    assert main([*command, "--out", str(tmp_path / "explained"), "--explain"]) == 2
    assert "attention heat-map" in capsys.readouterr().err and not (tmp_path / "explained").exists()


def test_the_saved_encoder_is_the_one_that_made_the_bags(trained: Path, tmp_path: Path):
    from domainfm.domains.pathology.slide_model import slide_classifier_from_mil
    from domainfm.shared.errors import DomainfmError

    embeddings = read_embeddings(trained / "emb.zarr")
    model, meta = load_slide_classifier(trained / "mil" / "slide_classifier.safetensors")
    embeddings.attrs = {**embeddings.attrs, "encoder_meta": {**embeddings.attrs["encoder_meta"], "random_init_seed": 1}}
    with pytest.raises(DomainfmError, match="no longer gives the stored embeddings"):
        slide_classifier_from_mil(model.head, embeddings, MPP, meta["label_names"], tmp_path)
    assert not (tmp_path / "slide_classifier.safetensors").exists()


def test_a_monai_bundle_runs_each_tile_as_a_bag_of_one(trained: Path, tmp_path: Path):
    from domainfm.shared.deploy import build_network
    from domainfm.shared.deploy.bundle import export_bundle
    from domainfm.shared.tiles.store import TileStore

    checkpoint = trained / "mil" / "slide_classifier.safetensors"
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    card = load_deployable(checkpoint).card
    network = build_network(card.kind, card.build)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == len(card.class_names)
    store, embeddings = TileStore(trained / "tiles.zarr"), read_embeddings(trained / "emb.zarr")
    model, _ = load_slide_classifier(checkpoint)
    for i in (0, 5, 11):
        tile = torch.from_numpy(np.asarray(store.tiles[i])[None]).float()
        with torch.no_grad():
            pred = torch.softmax(network.eval()(tile), 1)[0].numpy()
            alone = model.head(torch.from_numpy(embeddings.features[i : i + 1]))[0]
        np.testing.assert_allclose(pred, torch.softmax(alone, 0).numpy(), atol=1e-5)


def test_a_slide_without_tissue_has_no_bag_and_empty_outputs(trained: Path, tmp_path: Path, capsys):
    blank = tmp_path / "glass.tif"  # a generic pyramidal TIFF of bare glass: a slide, with no tissue tile
    glass = np.full((1024, 1024, 3), 245, np.uint8)
    with tifffile.TiffWriter(blank) as tif:
        tif.write(glass, tile=(256, 256), photometric="rgb", resolution=(1e4 / SLIDE_MPP,) * 2, resolutionunit=3)
        tif.write(glass[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    status, _ = _predict(trained / "mil" / "slide_classifier.safetensors", [blank], tmp_path / "out", capsys)
    assert status == 0
    row = _csv(tmp_path / "out" / "predictions.csv", "input")["glass.tif"]
    assert row["tiles"] == "0" and row["predicted"] == "" and row["P(tumor)"] == "" and row["top1_x"] == ""
    assert json.loads((tmp_path / "out" / "geojson" / "glass.geojson").read_text())["features"] == []
    with tifffile.TiffFile(tmp_path / "out" / "maps" / "glass.tif") as tif:
        assert not tif.series[0].levels[0].asarray().any()
    assert (tmp_path / "out" / "overlays" / "glass.png").is_file()
