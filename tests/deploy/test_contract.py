"""One model, one transform (issue 17): evaluation on the store, ``predict`` on raw files, a MONAI bundle and
``explain`` see the same tensor and give the same scores, in every domain.

* evaluation: the domain's own path, the stored tile standardised by the domain's training function and
  run through the network it trained (``load_*`` + ``normalise``/``prepare``/``to_model_range``);
* ``predict``/``explain``: the deployed :class:`~domainfm.shared.model.ContractModel` on the raw file, read
  as a user gives it (a DICOM, a full-size non-square picture, a chip);
* the bundle: ``tests/deploy/test_bundle.py`` runs ``python -m monai.bundle run`` on every input of the
  ``deployables`` fixture (which holds the raw non-square radiograph and segmentation images used here)
  and requires its output to equal ``predict``.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from domainfm.shared.deploy import load_deployable, predict, read_input
from domainfm.shared.explain import attribute
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore

TOLERANCE = 1e-5


def _explained(deployable, image: torch.Tensor) -> float:
    """The score ``explain`` reports for ``image`` (integrated gradients with few steps: the score is f(x))."""
    return float(attribute(deployable, image, "integrated_gradients", n_steps=4).score)


def _stored(store: Path, name: str) -> np.ndarray:
    """The tile the store holds for the source file called ``name``."""
    tiles = TileStore(store)
    rows = [i for i, source in enumerate(tiles.sources) if Path(str(source["path"])).name == name]
    assert len(rows) == 1, f"{name} is one source of {store}"
    (ids,) = np.nonzero(tiles.index["source"] == rows[0])
    return np.asarray(tiles.tiles[int(ids[0])])


def _test_rows(store: Path, n: int = 2) -> np.ndarray:
    """The stored tiles the deployables fixture wrote as input files (its first test tiles)."""
    tiles = TileStore(store)
    ids = np.flatnonzero(tiles.index["split"] == SPLITS["test"])
    ids = (ids if len(ids) else np.arange(len(tiles.index["split"])))[:n]
    return np.stack([tiles.tiles[int(i)] for i in ids])


def _assert_same(deployable, raw: torch.Tensor, evaluated_input: torch.Tensor, evaluated_scores: torch.Tensor):
    """The deployed network's input tensor and scores on ``raw`` equal evaluation's; explain reports them too."""
    with torch.no_grad():
        torch.testing.assert_close(deployable.network.transform(raw), evaluated_input, rtol=0, atol=TOLERANCE)
        scores = deployable.network(raw)
    assert float((scores - evaluated_scores).abs().max()) < TOLERANCE
    pred = predict(deployable, raw)
    activated = {"softmax": torch.softmax, "sigmoid": lambda x, dim: torch.sigmoid(x)}.get(deployable.card.activation)
    expected = activated(evaluated_scores, dim=1) if activated else evaluated_scores
    assert float((pred - expected).abs().max()) < TOLERANCE
    explained = _explained(deployable, raw)
    if deployable.card.task == "segmentation":
        target = int(scores.flatten(2).sum(-1).argmax())
        assert explained == pytest.approx(float(scores.flatten(2).sum(-1)[0, target]), abs=1e-4, rel=1e-5)
    else:  # the default target: the predicted class or the highest label, explained by its logit
        assert explained == pytest.approx(float(scores.max()), abs=TOLERANCE)


def test_radiology_raw_dicom_and_full_size_pictures_meet_the_store(deployables):
    from domainfm.domains.radiology.classifier import load_classifier
    from domainfm.domains.radiology.images import ingest_tile
    from domainfm.domains.radiology.pretrain import normalise

    checkpoint, inputs = deployables["radiology.classifier"]
    deployable = load_deployable(checkpoint)
    model, meta = load_classifier(checkpoint)
    images = checkpoint.parents[1] / "phantom" / "images"
    raw_files = [next(iter(sorted(images.rglob("*.dcm")))), next(iter(sorted(images.rglob("*.png"))))]
    for path in raw_files:  # a DICOM (display transform) and a picture, both 128 px: letterboxed to 32
        raw = read_input(path, deployable.card)
        assert raw.shape[-1] == 128 and raw.shape[-1] != deployable.card.spatial_shape[0]
        tile = torch.from_numpy(_stored(checkpoint.parents[1] / "store.zarr", path.name))[None]
        standardised = normalise(tile, meta["normalization"])  # what `radiology eval`/`train` feed the model
        with torch.no_grad():
            _assert_same(deployable, raw, standardised, model(standardised))
    # Non-square full-size pictures (also run by the bundle test): what ingest would store of them.
    for path in (p for p in inputs if p.stem.startswith("raw_")):
        raw = read_input(path, deployable.card)
        assert raw.shape[-2] != raw.shape[-1]
        tile = torch.from_numpy(ingest_tile(path, deployable.card.spatial_shape[0]))[None]
        standardised = normalise(tile, meta["normalization"])  # what `radiology eval`/`train` feed the model
        with torch.no_grad():
            _assert_same(deployable, raw, standardised, model(standardised))


def test_segmentation_images_of_other_non_square_sizes_meet_the_store(deployables, tmp_path: Path):
    from domainfm.cli import main
    from domainfm.domains.segmentation.models import load_segmenter, to_model_range

    checkpoint, inputs = deployables["segmentation.gms"]
    deployable = load_deployable(checkpoint)
    model, meta = load_segmenter(checkpoint)
    raw_files = [p for p in inputs if p.stem.startswith("raw_")]
    assert len({np.asarray(read_input(p, deployable.card).shape[-2:]).tobytes() for p in raw_files}) >= 2
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in raw_files:  # the store needs masks; their content does not matter here
        shape = read_input(path, deployable.card).shape[-2:]
        from PIL import Image

        Image.fromarray(np.zeros(tuple(shape), np.uint8)).save(masks / path.name)
    store = tmp_path / "store.zarr"
    assert main(["segmentation", "ingest", "--images", str(raw_files[0].parent), "--masks", str(masks), "--out",
                 str(store), "--size", str(meta["image_size"]), "--workers", "1"]) == 0  # fmt: skip
    for path in raw_files:
        raw = read_input(path, deployable.card)
        tile = torch.from_numpy(_stored(store, path.name))[None]
        with torch.no_grad():
            evaluated = model(to_model_range(tile))  # what `segmentation eval` computes on the stored tile
        # predict returns the map at the raw image's size: evaluation's map resized back
        back = F.interpolate(
            evaluated, size=tuple(raw.shape[-2:]), mode="bilinear", align_corners=False, antialias=True
        )
        _assert_same(deployable, raw, to_model_range(tile), back)
        assert predict(deployable, raw).shape[-2:] == raw.shape[-2:]


def test_pathology_tiles_meet_the_store(deployables):
    from domainfm.domains.pathology.heads import load_tile_classifier
    from domainfm.domains.pathology.pretrain import normalise

    checkpoint, inputs = deployables["pathology.tile_classifier"]
    deployable = load_deployable(checkpoint)
    model, meta = load_tile_classifier(checkpoint)
    for path, tile in zip(inputs, _test_rows(checkpoint.parents[1] / "tiles.zarr"), strict=False):
        standardised = normalise(torch.from_numpy(tile)[None], meta["normalization"])
        with torch.no_grad():
            _assert_same(deployable, read_input(path, deployable.card), standardised, model(standardised))


@pytest.mark.parametrize("kind", ["remote_sensing.cloud_mask", "remote_sensing.curtain"])
def test_remote_sensing_chips_meet_the_store(deployables, kind: str):
    from domainfm.domains.remote_sensing.downstream import load_task_model
    from domainfm.domains.remote_sensing.pretrain import prepare

    checkpoint, inputs = deployables[kind]
    deployable = load_deployable(checkpoint)
    model, meta = load_task_model(checkpoint)
    store = checkpoint.parents[1] / "chips.zarr"
    for path, chip in zip(inputs, _test_rows(store), strict=False):
        prepared = prepare(torch.from_numpy(chip.astype(np.float32))[None], meta["input_transform"])
        with torch.no_grad():
            out = model(prepared)
        _assert_same(deployable, read_input(path, deployable.card), prepared, out[:, None] if out.ndim == 3 else out)


def test_remote_sensing_whole_granules_are_read_as_ingest_chips_them(deployables):
    """A raw MODIS granule (HDF4): every stored chip is the reader's window, and the cloud mask covers it all."""
    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    deployable = load_deployable(checkpoint)
    granule = checkpoint.parents[1] / "g0.hdf"
    raw = read_input(granule, deployable.card)
    tiles = TileStore(checkpoint.parents[1] / "chips.zarr")
    (row,) = [i for i, s in enumerate(tiles.sources) if Path(str(s["path"])).name == granule.name]
    ids = np.flatnonzero(tiles.index["source"] == row)
    assert len(ids) > 1
    chip = deployable.card.spatial_shape[0]
    for i in ids:
        y, x = int(tiles.index["y"][i]), int(tiles.index["x"][i])
        np.testing.assert_array_equal(raw[0, :, y : y + chip, x : x + chip].numpy(), np.asarray(tiles.tiles[int(i)]))
    pred = predict(deployable, raw)
    assert pred.shape == (1, 1, *raw.shape[-2:]) and raw.shape[-1] > chip  # a window slid over the whole granule


def test_every_checkpoint_carries_its_transform_record_and_the_record_rules(deployables, tmp_path: Path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    for kind, (checkpoint, _) in deployables.items():
        with safe_open(str(checkpoint), "pt") as handle:
            metadata = handle.metadata()
        (key,) = [k for k in metadata if k.startswith("domainfm_")]
        record = json.loads(metadata[key])["transform"]
        assert record == load_deployable(checkpoint).card.transform, kind
    # The record is data: edit it in a copy of the file and the deployed network follows it.
    checkpoint, _ = deployables["segmentation.gms"]
    with safe_open(str(checkpoint), "pt") as handle:
        metadata = handle.metadata()
    meta = json.loads(metadata["domainfm_segmentation"])
    meta["transform"]["geometry"] = "exact"
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(checkpoint)), str(edited), {**metadata, "domainfm_segmentation": json.dumps(meta)})
    deployable = load_deployable(edited)
    assert deployable.card.geometry == "exact"
    with pytest.raises(ValueError, match="takes exactly 32x32 inputs"):
        predict(deployable, torch.zeros(1, 3, 40, 24))
