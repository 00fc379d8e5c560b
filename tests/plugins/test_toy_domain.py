"""A domain added from tests/ runs ingest -> fine-tune -> predict -> MONAI bundle -> explain (issue 17).

Nothing under ``domainfm/shared`` is edited or names the toy domain: it registers itself
(:func:`domainfm.shared.plugins.register_domain`) and every shared door finds it by its card kind and
checkpoint key. The bundle runs in this process through ``monai.bundle.run`` (a separate ``python -m
monai.bundle`` process would not have the toy domain registered: real domains register through entry points).
"""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.shared.model import standardise
from domainfm.shared.plugins import domains, register_domain, unregister_domain


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import toy_domain

    register_domain(toy_domain.PLUGIN)
    yield toy_domain
    unregister_domain(toy_domain.NAME)
    sys.modules.pop("toy_domain", None)


def _pictures(folder: Path, n: int = 24) -> list[Path]:
    """Grey pictures of several non-square sizes; 'bright' ones are lighter on average."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for i in range(n):
        label = ("dark", "bright")[i % 2]
        height, width = (20 + 3 * (i % 5), 17 + 4 * (i % 3))
        base = 60 if label == "dark" else 190
        values = np.clip(base + rng.normal(0, 30, (height, width)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{label}_{i}.png")
        Image.fromarray(values).save(paths[-1])
    return paths


def test_a_toy_domain_runs_every_door_without_editing_shared(toy, tmp_path: Path):
    from monai.bundle import run as run_bundle

    from domainfm.shared.deploy import load_deployable, predict, read_input
    from domainfm.shared.deploy.bundle import export_bundle
    from domainfm.shared.explain import attribute
    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.store import TileStore

    assert "toy" in domains()
    pictures = _pictures(tmp_path / "pictures")
    store = tmp_path / "toy.zarr"
    ingest(pictures, store, toy.spec(), toy.reader, "toy.picture", workers=1, progress=False)
    tiles = TileStore(store)
    assert len(tiles) == len(pictures) and tiles.spec.domain == "toy"

    checkpoint = toy.train(store, tmp_path / "toy.safetensors")
    deployable = load_deployable(checkpoint)
    assert deployable.card.kind == toy.KIND

    # predict on raw pictures of their own sizes: the model learnt brightness, and the scores equal the
    # trained classifier's on the stored tiles (one transform, never two)
    test = [p for p in pictures if int(p.stem.split("_")[1]) % 4 == 0]
    model = deployable.network.network
    correct = 0
    for path in test:
        raw = read_input(path, deployable.card)
        assert raw.shape[-2:] != (toy.SIZE, toy.SIZE)
        pred = predict(deployable, raw)
        tile = torch.from_numpy(toy.transform_array(toy.read_picture(path), toy.input_transform()))[None]
        with torch.no_grad():
            expected = torch.softmax(model(standardise(tile, [0.5], [0.25], scale=1 / 255)), 1)
        assert float((pred - expected).abs().max()) < 1e-5
        correct += int(pred.argmax()) == toy.CLASSES.index(path.stem.split("_")[0])
    assert correct == len(test), f"{correct}/{len(test)} toy pictures classified by brightness"

    # the MONAI bundle writes what predict gives
    bundle = export_bundle(checkpoint, tmp_path / "bundle")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for path in test:
        (inputs / path.name).write_bytes(path.read_bytes())
    run_bundle(
        config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(inputs), output_dir=str(tmp_path / "out"),
        device="$torch.device('cpu')",
    )  # fmt: skip
    rows = {
        Path(row[0]).name: np.asarray(row[1:], float)
        for row in csv.reader((tmp_path / "out" / "predictions.csv").open())
    }
    for path in test:
        expected = predict(deployable, read_input(path, deployable.card))[0].numpy()
        np.testing.assert_allclose(rows[path.name], expected, atol=1e-5)

    # explain attributes the raw picture at its own size, and reports the predicted class's logit
    raw = read_input(test[0], deployable.card)
    result = attribute(deployable, raw, "integrated_gradients", n_steps=8)
    assert result.map.shape == raw.shape[1:]
    with torch.no_grad():
        assert result.score == pytest.approx(float(deployable.network(raw).max()), abs=1e-5)


def test_an_unregistered_domain_is_named(tmp_path: Path):
    from domainfm.shared.deploy.registry import NotDeployableError, build_network

    with pytest.raises(NotDeployableError, match=r"unknown model kind 'toy\.brightness'.*Known: pathology"):
        build_network("toy.brightness", {})
