"""``domainfm remote-sensing predict``: COG masks, NetCDF curtains and scene rows, read back with rasterio,
netCDF4, pyhdf and Pillow and compared with the deployed model on the same inputs."""

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import rasterio
from PIL import Image
from pyhdf.SD import SD, SDC
from rasterio.transform import from_origin

from domainfm.cli import main
from domainfm.domains.remote_sensing import geofiles
from domainfm.domains.remote_sensing import predict as rs_predict
from domainfm.domains.remote_sensing.curtain import CURTAIN_SHAPE, track_rows
from domainfm.domains.remote_sensing.deploy import read_granule_input
from domainfm.shared.deploy import load_deployable, predict, read_input
from domainfm.shared.predict.pictures import palette

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
MERCATOR, RADIUS = "EPSG:3857", 6378137.0  # Web Mercator: lon/lat in closed form


def _pred(checkpoint: Path, path: Path) -> np.ndarray:
    """The deployed model's output on a whole input file ``[K, ...]``."""
    deployable = load_deployable(checkpoint)
    return predict(deployable, read_input(path, deployable.card))[0].numpy()


def _ties(granule: Path) -> tuple[np.ndarray, np.ndarray]:
    sd = SD(str(granule), SDC.READ)
    try:
        return np.asarray(sd.select("Latitude").get(), float), np.asarray(sd.select("Longitude").get(), float)
    finally:
        sd.end()


@pytest.fixture(scope="module")
def inputs(deployables, tmp_path_factory) -> dict[str, Path]:
    """Raw inputs of three sizes: a 32 px chip (.npy), a 144 px granule (.hdf) and a 136 x 120 GeoTIFF."""
    checkpoint, chips = deployables["remote_sensing.cloud_mask"]
    root = tmp_path_factory.mktemp("rs_inputs")
    granule = root / "swath.hdf"
    assert main(["remote-sensing", "phantom", "--out", str(granule), "--size", "144", "--seed", "7"]) == 0
    card = load_deployable(checkpoint).card
    bands = read_granule_input(granule, card)[:, 4:140, 10:130]  # the model's bands, in the store's units
    tif = root / "scene.tif"
    profile = {"driver": "GTiff", "width": 120, "height": 136, "count": len(bands), "dtype": "float32"}
    profile |= {"crs": MERCATOR, "transform": from_origin(1_000_000, 4_000_000, 1000, 1000)}
    with rasterio.open(tif, "w", **profile) as handle:
        handle.write(bands)
        for index, name in enumerate(card.channel_names, 1):
            handle.set_band_description(index, name)
    return {"chip": chips[0], "granule": granule, "tif": tif}


def _points(gcps) -> list[tuple[float, float, float, float]]:
    return [(g.row, g.col, g.x, g.y) for g in gcps]


