"""``pathology instances-train`` resumes after a stop: same final weights as an uninterrupted run (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from domainfm.cli import main
from domainfm.domains.pathology import instance_train
from domainfm.domains.pathology.instances import load_segmenter
from domainfm.shared.errors import DomainfmError
from domainfm.studies.pathology.phantom_cells import render_cells


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tifffile

    root = tmp_path_factory.mktemp("resume")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for k in range(2):
        field = render_cells(k, 64, 0.5)
        Image.fromarray(field.image).save(root / "images" / f"f{k}.png")
        tifffile.imwrite(root / "labels" / f"f{k}.tif", field.nuclei.astype(np.uint16))
    (root / "splits.csv").write_text("image,split\nf0,train\nf1,train\n")
    out = root / "store.zarr"
    assert main(["pathology", "instances-tile", "--images", str(root / "images"), "--labels", str(root / "labels"),
                 "--out", str(out), "--tile_size", "32", "--mpp", "0.5", "--splits", str(root / "splits.csv"),
                 "--workers", "1"]) == 0  # fmt: skip
    return out


def _train(store: Path, out: Path, *extra: str) -> int:
    return main(["pathology", "instances-train", "--store", str(store), "--out", str(out), "--epochs", "3",
                 "--batch_size", "4", "--width", "8", "--device", "cpu", "--json", *extra])  # fmt: skip


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_segmenter(out / "instances.safetensors")[0].state_dict()


def test_a_stopped_training_resumes_to_the_uninterrupted_weights(store: Path, tmp_path: Path, monkeypatch):
    whole = tmp_path / "whole"
    assert _train(store, whole) == 0
    expected = json.loads((whole / "train.json").read_text())
    assert not expected["resumed"] and len(expected["epoch_losses"]) == 3
    assert not (whole / "resume").exists()  # removed once the segmenter is saved

    steps = -(-expected["train_tiles"] // 4)
    original, calls = instance_train.hover_loss, []

    def stopped_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > steps + 1:  # killed in the second epoch, after its first step
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(instance_train, "hover_loss", stopped_in_epoch_two)
    stopped = tmp_path / "stopped"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        _train(store, stopped)
    assert (stopped / "resume" / "last.ckpt").is_file() and not (stopped / "instances.safetensors").exists()
    monkeypatch.setattr(instance_train, "hover_loss", original)

    with pytest.raises(DomainfmError, match=r"resume: a stopped instances-train run with other options \(lr\)"):
        instance_train.train_instances(store, stopped, epochs=3, batch_size=4, width=8, lr=5e-3, device="cpu")

    counted = []
    monkeypatch.setattr(instance_train, "hover_loss", lambda *a, **k: counted.append(1) or original(*a, **k))
    assert _train(store, stopped) == 0
    assert len(counted) == 2 * steps  # only epochs 2 and 3 ran again
    resumed = json.loads((stopped / "train.json").read_text())
    assert resumed["resumed"] and not (stopped / "resume").exists()
    np.testing.assert_allclose(resumed["epoch_losses"], expected["epoch_losses"], rtol=1e-5)  # epoch 1 kept
    weights, reference = _weights(stopped), _weights(whole)
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
