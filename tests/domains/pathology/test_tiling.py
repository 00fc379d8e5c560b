"""Slide tiling on phantom slides: tissue grid, coordinates, scales, missing mpp, corrupt slides, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.pathology.slides import SlideError, resolve_mpp
from domainfm.domains.pathology.tiling import TilingParams, tile_slides
from domainfm.shared.tiles import TileStore
from domainfm.shared.tiles.ingest import STAGING
from domainfm.shared.tiles.schema import INDEX_COLUMNS
from domainfm.studies.pathology.phantom import read_truth, truth_class_fractions, truth_tissue_grid, write_phantom_slide

TILE = 64  # small tiles keep the grid large (and the 5 % tolerance meaningful) on small slides


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_slide(tmp_path_factory.mktemp("slides") / "a.svs", 3072, seed=1, mpp=0.25).path


@pytest.fixture(scope="module")
def store(slide: Path, tmp_path_factory: pytest.TempPathFactory) -> TileStore:
    out = tmp_path_factory.mktemp("stores") / "tiles.zarr"
    params = TilingParams(mpps=(0.5, 1.0), tile_px=TILE, truth_labels=True)
    summary = tile_slides([slide], out, params, progress=False)
    assert summary.ok, summary.report()
    return TileStore(out)


def _at(store: TileStore, mpp: float) -> np.ndarray:
    return np.flatnonzero(np.isclose(store.index["scale"], mpp))


def test_tile_count_matches_the_ground_truth_tissue_grid(store: TileStore, slide: Path):
    truth = read_truth(slide)
    for mpp in (0.5, 1.0):
        side = TILE * mpp / 0.25
        expected = len(truth_tissue_grid(truth, side, side, 0.5))
        got = len(_at(store, mpp))
        assert expected > 30
        assert abs(got - expected) <= 0.05 * expected, (mpp, got, expected)
    meta = store.sources[0]["meta"]
    assert meta["mpp"] == pytest.approx(0.25) and meta["mpp_source"] == "openslide.mpp-x"
    assert meta["level0_width"] == 3072 and (store.path / "qc" / "a.svs.png").is_file()


def test_coordinates_map_back_to_the_slide_and_its_regions(store: TileStore, slide: Path):
    import openslide

    truth = read_truth(slide)
    ids = _at(store, 0.5)
    handle = openslide.OpenSlide(str(slide))
    side = int(TILE * 0.5 / 0.25)
    for i in ids[:: max(1, len(ids) // 12)]:
        x, y = int(store.index["x"][i]), int(store.index["y"][i])
        region = handle.read_region((x, y), 0, (side, side)).convert("RGB").resize((TILE, TILE), Image.BILINEAR)
        stored = store.tiles[int(i)].transpose(1, 2, 0).astype(np.float64)
        assert np.abs(stored - np.asarray(region, np.float64)).mean() < 3.0, (x, y)
    fractions = np.array([truth_class_fractions(truth, x, y, side, side) for x, y in zip(
        store.index["x"][ids], store.index["y"][ids], strict=True)])  # fmt: skip
    assert np.mean(1 - fractions[:, 0] >= 0.3) > 0.97  # kept tiles lie on tissue
    np.testing.assert_array_equal(store.index["label"][ids], 1 + fractions[:, 1:].argmax(1))  # read at the same spot


def test_the_same_spot_matches_across_scales(store: TileStore):
    """A 1.0-mpp tile equals the 2x2 mosaic of 0.5-mpp tiles at its spot, shrunk: far closer than other spots."""
    coarse, fine = _at(store, 1.0), _at(store, 0.5)
    position = {(int(store.index["x"][i]), int(store.index["y"][i])): int(i) for i in fine}
    step = int(TILE * 0.5 / 0.25)
    pairs = []
    for i in coarse:
        x, y = int(store.index["x"][i]), int(store.index["y"][i])
        quarter = [position.get((x + dx, y + dy)) for dy in (0, step) for dx in (0, step)]
        if None in quarter:
            continue
        rows = [np.concatenate([store.tiles[quarter[r * 2 + c]] for c in range(2)], axis=2) for r in range(2)]
        mosaic = np.concatenate(rows, axis=1).transpose(1, 2, 0)
        shrunk = np.asarray(Image.fromarray(mosaic).resize((TILE, TILE), Image.BILINEAR), np.float64)
        pairs.append((store.tiles[int(i)].transpose(1, 2, 0).astype(np.float64), shrunk))
    assert len(pairs) >= 5
    for k, (tile, shrunk) in enumerate(pairs):
        same = np.abs(shrunk - tile).mean()
        others = [np.abs(other - tile).mean() for j, (_, other) in enumerate(pairs) if j != k]
        assert same < 10.0 and same < 0.5 * np.median(others), (k, same, np.median(others))


def test_a_slide_without_mpp_fails_clearly_and_works_with_assume_mpp(tmp_path: Path, capsys):
    bare = write_phantom_slide(tmp_path / "bare.svs", 1024, seed=2, mpp=None).path
    out = tmp_path / "s.zarr"
    assert main(["pathology", "tile", str(bare), "--out", str(out), "--tile-size", "64"]) == 1
    report = capsys.readouterr().out
    assert "bare.svs" in report and "--assume-mpp" in report and "microns per pixel" in report
    fixed = ["pathology", "tile", str(bare), "--out", str(out), "--tile-size", "64", "--assume-mpp", "0.25"]
    assert main(fixed) == 2  # other options than the store was started with: refused, listed, never mixed
    assert "option params.assume_mpp: null -> 0.25" in capsys.readouterr().err
    assert main([*fixed, "--overwrite"]) == 0
    meta = TileStore(out).sources[0]["meta"]
    assert meta["mpp"] == 0.25 and meta["mpp_source"] == "--assume-mpp"
    with pytest.raises(SlideError, match="objective power"):
        resolve_mpp({"openslide.objective-power": "20"}, None, "x.svs")


def test_a_corrupt_slide_fails_by_name_while_the_others_are_tiled(tmp_path: Path, slide: Path, capsys):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(slide.read_bytes()[:5000])
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    good = write_phantom_slide(tmp_path / "good.svs", 1024, seed=3, mpp=0.5).path
    out = tmp_path / "s.zarr"
    status = main(["pathology", "tile", str(truncated), str(good), str(text), "--out", str(out), "--tile-size", "64"])
    assert status == 1
    report = capsys.readouterr().out
    assert "FAILED" in report and "truncated.svs" in report and "notes.svs" in report
    store = TileStore(out, allow_incomplete=True)
    done = [s for s in store.sources if s["status"] == "done"]
    assert [Path(s["path"]).name for s in done] == ["good.svs"] and done[0]["n_tiles"] == len(store) > 0


def _tile_command(slides: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "domainfm", "pathology", "tile", *map(str, slides), "--out", str(out),
            "--tile-size", "64", "--mpp", "0.5", "--mpp", "1.0", "--workers", "1"]  # fmt: skip


def test_a_qc_picture_that_cannot_be_drawn_fails_its_slide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The QC picture is drawn while the tiles are read; its error still fails the slide, by name."""
    import domainfm.domains.pathology.tiling as tiling

    def broken(*args, **kwargs):
        raise OSError("disk full while drawing")

    monkeypatch.setattr(tiling, "write_qc_png", broken)
    slide = write_phantom_slide(tmp_path / "b.svs", 1024, seed=4, mpp=0.5).path
    summary = tile_slides([slide], tmp_path / "s.zarr", TilingParams(tile_px=64), progress=False)
    assert not summary.ok and "disk full while drawing" in summary.failed[str(slide)]


