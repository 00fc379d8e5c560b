"""``domainfm pathology predict`` on phantom slides, checked with independent readers.

The GeoJSON is parsed with shapely and compared with the tiles ``domainfm pathology tile`` cuts from the
same slides at the same mpp (coordinates, and probabilities equal to the deployed classifier's on the stored
tiles); the pyramidal probability map is read with tifffile; a run killed after one slide is resumed.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from shapely.geometry import box, shape
from shapely.ops import unary_union

from domainfm.cli import main
from domainfm.domains.pathology import predict as predict_module
from domainfm.shared.deploy import load_deployable, predict, read_input
from domainfm.shared.tiles.store import TileStore

MPP, TILE_PX, SLIDE_MPP = 2.0, 32, 0.25  # the fixture's classifier: 32-px tiles at 2 mpp; phantoms at 0.25 mpp
SIDE = TILE_PX * MPP / SLIDE_MPP  # a tile's footprint in level-0 pixels


def _phantoms(folder: Path, sizes: dict[str, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, (name, size) in enumerate(sizes.items()):
        path = folder / f"{name}.svs"
        assert main(["pathology", "phantom", "--out", str(path), "--size", str(size), "--seed", str(seed + 7)]) == 0
        paths.append(path)
    return paths


def _predict(checkpoint: Path, inputs: list[Path], out: Path, capsys, *extra: str) -> tuple[int, dict]:
    capsys.readouterr()
    command = ["pathology", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs)]
    status = main([*command, "--out", str(out), "--device", "cpu", "--json", *extra])
    printed = capsys.readouterr().out
    return status, json.loads(printed[printed.index("{") :]) if "{" in printed else {}


def _rows(out: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(out / "predictions.csv", newline="") as handle:
        return {row["input"]: row for row in csv.DictReader(handle)}


def _tiler_tiles(slides: list[Path], store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Slide name -> (level-0 corners [N, 2], tiles [N, 3, t, t]) as ``pathology tile`` writes them."""
    command = ["pathology", "tile", *map(str, slides), "--out", str(store), "--mpp", str(MPP)]
    assert main([*command, "--tile_size", str(TILE_PX), "--workers", "1"]) == 0
    tiles = TileStore(store)
    index = tiles.index
    found = {}
    for row, source in enumerate(tiles.sources):
        ids = np.flatnonzero(index["source"] == row)
        assert np.all(index["scale"][ids] == MPP)
        coords = np.stack([index["x"][ids], index["y"][ids]], axis=1)
        found[Path(source["path"]).name] = (coords, np.stack([tiles.tiles[int(i)] for i in ids]))
    return found


