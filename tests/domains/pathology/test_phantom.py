"""Phantom Aperio slides: OpenSlide reads them as Aperio, pixels match the truth, truth helpers are exact."""

from pathlib import Path

import numpy as np
import pytest

from domainfm.studies.pathology import phantom
from domainfm.studies.pathology.phantom import (
    CLASS_NAMES,
    TRUTH_SUFFIX,
    read_truth,
    truth_class_fractions,
    truth_tissue_grid,
    write_phantom_slide,
)

openslide = pytest.importorskip("openslide")


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> phantom.PhantomSlide:
    return write_phantom_slide(tmp_path_factory.mktemp("wsi") / "slide.svs", 2048, seed=1)


def _read(path: Path, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(osr.read_region((x, y), level, size))[..., :3].astype(np.float64)


def _rendered(truth: dict, seed: int, mpp: float | None) -> np.ndarray:
    """Level 0 as the generator renders it (before JPEG)."""
    width, height = truth["size"]
    lut = phantom.pack_textures(phantom.class_textures(seed, mpp))
    band = phantom.render_band(lut, truth["regions"], 0, height, width, truth["truth_downsample"])
    return phantom.rgb(band).astype(np.float64)


def _saturation(pixels: np.ndarray) -> float:
    pixels = pixels.reshape(-1, 3).astype(np.float64)
    top = pixels.max(axis=1)
    return float(((top - pixels.min(axis=1)) / np.maximum(top, 1)).mean())


def test_openslide_reads_it_as_aperio(slide: phantom.PhantomSlide) -> None:
    assert slide.size == (2048, 2048)
    assert slide.downsamples == [1, 4]
    assert slide.truth_path == slide.path.with_name(slide.path.name + TRUTH_SUFFIX)
    with openslide.OpenSlide(str(slide.path)) as osr:
        props = osr.properties
        assert props["openslide.vendor"] == "aperio"
        assert float(props["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(props["openslide.mpp-y"]) == pytest.approx(0.25)
        assert float(props["openslide.objective-power"]) == 40
        assert osr.level_count == 2
        assert osr.level_dimensions == ((2048, 2048), (512, 512))
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
        assert "thumbnail" in osr.associated_images


@pytest.mark.parametrize(("mpp", "power"), [(0.5, 20), (1.0, 10)])
def test_objective_power_follows_mpp(tmp_path: Path, mpp: float, power: int) -> None:
    written = write_phantom_slide(tmp_path / "s.svs", 1024, mpp=mpp)
    assert written.downsamples == [1]  # level 1 would be 256 px: under the 512-px floor
    with openslide.OpenSlide(str(written.path)) as osr:
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(mpp)
        assert float(osr.properties["openslide.objective-power"]) == power


def test_slide_without_mpp(tmp_path: Path) -> None:
    written = write_phantom_slide(tmp_path / "nompp.svs", 1024, mpp=None)
    assert written.mpp is None
    with openslide.OpenSlide(str(written.path)) as osr:
        assert osr.properties["openslide.vendor"] == "aperio"
        assert "openslide.mpp-x" not in osr.properties
        assert "openslide.objective-power" not in osr.properties
    assert np.isnan(read_truth(written.path)["mpp"])


def test_truth_file(slide: phantom.PhantomSlide) -> None:
    truth = read_truth(slide.path)
    assert set(truth) == {"regions", "truth_downsample", "class_names", "mpp", "size", "slide_label", "seed"}
    ds = truth["truth_downsample"]
    assert truth["regions"].dtype == np.uint8 and truth["regions"].shape == (2048 // ds, 2048 // ds)
    assert truth["class_names"] == CLASS_NAMES
    assert truth["size"] == (2048, 2048) and truth["mpp"] == pytest.approx(0.25)
    assert truth["slide_label"] == 1 and truth["seed"] == 1
    assert np.array_equal(read_truth(slide.truth_path)["regions"], truth["regions"])
    shares = np.bincount(truth["regions"].ravel(), minlength=len(CLASS_NAMES)) / truth["regions"].size
    assert 0.4 <= 1 - shares[0] <= 0.6
    assert (shares[1:] > 0.02).all()  # every tissue class present


def test_level0_pixels_are_the_rendered_textures(slide: phantom.PhantomSlide) -> None:
    truth = read_truth(slide.path)
    read = _read(slide.path, 0, 0, 0, slide.size)
    assert np.abs(read - _rendered(truth, 1, 0.25)).mean() < 4  # only JPEG error


def test_tiles_inside_a_class_look_like_it(slide: phantom.PhantomSlide) -> None:
    truth = read_truth(slide.path)
    textures = phantom.class_textures(1, 0.25).reshape(len(CLASS_NAMES), -1, 3).mean(axis=1)
    means = {}
    for origin in truth_tissue_grid(truth, 192, 32, 0.0):
        fractions = truth_class_fractions(truth, *origin, 192, 192)
        label = int(fractions.argmax())
        if fractions[label] > 1 - 1e-9 and label not in means:
            means[label] = _read(slide.path, *origin, 0, (192, 192)).reshape(-1, 3).mean(axis=0)
    assert set(means) == set(range(len(CLASS_NAMES)))
    for label, mean in means.items():
        assert np.abs(mean - textures[label]).max() < 15, CLASS_NAMES[label]
    labels = sorted(means)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert np.abs(means[a] - means[b]).sum() > 20, (CLASS_NAMES[a], CLASS_NAMES[b])


def test_level1_is_level0_downsampled(slide: phantom.PhantomSlide) -> None:
    level0 = _read(slide.path, 512, 768, 0, (1024, 1024))
    level1 = _read(slide.path, 512, 768, 1, (256, 256))
    averaged = level0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(averaged - level1).mean() < 4


def test_background_has_low_saturation_and_fat_counts_as_tissue() -> None:
    textures = phantom.class_textures(0, 0.25)
    glass = _saturation(textures[0])
    assert glass < 0.05
    for label in range(1, len(CLASS_NAMES)):
        assert _saturation(textures[label][:224, :224]) > 3 * glass, CLASS_NAMES[label]


def test_truth_class_fractions_by_hand() -> None:
    truth = {"regions": np.array([[0, 1], [2, 3]], np.uint8), "truth_downsample": 4, "size": (8, 8)}
    np.testing.assert_allclose(truth_class_fractions(truth, 0, 0, 4, 4), [1, 0, 0, 0, 0])
    np.testing.assert_allclose(truth_class_fractions(truth, 2, 2, 4, 4), [0.25, 0.25, 0.25, 0.25, 0])
    np.testing.assert_allclose(truth_class_fractions(truth, 3, 0, 2, 8), [0.25, 0.25, 0.25, 0.25, 0])
    np.testing.assert_allclose(truth_class_fractions(truth, 1, 5, 2, 2), [0, 0, 1, 0, 0])
    # outside the slide counts as background
    np.testing.assert_allclose(truth_class_fractions(truth, 6, 6, 4, 4), [0.75, 0, 0, 0.25, 0])
    np.testing.assert_allclose(truth_class_fractions(truth, 4.5, 0, 1.5, 2), [0, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="empty"):
        truth_class_fractions(truth, 0, 0, 0, 4)


def test_truth_tissue_grid_by_hand() -> None:
    truth = {"regions": np.array([[0, 1], [2, 3]], np.uint8), "truth_downsample": 4, "size": (8, 8)}
    # origins 0, 2, 4 per axis; tissue fractions row-major: [0, .5, 1], [.5, .75, 1], [1, 1, 1]
    grid = truth_tissue_grid(truth, 4, 2, 0.5)
    assert grid.dtype == np.int64
    expected = [[2, 0], [4, 0], [0, 2], [2, 2], [4, 2], [0, 4], [2, 4], [4, 4]]
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(truth_tissue_grid(truth, 4, 2, 0.8), [[4, 0], [4, 2], [0, 4], [2, 4], [4, 4]])
    assert len(truth_tissue_grid(truth, 4, 2, 0.0)) == 9
    assert truth_tissue_grid(truth, 9, 2, 0.0).shape == (0, 2)  # no tile fits


def test_truth_tissue_grid_agrees_with_class_fractions(slide: phantom.PhantomSlide) -> None:
    truth = read_truth(slide.path)
    tile, step = 300, 250.5
    everything = truth_tissue_grid(truth, tile, step, 0.0)
    xs = np.unique(everything[:, 0])
    assert xs[0] == 0 and xs[-1] + tile <= 2048 and xs[-1] + step + tile > 2048
    tissue = np.array([1 - truth_class_fractions(truth, x, y, tile, tile)[0] for x, y in everything])
    kept = truth_tissue_grid(truth, tile, step, 0.3)
    np.testing.assert_array_equal(kept, everything[tissue >= 0.3 - 1e-9])
    assert 0 < len(kept) < len(everything)


def test_no_tumor(tmp_path: Path) -> None:
    written = write_phantom_slide(tmp_path / "benign.svs", 1024, seed=3, tumor=False)
    truth = read_truth(written.path)
    assert truth["slide_label"] == 0
    assert not (truth["regions"] == 1).any()
    assert set(np.unique(truth["regions"])) == {0, 2, 3, 4}


def test_size_not_a_multiple_of_the_tile(tmp_path: Path) -> None:
    written = write_phantom_slide(tmp_path / "odd.svs", (1300, 2100), seed=2, mpp=0.5)
    assert written.size == (1300, 2100) and written.downsamples == [1, 4]
    truth = read_truth(written.path)
    assert truth["regions"].shape == (263, 163)  # ceil(2100 / 8), ceil(1300 / 8)
    with openslide.OpenSlide(str(written.path)) as osr:
        assert osr.level_dimensions == ((1300, 2100), (325, 525))
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
    corner = _read(written.path, 1300 - 300, 2100 - 300, 0, (300, 300))
    rendered = _rendered(truth, 2, 0.5)[-300:, -300:]
    assert np.abs(corner - rendered).mean() < 4


def test_same_seed_same_slide_other_seed_other_slide() -> None:
    a, ds = phantom.draw_regions(5, (1024, 768))
    b, _ = phantom.draw_regions(5, (1024, 768))
    c, _ = phantom.draw_regions(6, (1024, 768))
    assert ds == 8 and a.shape == (96, 128)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("tumor", [True, False])
def test_region_shares_over_seeds(tumor: bool) -> None:
    for seed in range(8):
        regions, _ = phantom.draw_regions(seed, (2048, 1536), tumor)
        counts = np.bincount(regions.ravel(), minlength=len(CLASS_NAMES))
        tissue = counts[1:].sum()
        assert 0.4 <= tissue / regions.size <= 0.6
        shares = counts[1:] / tissue
        present = shares[0 if tumor else 1 :]
        assert (present >= 0.05).all(), (seed, shares)
        assert (0.15 <= shares[0] <= 0.5) if tumor else shares[0] == 0
        edge = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
        assert not edge.any()  # tissue keeps off the slide's edge


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "slide.svs"
    first = write_phantom_slide(out, 1024, seed=0)
    before = out.read_bytes(), first.truth_path.read_bytes()
    render, calls = phantom.render_band, []

    def failing(*args: object) -> np.ndarray:
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed mid-way")
        return render(*args)

    monkeypatch.setattr(phantom, "render_band", failing)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        write_phantom_slide(out, 1024, seed=9)  # overwriting fails: the old slide stays whole
    assert (out.read_bytes(), first.truth_path.read_bytes()) == before
    fresh = tmp_path / "fresh.svs"
    calls.clear()
    with pytest.raises(RuntimeError):
        write_phantom_slide(fresh, 1024)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.svs", "slide.svs" + TRUTH_SUFFIX]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 255}, "at least 256"),
        ({"size": (1024, 200)}, "at least 256"),
        ({"mpp": 0.0}, "mpp"),
        ({"mpp": -0.5}, "mpp"),
        ({"tile": 100}, "multiple of 16"),
        ({"quality": 0}, "quality"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_phantom_slide(tmp_path / "bad.svs", **{"size": 512, **kwargs})
    assert not list(tmp_path.iterdir())