@pytest.mark.parametrize("point", ["batch:4", "source:1"])
def test_a_killed_tiling_resumes_to_an_identical_store(tmp_path: Path, slide: Path, point: str):
    second = write_phantom_slide(tmp_path / "b.svs", 1536, seed=4, mpp=0.5).path
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    assert subprocess.run(_tile_command([slide, second], clean), capture_output=True).returncode == 0
    env = {**os.environ, "DOMAINFM_TEST_KILL_AT": point}
    run = subprocess.run(_tile_command([slide, second], killed), capture_output=True, env=env)
    assert run.returncode == -signal.SIGKILL
    resumed = subprocess.run(_tile_command([slide, second], killed), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = TileStore(clean), TileStore(killed)
    np.testing.assert_array_equal(a.tiles[:], b.tiles[:])
    for name in INDEX_COLUMNS:
        np.testing.assert_array_equal(a.index[name], b.index[name], err_msg=name)
    assert a.stats == b.stats and not (b.path / STAGING).exists()
    assert [s["meta"] for s in a.sources] == [s["meta"] for s in b.sources]


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ({"openslide.mpp-x": "0.2465", "aperio.MPP": "0.5"}, (0.2465, "openslide.mpp-x")),
        ({"aperio.MPP": "0.499"}, (0.499, "aperio.MPP")),
        ({"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}, (0.25, "tiff.XResolution")),
        ({"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}, (0.5, "tiff.XResolution")),
        ({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}, (0.3, "--assume-mpp")),
    ],
)
def test_mpp_resolution_order(properties: dict, expected: tuple):
    mpp, source = resolve_mpp(properties, 0.3, "x.tif")
    assert mpp == pytest.approx(expected[0]) and source == expected[1]


def test_a_generic_tiled_tiff_with_resolution_tags_tiles(tmp_path: Path):
    import tifffile

    rng = np.random.default_rng(0)
    image = np.full((1024, 1024, 3), 240, np.uint8)
    image[256:768, 256:768] = rng.integers(80, 200, (512, 512, 3), dtype=np.uint8)
    path = tmp_path / "generic.tif"
    with tifffile.TiffWriter(path) as tiff:  # 0.5 um/px as TIFF resolution: 20000 px per cm
        tiff.write(image, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER", metadata=None)
    summary = tile_slides([path], tmp_path / "s.zarr", TilingParams(tile_px=64), progress=False)
    assert summary.ok, summary.report()
    store = TileStore(tmp_path / "s.zarr")
    assert store.sources[0]["meta"]["mpp"] == pytest.approx(0.5)
    x, y = store.index["x"], store.index["y"]
    assert len(store) == 64 and x.min() == 256 and y.max() == 704  # exactly the 8 x 8 tiles of the square


def test_a_slide_of_glass_only_gives_no_tiles_and_no_error(tmp_path: Path):
    import tifffile

    path = tmp_path / "empty.tif"
    glass = np.full((768, 768, 3), 242, np.uint8) + np.random.default_rng(0).integers(0, 3, (768, 768, 3)).astype(
        np.uint8
    )
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(glass, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER", metadata=None)
    summary = tile_slides([path], tmp_path / "s.zarr", TilingParams(tile_px=64), progress=False)
    assert summary.ok and summary.n_tiles == 0
    assert TileStore(tmp_path / "s.zarr").sources[0]["meta"]["tiles_per_mpp"] == {"0.5": 0}


def test_read_batches_are_bounded_in_bytes_whatever_the_tile_size():
    from domainfm.domains.pathology.tiling import READ_BATCH_BYTES, read_batch

    assert read_batch(TilingParams(tile_px=224)) == 128
    for tile_px in (448, 1024, 2048):
        batch = read_batch(TilingParams(tile_px=tile_px))
        assert 8 <= batch < 128 and (batch * 3 * tile_px**2 <= READ_BATCH_BYTES or batch == 8)
    assert read_batch(TilingParams(tile_px=1024, batch=3)) == 3
    with pytest.raises(ValueError, match="batch must be at least 1"):
        TilingParams(batch=0)