def test_slides_to_geojson_map_and_overlay(deployables, tmp_path: Path, capsys):
    checkpoint, pictures = deployables["pathology.tile_classifier"]
    deployable = load_deployable(checkpoint)
    names = deployable.card.class_names
    slides = _phantoms(tmp_path / "slides", {"small": 1024, "large": 1792})
    out = tmp_path / "predicted"
    status, summary = _predict(checkpoint, [*slides, *pictures], out, capsys)
    assert status == 0 and summary["predicted"] == 4 and not summary["failed"]
    tiler = _tiler_tiles(slides, tmp_path / "tiles.zarr")
    rows = _rows(out)
    for slide in slides:
        corners, stored = tiler[slide.name]
        assert len(corners) > 3
        collection = json.loads((out / "geojson" / f"{slide.stem}.geojson").read_text())
        assert collection["type"] == "FeatureCollection"
        features = collection["features"]
        polygons = [shape(f["geometry"]) for f in features]
        # one square tile per tissue tile the tiler cuts, in level-0 pixels: same corners, same footprint
        found = np.array([p.bounds[:2] for p in polygons])
        assert sorted(map(tuple, found.tolist())) == sorted(map(tuple, corners.astype(float).tolist()))
        for polygon, (x, y) in zip(polygons, found, strict=True):
            assert polygon.is_valid and polygon.equals(box(x, y, x + SIDE, y + SIDE))
        size = 1024 if slide.stem == "small" else 1792
        assert unary_union(polygons).area == pytest.approx(len(polygons) * SIDE**2)  # no overlaps
        assert box(0, 0, size, size).contains(unary_union(polygons))
        # probabilities: the deployed classifier's on the tiles the tiler stored, within 1e-5
        expected = predict(deployable, torch.from_numpy(stored).float()).numpy()
        order = {tuple(c): i for i, c in enumerate(corners.tolist())}
        measured = np.array([[f["properties"]["measurements"][f"P({n})"] for n in names] for f in features])
        expected = expected[[order[(int(x), int(y))] for x, y in found]]
        np.testing.assert_allclose(measured, expected, atol=1e-5)
        classes = [f["properties"]["classification"]["name"] for f in features]
        assert classes == [names[k] for k in expected.argmax(1)]
        assert all(f["properties"]["objectType"] == "tile" for f in features)
        assert all(len(f["properties"]["classification"]["color"]) == 3 for f in features)
        # the pyramidal map: one pixel per grid cell, P x 255 per class and the class channel, SubIFD levels
        grid = (size - SIDE) // SIDE + 1
        with tifffile.TiffFile(out / "maps" / f"{slide.stem}.tif") as tif:
            assert tif.is_ome
            series = tif.series[0]
            levels = [level.asarray() for level in series.levels]
            assert len(levels) == math.ceil(math.log2(grid)) + 1
            for k, level in enumerate(levels):
                side = math.ceil(grid / 2**k)
                assert level.shape == (len(names) + 1, side, side) and level.dtype == np.uint8
                np.testing.assert_array_equal(level, levels[0][:, :: 2**k, :: 2**k])
            page = tif.pages[0]
            numerator, denominator = page.tags["XResolution"].value
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            assert numerator / denominator == pytest.approx(1e4 / (TILE_PX * MPP))  # a pixel is a tile
            assert page.is_tiled
        level0 = levels[0]
        cols, rows_ = (found / SIDE).round().astype(int).T
        np.testing.assert_array_equal(cols * SIDE, found[:, 0])  # pixel (row, col) starts at (col, row) * side
        np.testing.assert_allclose(level0[:-1, rows_, cols].T / 255.0, measured, atol=0.5 / 255 + 1e-6)
        np.testing.assert_array_equal(level0[-1, rows_, cols], expected.argmax(1) + 1)
        assert np.count_nonzero(level0[-1]) == len(features)  # 0 wherever no tile was predicted
        # the slide's row and its overlay
        row = rows[slide.name]
        assert row["type"] == "slide" and int(row["tiles"]) == len(features)
        assert float(row["mpp"]) == MPP and float(row["slide_mpp"]) == SLIDE_MPP
        for k, name in enumerate(names):
            assert int(row[f"tiles_{name}"]) == classes.count(name)
            assert float(row[f"mean_P({name})"]) == pytest.approx(expected[:, k].mean(), abs=2e-6)
        with Image.open(out / "overlays" / f"{slide.stem}.png") as overlay:
            assert overlay.format == "PNG" and overlay.info["Software"] == "domainfm predict"
    assert not (out / "geojson" / f"{pictures[0].stem}.geojson").exists()  # pictures: a row each, no GeoJSON
    for picture in pictures:
        row = rows[picture.name]
        expected = predict(deployable, read_input(picture, deployable.card))[0].numpy()
        assert row["type"] == "picture" and row["predicted"] == names[int(expected.argmax())]
        measured = [float(row[f"mean_P({n})"]) for n in names]
        np.testing.assert_allclose(measured, expected, atol=1e-5)


def test_killed_run_resumes_with_the_rest(deployables, tmp_path: Path, capsys, monkeypatch):
    checkpoint, _ = deployables["pathology.tile_classifier"]
    slides = _phantoms(tmp_path / "slides", {"a": 1024, "b": 1280})
    out = tmp_path / "predicted"
    original, calls = predict_module.predict_slide, []

    def killed_after_one(*args, **kwargs):
        calls.append(args[1].key)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process is killed while predicting the second slide
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict_slide", killed_after_one)
    status, _ = _predict(checkpoint, slides, out, capsys)
    assert status == 130 and calls == ["a.svs", "b.svs"]
    first = (out / "geojson" / "a.geojson").read_bytes()
    assert not (out / "geojson" / "b.geojson").exists() and not (out / "maps" / "b.tif").exists()
    spy = []
    monkeypatch.setattr(predict_module, "predict_slide", lambda *a, **k: spy.append(a[1].key) or original(*a, **k))
    status, summary = _predict(checkpoint, slides, out, capsys)
    assert status == 0 and spy == ["b.svs"]  # only the slide not finished
    assert summary["predicted"] == 1 and summary["skipped"] == 1
    assert (out / "geojson" / "a.geojson").read_bytes() == first
    assert set(_rows(out)) == {"a.svs", "b.svs"} and (out / "maps" / "b.tif").is_file()


