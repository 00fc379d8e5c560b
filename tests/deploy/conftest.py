"""One tiny trained downstream checkpoint per deployable kind, and sample input files for each.

Made once per session through the CLI (phantom -> ingest -> train, one or two epochs of tiny models), so
export and explanation tests run on real domainfm checkpoints, not hand-built modules.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.remote_sensing.phantom import write_phantom_splits


def _test_tiles(store: Path, n: int = 2) -> np.ndarray:
    tiles = TileStore(store)
    ids = np.flatnonzero(tiles.index["split"] == SPLITS["test"])
    ids = (ids if len(ids) else np.arange(len(tiles.index["split"])))[:n]  # small phantoms may have no test split
    return np.stack([tiles.tiles[int(i)] for i in ids])


def _write_pictures(tiles: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, tile in enumerate(tiles):
        path = folder / f"input_{i}.png"
        Image.fromarray(tile[0] if tile.shape[0] == 1 else tile.transpose(1, 2, 0)).save(path)
        paths.append(path)
    return paths


def _pathology(root: Path) -> tuple[Path, list[Path]]:
    slides = []
    for i in range(2):
        slide = root / f"s{i}.svs"
        assert main(["pathology", "phantom", "--out", str(slide), "--size", "1024", "--seed", str(i)]) == 0
        slides.append(str(slide))
    splits = root / "splits.csv"
    splits.write_text("slide,split\ns0,train\ns1,test\n")
    store = root / "tiles.zarr"
    assert main(["pathology", "tile", *slides, "--out", str(store), "--mpp", "2.0", "--tile_size", "32",
                 "--truth_labels", "--splits", str(splits), "--workers", "1"]) == 0  # fmt: skip
    out = root / "classifier"
    assert main(["pathology", "train", "--store", str(store), "--out", str(out), "--backbone", "test_vit",
                 "--peft", "dvpt", "--epochs", "1", "--device", "cpu", "--json"]) == 0  # fmt: skip
    return out / "tile_classifier.safetensors", _write_pictures(_test_tiles(store), root / "inputs")


def _pathology_instances(root: Path) -> tuple[Path, list[Path]]:
    phantom = root / "phantom"
    assert main(["pathology", "phantom-cells", "--out", str(phantom), "--images", "2", "--size", "64"]) == 0
    store = root / "nuclei.zarr"
    assert main(["pathology", "instances-tile", "--images", str(phantom / "images"), "--labels",
                 str(phantom / "nuclei"), "--classes", str(phantom / "nuclei.csv"), "--out", str(store),
                 "--tile_size", "32", "--mpp", "0.5", "--max_instances", "64", "--workers", "1"]) == 0  # fmt: skip
    out = root / "instances"
    assert main(["pathology", "instances-train", "--store", str(store), "--out", str(out), "--backbone", "test_vit",
                 "--peft", "lora", "--epochs", "1", "--width", "8", "--device", "cpu", "--json"]) == 0  # fmt: skip
    inputs = _write_pictures(_test_tiles(store), root / "inputs")
    large = root / "inputs" / "field.png"  # a whole field, larger than a tile: a sliding window
    large.write_bytes((phantom / "images" / "cells_000.png").read_bytes())
    return out / "instances.safetensors", [*inputs, large]


def _radiology(root: Path) -> tuple[Path, list[Path]]:
    phantom = root / "phantom"
    assert main(["radiology", "phantom", "--out", str(phantom), "--n", "24"]) == 0
    store = root / "store.zarr"
    assert main(["radiology", "ingest", "--images", str(phantom / "images"), "--reports", str(phantom / "reports.csv"),
                 "--labels", str(phantom / "labels.csv"), "--out", str(store), "--size", "32"]) == 0  # fmt: skip
    out = root / "classifier"
    assert main(["radiology", "train", "--store", str(store), "--out", str(out), "--backbone", "test_resnet",
                 "--epochs", "1", "--device", "cpu", "--json"]) == 0  # fmt: skip
    # Raw radiographs as a user has them: full size, not square (the network letterboxes them as ingest does).
    raw = root / "raw"
    raw.mkdir()
    with Image.open(sorted((phantom / "images").rglob("*.png"))[0]) as picture:
        picture.crop((0, 0, 90, 128)).save(raw / "raw_tall.png")
        picture.crop((5, 20, 128, 90)).save(raw / "raw_wide.png")
    # and a raw DICOM (display transform, then letterbox), which the bundle reads through domainfm's readers
    dicom = raw / "scan.dcm"
    dicom.write_bytes(sorted((phantom / "images").rglob("*.dcm"))[0].read_bytes())
    inputs = _write_pictures(_test_tiles(store), root / "inputs")
    return out / "classifier.safetensors", [*inputs, raw / "raw_tall.png", raw / "raw_wide.png", dicom]


def _remote_sensing(root: Path) -> tuple[dict[str, Path], list[Path]]:
    granules = []
    for seed in range(2):
        granule = root / f"g{seed}.hdf"
        assert main(["remote-sensing", "phantom", "--out", str(granule), "--size", "96", "--seed", str(seed)]) == 0
        granules.append(str(granule))
    store = root / "chips.zarr"
    splits = str(write_phantom_splits(granules, root / "splits.csv"))  # g0 train, g1 test: chips split per granule
    ingest = ["remote-sensing", "ingest", *granules, "--out", str(store), "--chip", "32", "--curtains"]
    assert main([*ingest, "--splits", splits]) == 0
    checkpoints = {}
    for task in ("curtain", "segment"):
        out = root / task
        assert main(["remote-sensing", "train", "--store", str(store), "--task", task, "--epochs", "1",
                     "--device", "cpu", "--out", str(out), "--json"]) == 0  # fmt: skip
        checkpoints[task] = out / f"{task}.safetensors"
    folder = root / "inputs"
    folder.mkdir()
    inputs = []
    for i, chip in enumerate(_test_tiles(store)):
        inputs.append(folder / f"chip_{i}.npy")
        np.save(inputs[-1], chip.astype(np.float32))
    return checkpoints, inputs


def _segmentation(root: Path) -> tuple[Path, list[Path]]:
    phantom = root / "phantom"
    assert main(["segmentation", "phantom", "--out", str(phantom), "--n", "12", "--size", "32"]) == 0
    store = root / "store.zarr"
    assert main(["segmentation", "ingest", "--images", str(phantom / "site_a" / "images"), "--masks",
                 str(phantom / "site_a" / "masks"), "--out", str(store), "--size", "32"]) == 0  # fmt: skip
    vae = root / "vae"
    assert main(["segmentation", "train-vae", "--store", str(store), "--out", str(vae), "--epochs", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    out = root / "gms"
    assert main(["segmentation", "train", "--store", str(store), "--out", str(out), "--model", "gms", "--vae",
                 str(vae / "vae.safetensors"), "--epochs", "1", "--device", "cpu"]) == 0  # fmt: skip
    inputs = _write_pictures(_test_tiles(store), root / "inputs")
    large = root / "inputs" / "large.png"  # larger than the training size: a sliding window
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(large)
    # Raw images of other non-square sizes (resized to the training size and the mask resized back).
    raw = root / "raw"
    raw.mkdir()
    with Image.open(sorted((phantom / "site_a" / "images").iterdir())[0]) as picture:
        picture.convert("RGB").resize((45, 29), Image.Resampling.BICUBIC).save(raw / "raw_0.png")
        picture.convert("RGB").resize((23, 50), Image.Resampling.BICUBIC).save(raw / "raw_1.png")
    return out / "model.safetensors", [*inputs, large, raw / "raw_0.png", raw / "raw_1.png"]


@pytest.fixture(scope="session")
def deployables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[Path]]]:
    """Kind -> (checkpoint, sample input files) for every deployable kind."""
    root = tmp_path_factory.mktemp("deployables")
    rs, rs_inputs = _remote_sensing(root / "remote_sensing")
    return {
        "pathology.tile_classifier": _pathology(root / "pathology"),
        "pathology.instances": _pathology_instances(root / "pathology_instances"),
        "radiology.classifier": _radiology(root / "radiology"),
        "remote_sensing.curtain": (rs["curtain"], rs_inputs),
        "remote_sensing.cloud_mask": (rs["segment"], rs_inputs),
        "segmentation.gms": _segmentation(root / "segmentation"),
    }