def _run(argv: list[str], capsys) -> dict:
    code = main([*argv, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == (2 if summary["failed"] else 0)
    return summary


def test_cloud_masks_are_cogs_on_the_inputs_grid_with_the_models_values(deployables, inputs, tmp_path, capsys):
    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    # a threshold inside the granule's range of probabilities, so that its mask holds both classes
    threshold = float(np.median(_pred(checkpoint, inputs["granule"])))
    out = tmp_path / "out"
    argv = ["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs.values()),
            "--out", str(out), "--probabilities", "--threshold", str(threshold)]  # fmt: skip
    summary = _run(argv, capsys)
    assert (summary["predicted"], summary["failed"]) == (3, {})
    shapes = set()
    for name, path in inputs.items():
        probability = _pred(checkpoint, path)[0]
        shapes.add(probability.shape)
        with rasterio.open(out / "masks" / f"{path.stem}.tif") as mask:
            assert (mask.height, mask.width, mask.count, mask.dtypes[0]) == (*probability.shape, 1, "uint8")
            values = mask.read(1)
            np.testing.assert_array_equal(values, (probability >= threshold).astype(np.uint8))
            assert name != "granule" or set(np.unique(values)) == {0, 1}
            # a Cloud-Optimised GeoTIFF: tiled, in GDAL's COG layout, overviews when larger than a 128 px block
            assert mask.profile["tiled"] and mask.block_shapes == [(128, 128)]
            assert mask.overviews(1) == ([2] if max(probability.shape) > 128 else [])
            assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert mask.colormap(1)[1][:3] == tuple(palette(2)[1])  # cloud in the overlay's colour
            crs, transform, (gcps, gcp_crs) = mask.crs, mask.transform, mask.gcps
        with rasterio.open(out / "probabilities" / f"{path.stem}.tif") as source:
            np.testing.assert_allclose(source.read(1), probability, atol=1e-6)
            assert _points(source.gcps[0]) == _points(gcps) and source.crs == crs
        if name == "tif":
            with rasterio.open(path) as source:
                assert crs == source.crs and transform == source.transform and not gcps
        elif name == "granule":
            latitude, longitude = _ties(path)
            assert crs is None and gcp_crs == "EPSG:4326" and len(gcps) == latitude.size  # 28 x 28: all kept
            for gcp in gcps:  # every 5th 1-km pixel from the 3rd, at the pixel's centre
                i, j = (gcp.row - 2.5) / 5, (gcp.col - 2.5) / 5
                assert i == int(i) and j == int(j)
                assert (gcp.y, gcp.x) == pytest.approx((latitude[int(i), int(j)], longitude[int(i), int(j)]))
        else:
            assert crs is None and not gcps
        with Image.open(out / "overlays" / f"{path.stem}.png") as overlay:
            assert overlay.size == probability.shape[::-1] and overlay.mode == "RGB"
    assert len(shapes) == 3
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "input,height,width,cloud_fraction,georeference,mask,strips,overlay_scale" and len(rows) == 4
    assert "swath.hdf,144,144," in rows[3] and rows[3].endswith(",gcps,masks/swath.tif,1,1")


def test_a_gdal_without_the_cog_driver_gets_the_same_layout_from_gtiff(tmp_path):
    latitude, longitude = np.meshgrid(np.linspace(10, 12, 40), np.linspace(179, 181, 30), indexing="ij")
    longitude = (longitude + 180) % 360 - 180  # across the antimeridian: 179 .. 180, -180 .. -179
    geo = geofiles.Georeference(gcps=geofiles.swath_gcps(latitude, longitude, max_per_axis=8), gcp_crs="EPSG:4326")
    values = (np.random.default_rng(0).random((1, 200, 150)) > 0.5).astype(np.uint8)
    path = geofiles.write_cog(tmp_path / "m.tif", values, geo, "nearest", ["class"], {"A": "b"}, driver="GTiff")
    with rasterio.open(path) as source:
        assert source.profile["tiled"] and source.block_shapes == [(128, 128)] and source.overviews(1) == [2]
        np.testing.assert_array_equal(source.read(), values)
        gcps, crs = source.gcps
        assert crs == "EPSG:4326" and source.tags()["A"] == "b"
        assert max(g.x for g in gcps) == pytest.approx(181) and min(g.x for g in gcps) == pytest.approx(179)
    # 8 tie points per axis at most, the last one kept: rows 0, 6, ..., 36, 39 and columns 0, 5, ..., 25, 29
    assert sorted({(g.row - 2.5) / 5 for g in gcps}) == [0, 6, 12, 18, 24, 30, 36, 39]
    assert sorted({(g.col - 2.5) / 5 for g in gcps}) == [0, 5, 10, 15, 20, 25, 29]


def test_a_swath_across_the_antimeridian_interpolates_longitudes_the_short_way():
    latitude, longitude = np.meshgrid(np.linspace(0, 1, 3), [178.0, -178.0], indexing="ij")
    geo = geofiles.Georeference(tie_latitude=latitude, tie_longitude=longitude)
    lon, lat = geo.lonlat(np.array([2.0, 7.0]), np.array([4.5, 9.5]))  # halfway, then 1 px past the last tie
    np.testing.assert_allclose(lon, [-180.0, -176.0])  # 178 .. 182 (-178), 0.8 degrees a pixel; in [-180, 180)
    np.testing.assert_allclose(lat, [0.0, 0.5])


def test_curtains_are_netcdf_along_the_central_column_with_the_tracks_lat_lon(deployables, inputs, tmp_path, capsys):
    checkpoint, _ = deployables["remote_sensing.curtain"]
    deployable = load_deployable(checkpoint)
    chip = deployable.card.spatial_shape[0]
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((deployable.card.in_channels, chip // 2, chip), np.float32))
    out = tmp_path / "out"
    argv = ["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs.values()),
            str(small), "--out", str(out), "--batch", "1"]  # fmt: skip
    summary = _run(argv, capsys)
    assert summary["predicted"] == 3 and list(summary["failed"]) == ["small.npy"]
    assert f"{chip} x {chip} chips" in summary["failed"]["small.npy"]
    samples, bins = CURTAIN_SHAPE
    for name, path in inputs.items():
        image = read_input(path, deployable.card)
        height, width = image.shape[-2:]
        tops = list(range(0, height - chip + 1, chip))
        left = (width - chip) // 2
        expected = np.concatenate(
            [predict(deployable, image[..., y : y + chip, left : left + chip])[0, 0].numpy() for y in tops]
        )
        with netCDF4.Dataset(out / "curtains" / f"{path.stem}.nc") as nc:
            assert dict(nc.dimensions.items())["along_track"].size == len(tops) * samples
            assert nc["cloud_probability"].dimensions == ("along_track", "height")
            np.testing.assert_allclose(nc["cloud_probability"][:], expected, atol=1e-6)
            np.testing.assert_array_equal(nc["cloud_mask"][:], (expected >= 0.5).astype(np.uint8))
            assert nc["height"].units == "km" and nc["height"].size == bins
            np.testing.assert_allclose(nc["height_bnds"][:][[0, -1]], [[0, 0.5], [19.5, 20]])
            rows = np.concatenate([y + track_rows(chip, samples) for y in tops])
            np.testing.assert_array_equal(nc["row"][:], rows)
            assert set(nc["column"][:]) == {left + chip // 2}
            assert nc.Conventions == "CF-1.8" and nc["cloud_probability"].long_name
            variables = set(nc.variables)
            if name == "chip":
                assert not {"lat", "lon"} & variables
                continue
            assert nc["lat"].units == "degrees_north" and nc["lon"].units == "degrees_east"
            assert nc["cloud_probability"].coordinates == "lat lon height"
            lat, lon = nc["lat"][:], nc["lon"][:]
        column = left + chip // 2
        if name == "tif":  # pixel centres of the Mercator grid, inverted in closed form
            x, y = 1_000_000 + 1000 * (column + 0.5), 4_000_000 - 1000 * (rows + 0.5)
            np.testing.assert_allclose(lon, np.degrees(x / RADIUS), atol=1e-9)
            np.testing.assert_allclose(lat, np.degrees(2 * np.arctan(np.exp(y / RADIUS)) - np.pi / 2), atol=1e-9)
        else:  # the phantom's tie points are linear in row (lat) and column (lon), every 5th pixel from the 3rd
            latitude, longitude = _ties(path)
            lat_step = (latitude[-1, 0] - latitude[0, 0]) / (latitude.shape[0] - 1) / 5
            lon_step = (longitude[0, -1] - longitude[0, 0]) / (longitude.shape[1] - 1) / 5
            np.testing.assert_allclose(lat, latitude[0, 0] + lat_step * (rows - 2), atol=1e-5)
            np.testing.assert_allclose(lon, longitude[0, 0] + lon_step * (column - 2), atol=1e-5)
        with Image.open(out / "curtains" / f"{path.stem}.png") as plot:
            assert plot.format == "PNG" and plot.width > plot.height
    assert (out / "predictions.csv").read_text().splitlines()[0].startswith("input,height,width,chips,samples")


def test_a_killed_run_resumes_with_only_the_rest(deployables, inputs, tmp_path, capsys, monkeypatch):
    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    out = tmp_path / "out"
    argv = ["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs.values()),
            "--out", str(out)]  # fmt: skip
    original, predicted = rs_predict._predict_mask, []

    def killed_after_one(deployable, item, *args):
        if predicted:
            raise KeyboardInterrupt  # as Ctrl-C or a kill: the runner does not catch it
        predicted.append(item.key)
        return original(deployable, item, *args)

    monkeypatch.setattr(rs_predict, "_predict_mask", killed_after_one)
    assert main(argv) == 130  # interrupted while predicting the second input
    assert "interrupted" in capsys.readouterr().err
    first = out / "masks" / f"{Path(predicted[0]).stem}.tif"
    assert sorted(p.name for p in (out / "masks").iterdir()) == [first.name]
    before = (first.read_bytes(), first.stat().st_mtime_ns)

    rerun: list[str] = []

    def counted(deployable, item, *args):
        rerun.append(item.key)
        return original(deployable, item, *args)

    monkeypatch.setattr(rs_predict, "_predict_mask", counted)
    summary = _run(argv, capsys)
    assert (summary["predicted"], summary["skipped"]) == (2, 1)
    assert sorted(rerun) == sorted(p.name for p in inputs.values() if p.name != predicted[0])
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before
    assert len(list((out / "masks").glob("*.tif"))) == 3
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())


@pytest.fixture(scope="module")
def scene_model(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A multi-label scene model trained one epoch on six 2-band 32 px GeoTIFFs, and its inputs."""
    root = tmp_path_factory.mktemp("scenes")
    files = []
    for i in range(6):
        profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 2, "dtype": "float32", "crs": "EPSG:32633"}
        profile["transform"] = from_origin(500000 + 320 * i, 4000000, 10, 10)
        files.append(root / f"patch{i}.tif")
        with rasterio.open(files[-1], "w", **profile) as handle:
            handle.write(np.random.default_rng(i).uniform(100, 3000, (2, 32, 32)).astype(np.float32))
            handle.set_band_description(1, "B02")
            handle.set_band_description(2, "B05")
    (root / "labels.csv").write_text(
        "name,forest,water\n" + "".join(f"patch{i},{i % 2},{(i + 1) % 2}\n" for i in range(6))
    )
    (root / "splits.csv").write_text(
        "scene,split\n" + "".join(f"patch{i},{'test' if i % 3 == 0 else 'train'}\n" for i in range(6))
    )
    store = root / "s.zarr"
    assert main(["remote-sensing", "ingest", *map(str, files), "--out", str(store), "--chip", "32",
                 "--labels", str(root / "labels.csv"), "--splits", str(root / "splits.csv")]) == 0  # fmt: skip
    assert main(["remote-sensing", "train", "--store", str(store), "--task", "multilabel", "--epochs", "1",
                 "--device", "cpu", "--out", str(root / "model"), "--json"]) == 0  # fmt: skip
    return root / "model" / "multilabel.safetensors", files


def test_scene_labels_are_csv_rows_of_label_probabilities(scene_model, tmp_path, capsys):
    checkpoint, files = scene_model
    large = tmp_path / "large.tif"
    with rasterio.open(files[0]) as source:
        profile = source.profile | {"width": 40, "height": 40}
        with rasterio.open(large, "w", **profile) as handle:
            handle.write(np.resize(source.read(), (2, 40, 40)))
            handle.descriptions = source.descriptions
        band = tmp_path / "tile_B02.tif"  # one band of a band set split over files
        with rasterio.open(band, "w", **(source.profile | {"count": 1})) as handle:
            handle.write(source.read(1), 1)
    capsys.readouterr()
    out = tmp_path / "out"
    summary = _run(["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, files[:3]),
                    str(large), str(band), "--out", str(out), "--threshold", "0.5"], capsys)  # fmt: skip
    assert summary["predicted"] == 3 and sorted(summary["failed"]) == ["large.tif", "tile_B02.tif"]
    assert "32 x 32 chips" in summary["failed"]["large.tif"]
    assert "band set split over files" in summary["failed"]["tile_B02.tif"]
    assert "stack the bands B02, B05 into one GeoTIFF" in summary["failed"]["tile_B02.tif"]
    import csv

    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["input", "forest", "water", "labels"]
    for row, path in zip(rows, files[:3], strict=True):
        probability = _pred(checkpoint, path)
        assert row["input"] == path.name
        assert [float(row["forest"]), float(row["water"])] == pytest.approx(probability.tolist(), abs=1e-6)
        assert row["labels"] == ";".join(n for n, p in zip(("forest", "water"), probability, strict=True) if p >= 0.5)


@pytest.mark.parametrize(
    ("side", "block", "factors"),
    [
        (32, 128, []),
        (128, 128, []),
        (129, 128, [2]),
        (256, 128, [2]),
        (257, 256, [2]),
        (513, 512, [2]),
        (2030, 512, [2, 4]),
    ],
)
def test_block_sizes_give_every_map_above_128_px_an_overview(side, block, factors):
    assert geofiles.block_size(side, side // 2 + 1) == block
    assert geofiles.overview_factors(side, side // 2 + 1, block) == factors


def test_broken_granules_and_rasters_are_named_and_the_others_predicted(deployables, inputs, tmp_path, capsys):
    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "good.npy").write_bytes(inputs["chip"].read_bytes())
    (folder / "truncated.hdf").write_bytes(inputs["granule"].read_bytes()[:4096])
    (folder / "empty.tif").write_bytes(b"")
    (folder / "zero_bytes.npy").write_bytes(b"")
    (folder / "pickled.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    )
    out = tmp_path / "out"
    summary = _run(["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", str(folder),
                    "--out", str(out)], capsys)  # fmt: skip
    assert summary["predicted"] == 1
    assert sorted(summary["failed"]) == ["empty.tif", "pickled.npy", "truncated.hdf", "zero_bytes.npy"]
    for key, reason in summary["failed"].items():
        assert key in reason  # the message names the file
    assert sorted(p.relative_to(out).as_posix() for p in (out / "masks").rglob("*.tif")) == ["masks/sub/good.tif"]


def test_a_geotiff_with_gcps_only_is_located_through_them(tmp_path):
    rows, cols = np.meshgrid(np.arange(12), np.arange(10), indexing="ij")  # tie points of a 60 x 50 px swath
    latitude, longitude = 40 + 0.05 * rows + 0.01 * cols, -3 + 0.04 * cols - 0.02 * rows  # a tilted grid
    geo = geofiles.Georeference(gcps=geofiles.swath_gcps(latitude, longitude), gcp_crs="EPSG:4326")
    path = geofiles.write_cog(tmp_path / "gcps.tif", np.zeros((1, 60, 50), np.uint8), geo, "nearest", ["c"], {})
    read = geofiles.georeference(path)
    assert read.kind == "gcps" and len(read.gcps) == latitude.size
    pixel_rows, pixel_cols = np.array([2, 27, 57]), np.array([2, 42, 47])  # tie pixels 5i + 2: i = 0, 5, 11
    lon, lat = read.lonlat(pixel_rows, pixel_cols)
    i, j = (pixel_rows - 2) // 5, (pixel_cols - 2) // 5
    np.testing.assert_allclose(lat, latitude[i, j], atol=1e-6)
    np.testing.assert_allclose(lon, longitude[i, j], atol=1e-6)


@pytest.mark.parametrize("kind", ["remote_sensing.cloud_mask", "remote_sensing.curtain"])
def test_explain_writes_the_same_overlay_as_the_explain_command(deployables, inputs, kind, tmp_path, capsys):
    checkpoint, _ = deployables[kind]
    chip = inputs["chip"]
    out = tmp_path / "out"
    assert main(["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", str(chip),
                 "--out", str(out), "--explain", "--json"]) == 0  # fmt: skip
    single = tmp_path / "single.png"
    assert main(["explain", "--checkpoint", str(checkpoint), "--input", str(chip), "--out", str(single),
                 "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    with Image.open(out / "explanations" / f"{chip.stem}.png") as ours, Image.open(single) as theirs:
        assert ours.size == theirs.size
        np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs.convert("RGB")))


def test_explain_of_a_curtain_writes_one_overlay_per_chip_of_the_track(deployables, inputs, tmp_path, capsys):
    checkpoint, _ = deployables["remote_sensing.curtain"]
    out = tmp_path / "out"
    summary = _run(["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", str(inputs["tif"]),
                    "--out", str(out), "--explain"], capsys)  # fmt: skip
    assert summary["predicted"] == 1
    chips = len(range(0, 136 - 32 + 1, 32))  # the 136-row GeoTIFF: 4 chips of 32 rows along the track
    assert sorted(p.name for p in (out / "explanations").iterdir()) == [f"scene_chip{k}.png" for k in range(chips)]


def test_an_input_over_the_memory_budget_is_predicted_in_strips_with_the_whole_inputs_values(
    deployables, inputs, tmp_path, capsys, monkeypatch
):
    """A GeoTIFF and a .npy over the budget are read strip by strip, never whole, and give the values, layout
    and georeference the whole input gives (the strips lie on the sliding window's grid)."""
    from domainfm.domains.remote_sensing import strips
    from domainfm.shared import deploy

    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    card = load_deployable(checkpoint).card
    with rasterio.open(inputs["tif"]) as source:
        bands, profile, descriptions = source.read(), source.profile, source.descriptions
    tall = np.concatenate([bands, bands[:, ::-1], bands], axis=1)  # 408 x 120
    channels, height, width = tall.shape
    tif, npy = tmp_path / "in" / "tall.tif", tmp_path / "in" / "tall_array.npy"
    tif.parent.mkdir()
    with rasterio.open(tif, "w", **(profile | {"height": height})) as handle:
        handle.write(tall)
        for index, name in enumerate(descriptions, 1):
            handle.set_band_description(index, name)
    np.save(npy, tall)
    whole = {path.name: _pred(checkpoint, path) for path in (tif, npy)}
    np.testing.assert_array_equal(whole["tall.tif"], whole["tall_array.npy"])
    threshold = float(np.median(whole["tall.tif"]))

    classes, chip = len(card.class_names), int(card.spatial_shape[0])
    monkeypatch.setattr(strips, "MEMORY_BUDGET", strips._row_bytes(channels, classes, width) * 150)
    plan = strips.strip_plan(height, chip, strips.rows_per_strip(channels, classes, width))
    assert len(plan) >= 4 and strips.needs_strips(tall.shape, classes, chip)
    reads, read_region = [], strips.read_region

    def spy(path, card, rows, cols):
        reads.append((path.name, rows, cols))
        return read_region(path, card, rows, cols)

    def whole_read(*args, **kwargs):
        raise AssertionError("an input over the budget was read whole")

    monkeypatch.setattr(strips, "read_region", spy)
    monkeypatch.setattr(deploy, "read_input", whole_read)
    out = tmp_path / "out"
    argv = ["remote-sensing", "predict", "--checkpoint", str(checkpoint), "--input", str(tif.parent),
            "--out", str(out), "--probabilities", "--threshold", str(threshold)]  # fmt: skip
    summary = _run(argv, capsys)
    assert (summary["predicted"], summary["failed"]) == (2, {})
    for name in ("tall.tif", "tall_array.npy"):
        assert [rows for file, rows, _ in reads if file == name] == [(start, stop) for start, stop, _, _ in plan]
        assert {cols for file, _, cols in reads if file == name} == {(0, width)}
        probability = whole[name]
        with rasterio.open(out / "probabilities" / f"{Path(name).stem}.tif") as source:
            np.testing.assert_allclose(source.read(), probability, atol=1e-5)
        with rasterio.open(out / "masks" / f"{Path(name).stem}.tif") as mask:
            values, crs, transform = mask.read(1), mask.crs, mask.transform
            block = geofiles.block_size(height, width)  # laid out as write_cog lays out a map this size
            assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and mask.block_shapes == [(block, block)]
            assert mask.overviews(1) == geofiles.overview_factors(height, width, block) == [2]
            assert mask.descriptions == ("class",) and mask.colormap(1)[1][:3] == tuple(palette(2)[1])
        clear = np.abs(probability[0] - threshold) > 1e-5  # pixels not within rounding of the threshold
        np.testing.assert_array_equal(values[clear], (probability[0] >= threshold)[clear].astype(np.uint8))
        assert clear.mean() > 0.99 and set(np.unique(values)) == {0, 1}
        if name == "tall.tif":
            assert crs == profile["crs"] and transform == profile["transform"]
        else:
            assert crs is None
        with Image.open(out / "overlays" / f"{Path(name).stem}.png") as overlay:
            assert overlay.size == (width, height)
    rows = {row.split(",")[0]: row.split(",") for row in (out / "predictions.csv").read_text().splitlines()[1:]}
    assert rows["tall.tif"][-2:] == [str(len(plan)), "1"]


def test_strips_keep_rows_on_the_window_grid_with_a_margin_of_whole_steps():
    from domainfm.domains.remote_sensing.strips import strip_plan

    plan = strip_plan(1000, 32, 200)  # step 24, margin 48: keep (200 - 96) // 24 * 24 = 96 rows a strip
    assert plan[0] == (0, 144, 0, 96) and plan[1] == (48, 240, 96, 192) and plan[-1] == (912, 1000, 960, 1000)
    kept = [row for _, _, start, stop in plan for row in range(start, stop)]
    assert kept == list(range(1000))
    assert all(start % 24 == 0 and start - read >= min(start, 48) for read, _, start, _ in plan)
