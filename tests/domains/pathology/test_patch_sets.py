"""Patch datasets and plain images: class folders, image+mask pairs, all-tissue images, upsampling refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.pathology.tissue import tissue_mask
from domainfm.shared.tiles import TileStore


def _tissue(seed: int, size: int = 128) -> np.ndarray:
    """An all-tissue H&E-like patch: pale pink stroma with dark purple nuclei blobs (no glass)."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (225, 150, 200)
    yy, xx = np.mgrid[:size, :size]
    for cx, cy in rng.integers(0, size, (12, 2)):
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < 100] = (90, 40, 140)
    return image


def test_an_all_tissue_image_is_all_tissue_and_glass_still_is_not():
    patch = _tissue(0, 256)
    assert tissue_mask(patch, 2.0).all()  # Otsu alone would split the nuclei from the stroma
    slide = np.full((256, 256, 3), 242, np.uint8)  # glass around a square of the same tissue
    slide[64:192, 64:192] = patch[64:192, 64:192]
    mask = tissue_mask(slide, 2.0)
    assert mask[70:186, 70:186].all() and not mask[:50].any() and not mask[:, :50].any()


@pytest.fixture
def patch_set(tmp_path: Path) -> Path:
    root = tmp_path / "patches"
    for c, name in enumerate(("stroma", "tumor")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_tissue(10 * c + i)).save(root / name / f"{name}{i}.{'png' if i else 'jpg'}")
    return root


def test_a_patch_set_with_class_folders_tiles_every_patch_with_its_class(patch_set: Path, tmp_path: Path, capsys):
    out = tmp_path / "p.zarr"
    assert main(["pathology", "tile", str(patch_set), "--out", str(out), "--tile_size", "64", "--assume-mpp", "0.5",
                 "--mpp", "0.5"]) == 0  # fmt: skip
    store = TileStore(out)
    assert store.spec.label_names == ["stroma", "tumor"]
    assert len(store) == 4 * 4  # every 64 px tile of four all-tissue 128 px patches is kept
    names = [Path(s["path"]).parent.name for s in store.sources]
    expected = [store.spec.label_names.index(names[s]) for s in store.index["source"]]
    assert store.index["label"].tolist() == expected
    assert store.sources[0]["meta"]["mpp_source"] == "--assume-mpp" and store.sources[0]["meta"]["vendor"] == "image"
    assert not list((out / "qc").glob("*.png"))  # a patch is its own picture: no QC drawing per patch


def test_images_without_assume_mpp_fail_by_name(patch_set: Path, tmp_path: Path, capsys):
    image = next(patch_set.rglob("*.png"))
    assert main(["pathology", "tile", str(image), "--out", str(tmp_path / "n.zarr"), "--tile_size", "64"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {image}" in out and "--assume-mpp" in out


def test_image_and_mask_pairs_label_tiles_by_majority(tmp_path: Path):
    root = tmp_path / "pairs"
    (root / "masks").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(_tissue(i)).save(root / f"img{i}.png")
        mask = np.full((128, 128), 1, np.uint8)
        mask[:, 64:] = 3
        Image.fromarray(mask).save(root / "masks" / f"img{i}.png")
    out = tmp_path / "m.zarr"
    assert main(["pathology", "tile", str(root), "--out", str(out), "--tile_size", "64", "--assume-mpp", "0.5",
                 "--mpp", "0.5"]) == 0  # fmt: skip
    store = TileStore(out)
    assert store.spec.label_names == ["1", "3"] and len(store) == 8  # the masks are not tiled as images
    assert (store.index["label"] == (store.index["x"] >= 64)).all()


def test_tiles_ingest_of_an_image_points_to_pathology_tile(tmp_path: Path, capsys):
    image = tmp_path / "x.jpg"
    Image.fromarray(_tissue(0)).save(image)
    assert main(["tiles", "ingest", str(image), "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err
    assert "x.jpg is an image, not a .npy tile array" in err and "pathology tile" in err
    assert len(err.strip().splitlines()) == 1


def test_a_finer_mpp_than_the_scan_is_refused_unless_allowed(tmp_path: Path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(_tissue(0)).save(image)
    args = ["pathology", "tile", str(image), "--tile_size", "64", "--assume-mpp", "0.5", "--mpp", "0.25"]
    assert main([*args, "--out", str(tmp_path / "a.zarr")]) == 1
    assert "--mpp 0.25 is finer than the scan's 0.5 mpp (--assume-mpp)" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b.zarr"), "--allow_upsample"]) == 0
    assert "x.png: tiles at [0.25] mpp are upsampled from the scan's 0.5 mpp" in capsys.readouterr().err
    assert len(TileStore(tmp_path / "b.zarr")) == 16  # 128 px at 0.5 mpp is 256 px at 0.25: 4 x 4 tiles
