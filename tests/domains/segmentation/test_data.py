"""Pairing images with masks, reading odd image formats, splits, and ingest failures."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.domains.segmentation.data import (
    PairingError,
    find_pairs,
    ingest_pairs,
    read_image,
    read_mask,
)
from domainfm.shared.tiles.schema import stable_split
from domainfm.shared.tiles.store import TileStore


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def square_pair(root: Path, stem: str, mask_name: str | None = None, size: int = 40) -> None:
    image = np.full((size, size + 8), 90, np.uint8)
    image[10:20, 10:20] = 200
    mask = np.zeros((size, size + 8), np.uint8)
    mask[10:20, 10:20] = 255
    write(root / "images" / f"{stem}.png", image)
    write(root / "masks" / (mask_name or f"{stem}.png"), mask)


def test_pairs_by_stem_with_mask_suffixes_and_lists_the_unpaired(tmp_path: Path):
    square_pair(tmp_path, "benign (1)", "benign (1)_mask.png")
    square_pair(tmp_path, "benign (2)", "benign (2)_mask.png")
    write(tmp_path / "images" / "lonely.png", np.zeros((8, 8), np.uint8))
    write(tmp_path / "masks" / "orphan_mask.png", np.zeros((8, 8), np.uint8))
    pairing = find_pairs(tmp_path / "images", tmp_path / "masks")
    assert [image.name for image, _ in pairing.pairs] == ["benign (1).png", "benign (2).png"]
    assert [p.name for p in pairing.images_without_mask] == ["lonely.png"]
    assert [p.name for p in pairing.masks_without_image] == ["orphan_mask.png"]
    assert "lonely.png" in pairing.report() and "orphan_mask.png" in pairing.report()


def test_unpaired_files_are_refused_before_anything_is_written(tmp_path: Path):
    square_pair(tmp_path, "a")
    write(tmp_path / "images" / "b.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(PairingError, match=r"b\.png"):
        ingest_pairs(tmp_path / "images", tmp_path / "masks", tmp_path / "store.zarr", 32, progress=False)
    assert not (tmp_path / "store.zarr").exists()
    summary, _ = ingest_pairs(
        tmp_path / "images", tmp_path / "masks", tmp_path / "store.zarr", 32, allow_unpaired=True, progress=False
    )
    store = TileStore(tmp_path / "store.zarr")
    assert summary.ok and len(store) == 1
    assert store.attrs["unpaired"]["images_without_mask"] == [str(tmp_path / "images" / "b.png")]


def test_ingested_mask_lines_up_with_the_resized_image(tmp_path: Path):
    square_pair(tmp_path, "case")
    ingest_pairs(tmp_path / "images", tmp_path / "masks", tmp_path / "s.zarr", 32, progress=False)
    store = TileStore(tmp_path / "s.zarr")
    tile, mask = store.tiles[0, 0], store.companion("mask")[0, 0]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert tile[mask == 1].mean() > 180 and tile[mask == 0].mean() < 110  # bright square under the mask
    assert store.companion("source_shape")[0].tolist() == [40, 48]
    assert store.index["label"][0] == 1


def test_sixteen_bit_greyscale_png_and_tiff_and_label_masks(tmp_path: Path):
    image = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    for suffix in (".png", ".tif"):
        rgb = read_image(write(tmp_path / f"img16{suffix}", image))
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and np.all(rgb[..., 0] == rgb[..., 2])
    labels = np.zeros((8, 8), np.uint8)
    labels[:2], labels[2:4] = 1, 2
    for suffix in (".png", ".tiff"):
        mask_path = write(tmp_path / f"labels{suffix}", labels)
        assert read_mask(mask_path).sum() == 32
        assert read_mask(mask_path, foreground=[2]).sum() == 16


def test_splits_depend_on_the_stem_only():
    splits = [stable_split(f"case_{i}", 0.15, 0.15) for i in range(2000)]
    counts = np.bincount(splits, minlength=3) / len(splits)
    assert abs(counts[0] - 0.7) < 0.04 and abs(counts[1] - 0.15) < 0.03 and abs(counts[2] - 0.15) < 0.03
    assert splits == [stable_split(f"case_{i}", 0.15, 0.15) for i in range(2000)]


def test_a_corrupt_image_fails_by_name_and_the_others_are_ingested(tmp_path: Path):
    square_pair(tmp_path, "good")
    square_pair(tmp_path, "bad")
    (tmp_path / "images" / "bad.png").write_bytes(b"\x89PNG truncated")
    summary, _ = ingest_pairs(tmp_path / "images", tmp_path / "masks", tmp_path / "s.zarr", 32, progress=False)
    assert not summary.ok
    assert list(summary.failed) == [str(tmp_path / "images" / "bad.png")]
    assert "bad.png" in summary.failed[str(tmp_path / "images" / "bad.png")]
    assert str(tmp_path / "images" / "good.png") in summary.done
