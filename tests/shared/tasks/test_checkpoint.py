from pathlib import Path

import pytest
import torch

from domainfm.shared.backbones import CheckpointError
from domainfm.shared.tasks.checkpoint import (
    checkpoint_metadata,
    load_weights,
    read_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)


def test_tensors_and_json_metadata_round_trip(tmp_path: Path):
    tensors = {"a": torch.arange(6.0).view(2, 3).T, "b": torch.ones(2, requires_grad=True)}  # not contiguous
    path = save_checkpoint(tmp_path / "sub" / "c.safetensors", tensors, {"k1": {"x": [1, 2]}, "k2": "text"})
    assert path == tmp_path / "sub" / "c.safetensors" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    weights, metadata = read_checkpoint(path)
    assert torch.equal(weights["a"], tensors["a"]) and torch.equal(weights["b"], torch.ones(2))
    assert metadata == {"k1": {"x": [1, 2]}, "k2": "text"}
    assert read_checkpoint_metadata(path, "k1", "make-it") == {"x": [1, 2]}


def test_a_module_keeps_shared_tensors_once(tmp_path: Path):
    shared = torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(shared, shared)
    path = save_checkpoint(tmp_path / "m.safetensors", model, {"meta": 1})
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 2))
    fresh = torch.nn.Sequential(fresh[0], fresh[0])
    load_weights(fresh, path, "make-it")
    assert torch.equal(fresh[1].weight, shared.weight)


def test_a_failed_write_leaves_no_file(tmp_path: Path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.safetensors", {"a": torch.ones(1)}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_errors_name_the_file(tmp_path: Path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors is not a readable safetensors file"):
        read_checkpoint(junk)
    with pytest.raises(ValueError, match=r"nothing\.safetensors does not exist"):
        checkpoint_metadata(tmp_path / "nothing.safetensors", ValueError)
    path = save_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(3, 2), {"other": {}})
    with pytest.raises(
        CheckpointError, match=r"c\.safetensors has no wanted metadata: it was not written by `make-it`"
    ):
        read_checkpoint_metadata(path, "wanted", "make-it")
    with pytest.raises(CheckpointError, match=r"c\.safetensors does not fit.*make-it"):
        load_weights(torch.nn.Linear(4, 2), path, "make-it")  # reshaped
    with pytest.raises(CheckpointError, match=r"missing \['0\.bias', '0\.weight'\]"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 2)), path, "make-it")
