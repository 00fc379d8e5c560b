"""Pathology verbs take their preprocessing from the encoder's InputTransform record.

A PLUTO encoder saves the record its store's statistics give (what ``normalise`` did); an edited record in
a copy of the encoder changes what embed and train feed the network. A converted foundation checkpoint
(a tiny timm ViT converted as ``uni``) is an encoder too: embed, probe, train and mil run on it, tiles go
through its own record (resized to its input size, scaled, standardised with its mean/std), and the tile
classifier's deployed network applies the same record.
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
from domainfm.domains.pathology.embed import read_embeddings
from domainfm.domains.pathology.heads import load_tile_classifier
from domainfm.domains.pathology.pretrain import ENCODER_KEY, load_encoder, normalise
from domainfm.shared.backbones import load_backbone
from domainfm.shared.model import InputTransform, TransformModule, standardise
from domainfm.shared.tasks.checkpoint import checkpoint_metadata, save_checkpoint
from domainfm.shared.tiles import TileStore

TINY_UNI = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pathology_encoders")
    slides = []
    for i in range(5):
        path = root / f"s{i}.svs"
        tumor = ["--tumor"] if i % 2 == 0 else ["--no_tumor"]
        assert main(["pathology", "phantom", "--out", str(path), "--size", "1024", "--seed", str(i),
                     "--mpp", "0.5", *tumor]) == 0  # fmt: skip
        slides.append(str(path))
    splits = root / "splits.csv"
    splits.write_text("slide,split\n" + "".join(f"s{i}.svs,{'test' if i >= 3 else 'train'}\n" for i in range(5)))
    assert main(["pathology", "tile", *slides, "--out", str(root / "tiles.zarr"), "--mpp", "0.5",
                 "--tile-size", "64", "--truth-labels", "--splits", str(splits)]) == 0  # fmt: skip
    objective = '{"out_dim": 64, "head_hidden": 32, "head_bottleneck": 16, "local_size": 32, "n_local": 1}'
    assert main(["pathology", "pretrain", "--store", str(root / "tiles.zarr"), "--out", str(root / "pluto"),
                 "--epochs", "1", "--objective", objective, "--device", "cpu"]) == 0  # fmt: skip
    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, dynamic_img_size=True, **TINY_UNI
    )
    for block in vit.blocks:  # LayerScale at 1e-5 would hide the blocks
        torch.nn.init.normal_(block.ls1.gamma, std=0.5)
        torch.nn.init.normal_(block.ls2.gamma, std=0.5)
    torch.save(vit.state_dict(), root / "pytorch_model.bin")
    (root / "config.json").write_text(json.dumps({"model_args": TINY_UNI}))
    assert main(["models", "convert", "uni", "--input", str(root / "pytorch_model.bin"), "--config",
                 str(root / "config.json"), "--out", str(root / "uni.safetensors")]) == 0  # fmt: skip
    return root


def _tiles(store: Path, ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(TileStore(store).tiles.get_orthogonal_selection((ids,)))


def _embed(workspace: Path, checkpoint: Path, name: str) -> Path:
    out = workspace / name
    assert main(["pathology", "embed", "--store", str(workspace / "tiles.zarr"), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--device", "cpu", "--overwrite"]) == 0  # fmt: skip
    return out


def _edited_copy(source: Path, out: Path, mean: list[float], std: list[float]) -> Path:
    metadata = checkpoint_metadata(source)
    meta = metadata[ENCODER_KEY]
    meta["transform"] = {**meta["transform"], "mean": mean, "std": std}
    return save_checkpoint(out, load_file(str(source)), metadata)


def test_pluto_encoder_saves_the_record_normalise_applies(workspace: Path):
    _, meta = load_encoder(workspace / "pluto" / "encoder.safetensors")
    record = InputTransform.from_dict(meta["transform"])
    stats = TileStore(workspace / "tiles.zarr").stats
    assert record.mean == pytest.approx([float(m) for m in stats["mean"]])
    assert (record.geometry, record.size, record.scale, record.quantise) == ("exact", [64, 64], 1.0, "uint8")
    tiles = _tiles(workspace / "tiles.zarr", np.arange(6))
    torch.testing.assert_close(TransformModule(record)(tiles), normalise(tiles, meta["normalization"]))


def test_embed_and_train_follow_an_edited_encoder_record(workspace: Path, capsys: pytest.CaptureFixture[str]):
    original = workspace / "pluto" / "encoder.safetensors"
    mean, std = [10.0, 200.0, 90.0], [30.0, 5.0, 60.0]
    edited = _edited_copy(original, workspace / "edited" / "encoder.safetensors", mean, std)
    emb_original = read_embeddings(_embed(workspace, original, "emb_original.zarr")).features
    emb_edited = read_embeddings(_embed(workspace, edited, "emb_edited.zarr")).features
    encoder, _ = load_encoder(edited)
    ids = np.array([0, 7, 19])
    with torch.no_grad():
        expected = encoder.eval()(standardise(_tiles(workspace / "tiles.zarr", ids), mean, std))
    np.testing.assert_allclose(emb_edited[ids], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(emb_edited - emb_original).max() > 1e-2  # the record, not the old normalization key, counts
    out = workspace / "clf_edited"
    assert main(["pathology", "train", "--store", str(workspace / "tiles.zarr"), "--out", str(out), "--checkpoint",
                 str(edited), "--epochs", "1", "--json", "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    model, meta = load_tile_classifier(out / "tile_classifier.safetensors")
    record = InputTransform.from_dict(meta["transform"])
    assert (record.mean, record.std, record.scale) == (mean, std, 1.0)
    from domainfm.domains.pathology.deploy import deployable

    tiles = _tiles(workspace / "tiles.zarr", ids).float()
    with torch.no_grad():
        deployed = deployable(out / "tile_classifier.safetensors").network.eval()(tiles)
        torch.testing.assert_close(deployed, model.eval()(standardise(tiles, mean, std)))


def test_a_converted_foundation_checkpoint_embeds_probes_trains_and_mils(
    workspace: Path, capsys: pytest.CaptureFixture[str]
):
    uni = workspace / "uni.safetensors"
    emb = _embed(workspace, uni, "emb_uni.zarr")
    embeddings = read_embeddings(emb)
    record = InputTransform.from_dict(embeddings.attrs["encoder_meta"]["transform"])
    assert (record.size, record.geometry, record.mean) == ([32, 32], "resize", [0.485, 0.456, 0.406])
    ids = np.array([0, 5, len(embeddings.features) - 1])
    tiles = _tiles(workspace / "tiles.zarr", ids)
    assert tiles.shape[-1] == 64  # the store's tiles are resized to the model's 32 px by the record
    with torch.no_grad():
        expected = load_backbone(uni).eval()(TransformModule(record)(tiles))
        # by hand: resize, round to uint8, scale to [0, 1], ImageNet mean/std
        small = torch.nn.functional.interpolate(tiles.float(), size=(32, 32), mode="bilinear", antialias=True)
        by_hand = standardise(small.round().clamp(0, 255), record.mean, record.std, 1 / 255)
        torch.testing.assert_close(TransformModule(record)(tiles), by_hand)
    np.testing.assert_allclose(embeddings.features[ids], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert embeddings.features.shape[1] == 64
    capsys.readouterr()
    assert main(["pathology", "probe", "--embeddings", str(emb), "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert probe["test_tiles"] == int((embeddings.split == 2).sum())
    mil = workspace / "mil_uni"
    assert main(["pathology", "mil", "--embeddings", str(emb), "--out", str(mil), "--epochs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_slides"] == 2
    # the saved slide classifier carries the converted encoder and its record (64-px tiles resized to 32)
    from domainfm.domains.pathology.slide_model import load_slide_classifier
    from domainfm.shared.deploy import load_deployable, predict

    slide_model = load_deployable(mil / "slide_classifier.safetensors")
    assert slide_model.card.transform["geometry"] == "resize" and slide_model.card.build["tile_px"] == 64
    bag = np.flatnonzero(embeddings.slide == embeddings.slide[-1])
    head = load_slide_classifier(mil / "slide_classifier.safetensors")[0].head
    with torch.no_grad():
        expected = torch.softmax(head(torch.from_numpy(embeddings.features[bag]))[0], 0)
    torch.testing.assert_close(
        predict(slide_model, _tiles(workspace / "tiles.zarr", bag))[0], expected, atol=1e-5, rtol=0
    )
    out = workspace / "clf_uni"
    assert main(["pathology", "train", "--store", str(workspace / "tiles.zarr"), "--out", str(out), "--checkpoint",
                 str(uni), "--peft", "lora", "--epochs", "1", "--json", "--device", "cpu"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert scores["init"] == "uni"
    model, meta = load_tile_classifier(Path(scores["classifier"]))
    saved = InputTransform.from_dict(meta["transform"])
    assert (saved.mean, saved.std, saved.scale, saved.size, saved.geometry) == (
        record.mean, record.std, record.scale, [32, 32], "resize",
    )  # fmt: skip
    assert meta["tile_px"] == 64 and meta["encoder"]["embed_dim"] == 64
    from domainfm.domains.pathology.deploy import KIND, deployable, network

    with torch.no_grad():
        deployed = deployable(Path(scores["classifier"])).network.eval()(tiles.float())
        torch.testing.assert_close(deployed, model.eval()(TransformModule(record)(tiles)))
    rebuilt = network(KIND, meta)  # the bundle's rebuild: create_backbone from the stored arguments
    rebuilt.network.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(tiles.float()), deployed)
