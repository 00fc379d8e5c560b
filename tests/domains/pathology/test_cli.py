"""The pathology CLI end to end on phantom slides: phantom, tile, pretrain, embed (resumable), probe, train, mil."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from domainfm.cli import main
from domainfm.domains.pathology.embed import read_embeddings
from domainfm.domains.pathology.heads import load_tile_classifier
from domainfm.domains.pathology.pretrain import load_encoder, normalise
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles import TileStore


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pathology")
    slides = []
    for i in range(5):
        path = root / f"s{i}.svs"
        tumor = ["--tumor"] if i % 2 == 0 else ["--no_tumor"]
        assert main(["pathology", "phantom", "--out", str(path), "--size", "1024", "--seed", str(i),
                     "--mpp", "0.5", *tumor]) == 0  # fmt: skip
        slides.append(str(path))
    splits = root / "splits.csv"
    splits.write_text("slide,split\n" + "".join(f"s{i}.svs,{'test' if i >= 3 else 'train'}\n" for i in range(5)))
    store = root / "tiles.zarr"
    assert main(["pathology", "tile", *slides, "--out", str(store), "--mpp", "0.5", "--mpp", "1.0",
                 "--tile-size", "64", "--truth-labels", "--splits", str(splits)]) == 0  # fmt: skip
    objective = '{"out_dim": 64, "head_hidden": 32, "head_bottleneck": 16, "local_size": 32, "n_local": 1}'
    assert main(["pathology", "pretrain", "--store", str(store), "--out", str(root / "pluto"), "--epochs", "1",
                 "--objective", objective, "--device", "cpu"]) == 0  # fmt: skip
    return root


def test_tile_store_holds_both_scales_labels_and_splits(workspace: Path):
    store = TileStore(workspace / "tiles.zarr")
    assert sorted(set(store.index["scale"].tolist())) == [0.5, 1.0]
    assert set(store.index["label"].tolist()) <= {1, 2, 3, 4} and (store.index["label"] > 0).all()
    by_slide = {Path(s["path"]).name: i for i, s in enumerate(store.sources)}
    test_rows = store.index["source"][store.index["split"] == 2]
    assert {by_slide["s3.svs"], by_slide["s4.svs"]} == set(test_rows.tolist())
    assert (workspace / "pluto" / "config.yaml").is_file() and not (workspace / "pluto" / "resume").exists()


def test_embeddings_resume_and_match_the_encoder(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    import domainfm.domains.pathology.embed as embed_module

    store, out = workspace / "tiles.zarr", workspace / "emb.zarr"
    checkpoint = workspace / "pluto" / "encoder.safetensors"
    calls = {"n": 0}
    original = embed_module.prepare_tiles

    def failing(tiles, normalization):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # a run stopped after two batches
        return original(tiles, normalization)

    monkeypatch.setattr(embed_module, "prepare_tiles", failing)
    assert main(["pathology", "embed", "--store", str(store), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--batch_size", "16", "--device", "cpu"]) == 130  # fmt: skip  # interrupted: exit 130
    from domainfm.shared.outputs import leftovers

    (partial,) = leftovers(out)  # OUT.partial-<pid>-<hex>: a name unique to the run, never a user's OUT.partial
    assert not out.exists() and partial.name.startswith(f"emb.zarr.partial-{os.getpid()}-")
    with pytest.raises(DomainfmError, match=r"not a complete embedding store|not an embedding store"):
        read_embeddings(partial)
    import zarr

    assert zarr.open_group(partial, mode="r").attrs["rows_done"] == 32  # two batches kept
    resumed = {"n": 0}

    def counting(tiles, normalization):
        resumed["n"] += 1
        return original(tiles, normalization)

    monkeypatch.setattr(embed_module, "prepare_tiles", counting)
    assert main(["pathology", "embed", "--store", str(store), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--batch_size", "16", "--device", "cpu"]) == 0  # fmt: skip
    embeddings = read_embeddings(out)
    assert not leftovers(out)  # the killed run's partial was continued and renamed, not left beside it
    tiles = TileStore(store)
    assert resumed["n"] == -(-(len(tiles) - 32) // 16)  # the rerun embedded only the rest
    encoder, meta = load_encoder(checkpoint)
    ids = np.array([0, 40, len(tiles) - 1])
    with torch.no_grad():
        expected = encoder.eval()(normalise(torch.from_numpy(tiles.tiles.get_orthogonal_selection((ids,))),
                                            meta["normalization"]))  # fmt: skip
    np.testing.assert_allclose(embeddings.features[ids], expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(embeddings.coords[:, 0], tiles.index["x"])
    assert embeddings.slides[0]["mpp_source"] == "openslide.mpp-x"


def test_probe_train_and_mil_commands(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.pathology import heads

    probed = []  # the test tiles' probabilities and labels the probe is scored on
    real_scores = heads.classification_scores

    def scores_spy(probabilities, labels, n_classes):
        probed.append((probabilities.clone(), labels.clone()))
        return real_scores(probabilities, labels, n_classes)

    monkeypatch.setattr(heads, "classification_scores", scores_spy)
    emb = workspace / "emb_cli.zarr"
    assert (
        main(
            [
                "pathology",
                "embed",
                "--store",
                str(workspace / "tiles.zarr"),
                "--out",
                str(emb),
                "--checkpoint",
                str(workspace / "pluto" / "encoder.safetensors"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["pathology", "probe", "--embeddings", str(emb), "--mpp", "0.5", "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)
    assert probe["test_tiles"] > 0
    # balanced accuracy: the mean over the classes in the test tiles of the share of their tiles predicted right
    probabilities, labels = probed[-1]
    assert len(labels) == probe["test_tiles"]
    predicted = probabilities.argmax(1)
    recalls = [float((predicted[labels == c] == c).double().mean()) for c in labels.unique().tolist()]
    assert len(recalls) >= 2, "the test tiles must hold several classes"
    assert probe["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert probe["accuracy"] == pytest.approx(float((predicted == labels).double().mean()))
    out = workspace / "clf"
    assert main(["pathology", "train", "--store", str(workspace / "tiles.zarr"), "--out", str(out), "--checkpoint",
                 str(workspace / "pluto" / "encoder.safetensors"), "--peft", "dvpt", "--epochs", "1", "--json",
                 "--device", "cpu"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    model, meta = load_tile_classifier(Path(scores["classifier"]))
    assert meta["peft"] == "dvpt" and model.head.out_features == 5
    assert scores["trainable_encoder_parameters"] > 0
    mil = workspace / "mil"
    assert main(["pathology", "mil", "--embeddings", str(emb), "--out", str(mil), "--epochs", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_slides"] == 2 and all(Path(p).is_file() for p in result["heatmaps"])
    labels = workspace / "labels.csv"
    labels.write_text("slide,label\ns0,a\ns1,b\ns2,a\ns3,b\n")
    assert main(["pathology", "mil", "--embeddings", str(emb), "--out", str(mil), "--labels", str(labels)]) == 0


def test_bad_inputs_fail_clearly(workspace: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["pathology", "probe", "--embeddings", str(workspace / "nothing.zarr")]) == 2
    assert "not an embedding store" in capsys.readouterr().err
    assert main(["pathology", "pretrain", "--store", str(workspace / "tiles.zarr"), "--out", str(workspace / "x"),
                 "--objective", '{"tempature": 0.1}']) == 2  # fmt: skip
    assert "unknown objective option(s) ['tempature']" in capsys.readouterr().err
    bad = workspace / "bad_splits.csv"
    bad.write_text("slide,split\ns0.svs,holdout\n")
    assert main(["pathology", "tile", str(workspace / "s0.svs"), "--out", str(workspace / "y.zarr"),
                 "--splits", str(bad)]) == 2  # fmt: skip
    assert "bad_splits.csv, line 2: unknown split 'holdout'" in capsys.readouterr().err
