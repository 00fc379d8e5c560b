"""`segmentation eval` also scores at each image's own size, exactly as the deployed model returns masks."""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from domainfm.cli import main


def _disk_set(root: Path) -> tuple[Path, Path]:
    """Bright disks on dark noise, images of several non-square sizes; the mask is the disk."""
    rng = np.random.default_rng(3)
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(12):
        height, width = 30 + 7 * (i % 4), 26 + 9 * (i % 3)
        yy, xx = np.mgrid[:height, :width]
        radius = min(height, width) * rng.uniform(0.2, 0.35)
        disk = (yy - height * rng.uniform(0.35, 0.65)) ** 2 + (xx - width * rng.uniform(0.35, 0.65)) ** 2 < radius**2
        image = np.clip(rng.normal(50, 20, (height, width)) + 150 * disk, 0, 255).astype(np.uint8)
        Image.fromarray(np.repeat(image[..., None], 3, 2)).save(images / f"case_{i:02d}.png")
        Image.fromarray(disk.astype(np.uint8) * 255).save(masks / f"case_{i:02d}.png")
    return images, masks


def test_native_scores_are_the_deployed_models_dice(tmp_path: Path, capsys):
    from domainfm.domains.segmentation.data import read_mask
    from domainfm.domains.segmentation.metrics import dice_iou
    from domainfm.shared.deploy import load_deployable, predict, read_input
    from domainfm.shared.tiles.store import TileStore

    images, masks = _disk_set(tmp_path / "data")
    store = tmp_path / "store.zarr"
    assert main(["segmentation", "ingest", "--images", str(images), "--masks", str(masks), "--out", str(store),
                 "--size", "16", "--workers", "1"]) == 0  # fmt: skip
    out = tmp_path / "unet"
    assert main(["segmentation", "train", "--store", str(store), "--out", str(out), "--model", "unet", "--epochs",
                 "2", "--device", "cpu"]) == 0  # fmt: skip
    checkpoint = out / "model.safetensors"
    capsys.readouterr()
    assert main(["segmentation", "eval", "--checkpoint", str(checkpoint), "--store", str(store), "--split", "all",
                 "--device", "cpu", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    native = result["native"]
    # The same number, computed from what a user gets: predict on each raw file, thresholded, against its mask.
    deployable = load_deployable(checkpoint)
    tiles = TileStore(store)
    dice, foreground = [], 0
    for source in tiles.sources:
        raw = read_input(source["path"], deployable.card)
        prediction = predict(deployable, raw) > 0.5
        mask = torch.from_numpy(read_mask(Path(source["meta"]["mask"])))[None, None]
        assert prediction.shape == mask.shape  # the deployed model answers at the image's own size
        dice.append(float(dice_iou(prediction, mask)[0][0]))
        foreground += int(prediction.sum())
    assert foreground > 0, "the check needs a model that predicts some foreground"
    assert native["dice_mean"] == pytest_approx(float(np.mean(dice)))
    assert native["dice_mean"] != result["dice_mean"]  # the store-size protocol is another number
    assert result["images"] == 12 and len({tuple(Image.open(p).size) for p in images.iterdir()}) > 3

    # a mask file that is gone after ingest: reported, not a traceback, and the store-size scores remain
    Path(tiles.sources[0]["meta"]["mask"]).unlink()
    assert main(["segmentation", "eval", "--checkpoint", str(checkpoint), "--store", str(store), "--split", "all",
                 "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "not scored at native size: mask file of" in printed and "case_00.png" in printed


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, abs=1e-9)
