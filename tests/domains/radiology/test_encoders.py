"""Radiology verbs take their preprocessing from the image tower's InputTransform record.

ConVIRT saves the record its store's statistics give (what ``normalise`` did); an edited record in a copy
of the checkpoint changes what ``eval probe`` feeds the tower. A tiny RGB ViT converted under a
temporary catalogue entry starts ``radiology pretrain`` and is probed directly by ``eval probe``/``knn``:
grey store tiles are replicated to its three channels and standardised with its per-channel mean/std.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from domainfm.cli import main
from domainfm.shared.backbones import load_backbone
from domainfm.shared.foundation.catalogue import FOUNDATION_MODELS, FoundationModel, register_foundation_model
from domainfm.shared.model import InputTransform, TransformModule, standardise
from domainfm.shared.tasks.checkpoint import checkpoint_metadata, save_checkpoint
from domainfm.shared.tiles import TileStore

NAME = "test_rgb_vit"
MEAN, STD = [0.2, 0.5, 0.7], [0.3, 0.2, 0.1]
TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 64}
TEXT = "{hidden: 32, layers: 2, heads: 2, intermediate: 64, vocab_size: 300, frozen_layers: 1}"


@pytest.fixture(scope="module")
def entry():
    record = InputTransform(
        channels=["red", "green", "blue"], size=[64, 64], geometry="resize", scale=1 / 255, mean=MEAN, std=STD,
        quantise="uint8", input_range=[0.0, 255.0],
    )  # fmt: skip
    model = FoundationModel(name=NAME, title="tiny RGB ViT (test)", backbone="uni", layout="timm", transform=record,
                            domain="radiology")  # fmt: skip
    register_foundation_model(model)
    yield model
    FOUNDATION_MODELS.remove(NAME)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, entry) -> Path:
    root = tmp_path_factory.mktemp("radiology_encoders")
    phantom = root / "phantom"
    assert main(["radiology", "phantom", "--out", str(phantom), "--n", "40", "--retrieval_per_category", "2"]) == 0
    assert main(["radiology", "ingest", "--images", str(phantom / "images"), "--reports",
                 str(phantom / "reports.csv"), "--labels", str(phantom / "labels.csv"), "--out",
                 str(root / "store.zarr"), "--size", "32"]) == 0  # fmt: skip
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, dynamic_img_size=True, **TINY
    )
    for block in vit.blocks:
        torch.nn.init.normal_(block.ls1.gamma, std=0.5)
        torch.nn.init.normal_(block.ls2.gamma, std=0.5)
    torch.save(vit.state_dict(), root / "vit.bin")
    (root / "config.json").write_text(json.dumps({"model_args": TINY}))
    assert main(["models", "convert", NAME, "--input", str(root / "vit.bin"), "--config", str(root / "config.json"),
                 "--out", str(root / "vit.safetensors")]) == 0  # fmt: skip
    return root


def _pretrain(workspace: Path, out: str, *extra: str) -> Path:
    assert main(["radiology", "pretrain", "--store", str(workspace / "store.zarr"), "--out", str(workspace / out),
                 "--text", TEXT, "--epochs", "1", "--batch_size", "8", "--projection_dim", "16", "--device", "cpu",
                 *extra]) == 0  # fmt: skip
    return workspace / out / "convirt.safetensors"


def _features_spy(monkeypatch: pytest.MonkeyPatch) -> list:
    from domainfm.domains.radiology import evaluate

    calls = []
    real = evaluate.tower_features

    def spy(tower, store, ids, record, device):
        out = real(tower, store, ids, record, device)
        calls.append((tower, ids, out))
        return out

    monkeypatch.setattr(evaluate, "tower_features", spy)
    return calls


def _probe(workspace: Path, checkpoint: Path, task: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert main(["radiology", "eval", task, "--checkpoint", str(checkpoint), "--store",
                 str(workspace / "store.zarr"), "--fractions", "[1.0]", "--json"]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def _tiles(workspace: Path, ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(TileStore(workspace / "store.zarr").tiles.get_orthogonal_selection((ids,)))


def test_convirt_saves_its_record_and_probes_follow_an_edited_one(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.radiology.pretrain import METADATA_KEY, load_convirt, normalise

    checkpoint = _pretrain(workspace, "convirt")
    _, _, meta = load_convirt(checkpoint)
    record = InputTransform.from_dict(meta["transform"])
    assert (record.geometry, record.size, record.scale) == ("letterbox", [32, 32], pytest.approx(1 / 255))
    tiles = _tiles(workspace, np.arange(5))
    torch.testing.assert_close(TransformModule(record)(tiles), normalise(tiles, meta["normalization"]))
    metadata = checkpoint_metadata(checkpoint)
    metadata[METADATA_KEY]["transform"] = {**metadata[METADATA_KEY]["transform"], "mean": [0.9], "std": [0.05]}
    edited = save_checkpoint(workspace / "edited.safetensors", load_file(str(checkpoint)), metadata)
    calls = _features_spy(monkeypatch)
    rows = _probe(workspace, edited, "probe", capsys)
    assert {r["init"] for r in rows} == {"convirt", "random"}
    tower, ids, features = calls[0]
    with torch.no_grad():
        expected = tower.eval()(standardise(_tiles(workspace, ids), [0.9], [0.05], 1 / 255))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        unedited = tower(normalise(_tiles(workspace, ids), meta["normalization"]))
    assert (features - unedited).abs().max() > 1e-2


def _grey_to_rgb_by_hand(tiles: torch.Tensor) -> torch.Tensor:
    big = torch.nn.functional.interpolate(tiles.float(), size=(64, 64), mode="bilinear", antialias=True)
    return standardise(big.round().clamp(0, 255).repeat(1, 3, 1, 1), MEAN, STD, 1 / 255)


def test_a_converted_encoder_is_probed_directly_with_grey_replicated(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    converted = workspace / "vit.safetensors"
    calls = _features_spy(monkeypatch)
    for task in ("probe", "knn"):
        rows = _probe(workspace, converted, task, capsys)
        assert {r["init"] for r in rows} == {NAME, "random"} and all(np.isfinite(r["auroc"]) for r in rows)
    _, ids, features = calls[0]
    with torch.no_grad():
        expected = load_backbone(converted).eval()(_grey_to_rgb_by_hand(_tiles(workspace, ids)))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["radiology", "eval", "retrieval", "--checkpoint", str(converted), "--candidates", "c.csv",
                 "--text_queries", "q.csv"]) == 2  # fmt: skip
    assert "vit.safetensors is a converted image encoder without a text tower" in capsys.readouterr().err


def test_pretrain_starts_its_image_tower_from_a_converted_encoder(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.radiology.pretrain import load_convirt

    converted = workspace / "vit.safetensors"
    checkpoint = _pretrain(workspace, "from_vit", "--image_checkpoint", str(converted), "--augment_strength", "0")
    model, _, meta = load_convirt(checkpoint)
    record = InputTransform.from_dict(meta["transform"])
    assert record.input_channels == ["grey"] and record.channels == ["red", "green", "blue"]
    assert (record.mean, record.std, record.size, record.geometry) == (MEAN, STD, [64, 64], "letterbox")
    assert meta["image_tower"]["embed_dim"] == 32 and model.image_tower.in_chans == 3
    # one epoch moved the tower away from the converted weights it started from
    start = load_backbone(converted).model.state_dict()
    trained = model.image_tower.model.state_dict()
    assert set(start) == set(trained) and any(not torch.equal(start[k], trained[k]) for k in start)
    calls = _features_spy(monkeypatch)
    rows = _probe(workspace, checkpoint, "probe", capsys)
    assert {r["init"] for r in rows} == {"convirt", "random"}
    tower, ids, features = calls[0]
    with torch.no_grad():
        expected = tower.eval()(_grey_to_rgb_by_hand(_tiles(workspace, ids)))
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)


def test_train_fine_tunes_a_converted_encoder_and_deploys_with_its_record(
    workspace: Path, capsys: pytest.CaptureFixture[str]
):
    from domainfm.domains.radiology.classifier import load_classifier
    from domainfm.domains.radiology.deploy import deployable

    converted = workspace / "vit.safetensors"
    out = workspace / "clf_vit"
    capsys.readouterr()
    assert main(["radiology", "train", "--store", str(workspace / "store.zarr"), "--out", str(out), "--checkpoint",
                 str(converted), "--peft", "lora", "--epochs", "1", "--batch_size", "8", "--device", "cpu",
                 "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    classifier = next(out.glob("*.safetensors"))
    model, meta = load_classifier(classifier)
    record = InputTransform.from_dict(meta["transform"])
    assert record.input_channels == ["grey"] and (record.mean, record.std) == (MEAN, STD)
    # the LoRA fine-tune moved the encoder away from the converted weights (LoRA's B starts at zero)
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    tiles = _tiles(workspace, np.arange(4))
    with torch.no_grad():
        deployed = deployable(classifier).network.eval()(tiles.float())
        by_hand = model.eval()(_grey_to_rgb_by_hand(tiles))
    torch.testing.assert_close(deployed, by_hand, rtol=1e-4, atol=1e-5)