def test_bad_slides_are_reported_and_the_others_predicted(deployables, tmp_path: Path, capsys):
    from domainfm.studies.pathology.phantom import write_phantom_slide

    checkpoint, _ = deployables["pathology.tile_classifier"]
    folder = tmp_path / "slides"
    (good,) = _phantoms(folder, {"good": 1024})
    write_phantom_slide(folder / "bare.svs", 1024, seed=2, mpp=None)
    (folder / "corrupt.svs").write_bytes(b"II*\x00 not really a slide")
    damaged = bytearray(good.read_bytes())  # a slide that opens, but whose tile data is garbage
    begin, stop = len(damaged) // 5, len(damaged) * 7 // 10
    damaged[begin:stop] = np.arange(stop - begin, dtype=np.uint8).tobytes()
    (folder / "damaged.svs").write_bytes(bytes(damaged))
    status, summary = _predict(checkpoint, [folder], tmp_path / "out", capsys)
    assert status == 2 and summary["predicted"] == 1
    assert set(summary["failed"]) == {"bare.svs", "corrupt.svs", "damaged.svs"}
    assert "cannot decode part of the slide" in summary["failed"]["damaged.svs"]
    assert "records no microns per pixel" in summary["failed"]["bare.svs"]
    assert "--assume-mpp" in summary["failed"]["bare.svs"]
    assert "corrupt.svs" in summary["failed"]["corrupt.svs"] and "\n" not in summary["failed"]["corrupt.svs"]
    assert set(_rows(tmp_path / "out")) == {"good.svs"}
    # the scanner's mpp given: the bare slide is tiled like the others, its mpp recorded as assumed
    assumed = tmp_path / "assumed"  # drawn as a heat map of one class's probability
    status, _ = _predict(checkpoint, [folder / "bare.svs"], assumed, capsys, "--assume_mpp", "0.25", "--overlay_class",
                         "tumor")  # fmt: skip
    assert status == 0 and _rows(assumed)["bare.svs"]["mpp_source"] == "--assume-mpp"
    with Image.open(assumed / "overlays" / "bare.png") as overlay:
        assert overlay.format == "PNG" and overlay.size[0] > 200
    status = main(["pathology", "predict", "--checkpoint", str(checkpoint), "--input", str(good), "--out",
                   str(tmp_path / "unknown"), "--overlay_class", "spleen"])  # fmt: skip
    assert status == 2 and "--overlay_class: unknown target 'spleen'" in capsys.readouterr().err
    assert not (tmp_path / "unknown").exists()
    # pictures must be tiles of the model's size; another size is refused by name, not resized
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(wrong)
    status, summary = _predict(checkpoint, [wrong], tmp_path / "wrong", capsys)
    assert status == 2 and "wrong.png" in summary["failed"]
    # another domain's model is refused before anything is written
    segmenter, _ = deployables["segmentation.gms"]
    status = main(["pathology", "predict", "--checkpoint", str(segmenter), "--input", str(good), "--out",
                   str(tmp_path / "other")])  # fmt: skip
    assert status == 2 and "segmentation predict" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_explain_writes_slide_tiles_in_the_predict_formats(deployables, tmp_path: Path, capsys):
    checkpoint, _ = deployables["pathology.tile_classifier"]
    deployable = load_deployable(checkpoint)
    names = deployable.card.class_names
    (slide,) = _phantoms(tmp_path / "slides", {"slide": 1280})
    status, _ = _predict(checkpoint, [slide], tmp_path / "predicted", capsys)
    assert status == 0
    predicted = json.loads((tmp_path / "predicted" / "geojson" / "slide.geojson").read_text())["features"]
    out = tmp_path / "explained.png"
    command = ["explain", "--checkpoint", str(checkpoint), "--input", str(slide), "--out", str(out), "--tiles"]
    assert main([*command, "--method", "occlusion", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tile_outputs"]["geojson"] == str(out.with_suffix(".geojson"))
    features = json.loads(out.with_suffix(".geojson").read_text())["features"]
    # the same tiles as predict, each explained for its predicted class
    assert [f["geometry"] for f in features] == [f["geometry"] for f in predicted]
    classes = [f["properties"]["classification"]["name"] for f in features]
    assert classes == [f["properties"]["classification"]["name"] for f in predicted]
    values = np.array([[f["properties"]["measurements"][k] for k in ("attribution", "score")] for f in features])
    assert np.all(np.isfinite(values)) and len(values) == summary["tiles"]
    assert values[:, 1].mean() == pytest.approx(summary["mean_score"], abs=1e-6)
    with tifffile.TiffFile(out.with_suffix(".tif")) as tif:
        level0 = tif.series[0].levels[0].asarray()
        assert level0.dtype == np.float32 and level0.shape[0] == 3 and len(tif.series[0].levels) > 1
    found = np.array([shape(f["geometry"]).bounds[:2] for f in features])
    cols, rows_ = (found / SIDE).round().astype(int).T
    np.testing.assert_allclose(level0[:2, rows_, cols].T, values, atol=1e-6)
    np.testing.assert_array_equal(level0[2, rows_, cols], [names.index(c) + 1 for c in classes])
    assert np.count_nonzero(level0[2]) == len(features)
    # written once; replaced with --overwrite only; a user's file of that name is never touched
    assert main([*command, "--method", "occlusion"]) == 2 and "pass --overwrite" in capsys.readouterr().err
    assert main([*command, "--method", "occlusion", "--overwrite"]) == 0
    out.with_suffix(".geojson").write_text("my annotations")
    assert main([*command, "--method", "occlusion", "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err and out.with_suffix(".geojson").read_text() == "my annotations"
    picture = tmp_path / "tile.png"
    Image.fromarray(np.zeros((TILE_PX, TILE_PX, 3), np.uint8)).save(picture)
    assert main(["explain", "--checkpoint", str(checkpoint), "--input", str(picture), "--out",
                 str(tmp_path / "tile_ig.png"), "--tiles"]) == 2  # fmt: skip
    assert "slides only" in capsys.readouterr().err


def test_predict_explain_writes_what_explain_writes(deployables, tmp_path: Path, capsys):
    checkpoint, pictures = deployables["pathology.tile_classifier"]
    (slide,) = _phantoms(tmp_path / "slides", {"slide": 1024})
    out = tmp_path / "predicted"
    status, summary = _predict(checkpoint, [slide, pictures[0]], out, capsys, "--explain")
    assert status == 0 and summary["predicted"] == 2
    explained = tmp_path / "explained.png"
    command = ["explain", "--checkpoint", str(checkpoint), "--input", str(slide), "--out", str(explained)]
    assert main([*command, "--tiles", "--json"]) == 0  # integrated gradients, each tile's predicted class
    capsys.readouterr()
    ours = json.loads((out / "explanations" / "slide.geojson").read_text())["features"]
    theirs = json.loads(explained.with_suffix(".geojson").read_text())["features"]
    assert [f["geometry"] for f in ours] == [f["geometry"] for f in theirs]
    for mine, other in zip(ours, theirs, strict=True):
        assert mine["properties"]["classification"] == other["properties"]["classification"]
        for name, value in other["properties"]["measurements"].items():
            assert mine["properties"]["measurements"][name] == pytest.approx(value, abs=1e-5)
    with (
        tifffile.TiffFile(out / "explanations" / "slide.tif") as a,
        tifffile.TiffFile(explained.with_suffix(".tif")) as b,
    ):
        np.testing.assert_allclose(a.series[0].levels[0].asarray(), b.series[0].levels[0].asarray(), atol=1e-5)
    for png in (out / "explanations" / "slide.png", out / "explanations" / f"{pictures[0].stem}.png"):
        with Image.open(png) as picture:
            assert picture.format == "PNG" and picture.info["Software"] == "domainfm explain"
    assert not (out / "explanations" / f"{pictures[0].stem}.geojson").exists()


def test_a_slide_without_tissue_gets_empty_outputs(deployables, tmp_path: Path, capsys):
    checkpoint, _ = deployables["pathology.tile_classifier"]
    blank = tmp_path / "glass.tif"  # a generic pyramidal TIFF of bare glass: a slide, with no tissue tile
    glass = np.full((1024, 1024, 3), 245, np.uint8)
    with tifffile.TiffWriter(blank) as tif:
        tif.write(glass, tile=(256, 256), photometric="rgb", resolution=(1e4 / SLIDE_MPP,) * 2, resolutionunit=3)
        tif.write(glass[::4, ::4], tile=(256, 256), photometric="rgb", subfiletype=1)
    status, _ = _predict(checkpoint, [blank], tmp_path / "out", capsys)
    assert status == 0
    row = _rows(tmp_path / "out")["glass.tif"]
    assert row["type"] == "slide" and row["tiles"] == "0" and row["mean_P(tumor)"] == ""
    assert float(row["slide_mpp"]) == pytest.approx(SLIDE_MPP)
    assert json.loads((tmp_path / "out" / "geojson" / "glass.geojson").read_text())["features"] == []
    with tifffile.TiffFile(tmp_path / "out" / "maps" / "glass.tif") as tif:
        level0 = tif.series[0].levels[0].asarray()
    assert level0.shape[1:] == (4, 4) and not level0.any()
