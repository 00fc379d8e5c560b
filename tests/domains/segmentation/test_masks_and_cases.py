"""Segmentation ingest of real layouts: JPEG masks thresholded and named when not clean, label maps exact,
unsupported files named, splits per case (pattern or CSV), and training refused without a val split."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.segmentation.masks import read_mask
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore


def jpeg_pair(root: Path, stem: str, size: int = 48) -> None:
    """An image and a JPEG mask of a 16 x 16 square (JPEG leaves ringing values around 0 and 255)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.full((size, size), 80, np.uint8)
    image[13:29, 13:29] = 200
    mask = np.zeros((size, size), np.uint8)
    mask[13:29, 13:29] = 255  # edges inside 8 x 8 JPEG blocks: ringing
    Image.fromarray(image).save(root / "images" / f"{stem}.png")
    Image.fromarray(mask).save(root / "masks" / f"{stem}_mask.jpg", quality=60)


def test_a_jpeg_mask_is_thresholded_at_127_and_named_as_not_clean(tmp_path: Path):
    jpeg_pair(tmp_path, "case")
    path = tmp_path / "masks" / "case_mask.jpg"
    raw = np.asarray(Image.open(path))
    assert ((raw > 0) & (raw < 255)).sum() > 0  # the noise the old "any nonzero" rule turned into foreground
    mask, note = read_mask(path)
    assert mask.sum() == 16 * 16 and mask[13:29, 13:29].all()
    assert note is not None and str(path) in note and "--mask_threshold" in note
    assert (raw > 0).sum() > mask.sum()  # nonzero would have added speckle


def test_label_maps_and_palette_masks_are_read_exactly(tmp_path: Path):
    labels = np.zeros((20, 20), np.uint8)
    labels[:5], labels[5:8] = 1, 2
    Image.fromarray(labels).save(tmp_path / "labels.png")
    mask, note = read_mask(tmp_path / "labels.png")
    assert mask.sum() == 8 * 20 and note is None
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255, 10, 10, 10] + [0] * 759)  # label 2 drawn nearly black
    palette.save(tmp_path / "palette.png")
    mask, note = read_mask(tmp_path / "palette.png")
    assert mask.sum() == 8 * 20 and note is None  # indices, not the grey of their colours
    assert read_mask(tmp_path / "palette.png", foreground=[2])[0].sum() == 3 * 20


def test_ingest_warns_by_name_and_stores_the_thresholded_mask(tmp_path: Path, capsys):
    for i in range(3):
        jpeg_pair(tmp_path, f"case{i}")
    out = tmp_path / "pairs.zarr"
    code = main(["segmentation", "ingest", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--out", str(out), "--size", "48"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'masks' / 'case0_mask.jpg'}: mask is not clean" in err
    store = TileStore(out)
    assert (np.asarray(store.companion("mask")[:]).reshape(3, -1).sum(axis=1) == 256).all()
    assert [s["meta"]["group"] for s in store.sources] == ["case0", "case1", "case2"]


def test_volumes_and_unknown_files_are_named_not_reported_as_missing_masks(tmp_path: Path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "ct.nrrd").write_bytes(b"NRRD0004\n")
    (tmp_path / "masks" / "ct.nrrd").write_bytes(b"NRRD0004\n")
    code = main(["segmentation", "ingest", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "v.zarr")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "2 file(s) skipped" in err and "ct.nrrd: .nrrd volumes/arrays are not read" in err
    assert "has a mask" not in err


def test_a_multi_page_tiff_is_refused_as_a_3d_stack(tmp_path: Path):
    pages = [Image.fromarray(np.zeros((8, 8), np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ValueError, match=r"stack\.tif: a 3-D stack of 3 pages"):
        read_mask(tmp_path / "stack.tif")


def test_images_of_one_case_share_a_split_and_a_csv_assigns_cases(tmp_path: Path):
    for patient in range(4):
        for view in range(3):
            jpeg_pair(tmp_path, f"patient{patient}_view{view}", size=32)
    args = ["segmentation", "ingest", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    splits = tmp_path / "splits.csv"
    splits.write_text("case,split\npatient0,train\npatient1,train\npatient2,val\npatient3,test\n")
    out = tmp_path / "cases.zarr"
    assert (
        main([*args, "--out", str(out), "--size", "32", "--case_pattern", r"^(patient\d+)_", "--splits", str(splits)])
        == 0
    )
    store = TileStore(out)
    groups = [s["meta"]["group"] for s in store.sources]
    expected = {"patient0": "train", "patient1": "train", "patient2": "val", "patient3": "test"}
    assert store.index["split"].tolist() == [SPLITS[expected[g]] for g in groups] and len(set(groups)) == 4


def test_training_without_a_val_split_is_refused_before_any_epoch(tmp_path: Path, capsys):
    for i in range(3):
        jpeg_pair(tmp_path, f"case{i}", size=32)
    splits = tmp_path / "splits.csv"
    splits.write_text("image,split\ncase0,train\ncase1,train\ncase2,test\n")
    out = tmp_path / "pairs.zarr"
    args = ["segmentation", "ingest", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    assert main([*args, "--out", str(out), "--size", "32", "--splits", str(splits)]) == 0
    assert "split(s) val hold no tiles" in capsys.readouterr().err
    code = main(["segmentation", "train", "--store", str(out), "--out", str(tmp_path / "run"), "--model", "unet",
                 "--epochs", "1", "--device", "cpu"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "segmentation training" in err and "split(s) val hold no tiles (train 2, val 0, test 1)" in err
    assert "Traceback" not in err


def test_a_case_missing_from_the_splits_csv_is_refused_before_writing(tmp_path: Path, capsys):
    for i in range(2):
        jpeg_pair(tmp_path, f"case{i}", size=32)
    splits = tmp_path / "splits.csv"
    splits.write_text("case,split\ncase0,train\n")
    args = ["segmentation", "ingest", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    assert main([*args, "--out", str(tmp_path / "s.zarr"), "--splits", str(splits)]) == 2
    assert "'case1' is not listed" in capsys.readouterr().err and not (tmp_path / "s.zarr").exists()
