"""The global-batch helpers: exact over 2 processes holding unequal parts; plain local maths in one process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domainfm.shared.engine.distributed import (
    all_reduce_mean,
    gather_with_grad,
    global_masked_mean,
    is_launch_zero,
    tile_generators,
    tile_uniforms,
    world_size,
)

WORKER = Path(__file__).with_name("helpers_worker.py")


def test_helpers_over_two_processes_with_unequal_parts_give_the_one_process_gradients(tmp_path: Path):
    out = tmp_path / "record.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([*command, str(WORKER), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    record = torch.load(out, weights_only=True)
    spec = importlib.util.spec_from_file_location("helpers_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    x, y, w = worker.batch()
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6)
    for name, index in (("contrastive", 0), ("masked", 1)):
        layer.zero_grad()
        loss = worker.losses(layer, x, y, w)[index]  # one process: the helpers are local maths
        loss.backward()
        assert record[name]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        torch.testing.assert_close(record[name]["grad"], layer.weight.grad, atol=1e-6, rtol=1e-5)
    assert float(record["mean"]) == 0.5
    # the control: the mean of the two processes' own masked means is not the batch's
    assert abs(record["per_process_masked"] - record["masked"]["loss"]) > 0.01


def test_in_one_process_the_helpers_are_local():
    assert world_size() == 1 and is_launch_zero()
    rows = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(rows) is rows
    assert torch.equal(all_reduce_mean(rows), rows.detach())
    assert float(global_masked_mean(torch.tensor(6.0), torch.tensor(4.0))) == 1.5


def test_a_tiles_draws_depend_on_seed_epoch_and_tile_only():
    whole = tile_uniforms(tile_generators(torch.arange(6), seed=3, epoch=1), 5)
    alone = tile_uniforms(tile_generators([4, 5, 0], seed=3, epoch=1), 5)
    assert torch.equal(alone, whole[[4, 5, 0]])
    assert not torch.equal(tile_uniforms(tile_generators([4], seed=3, epoch=2), 5)[0], whole[4])
    assert not torch.equal(tile_uniforms(tile_generators([4], seed=4, epoch=1), 5)[0], whole[4])
    assert len(set(whole[:, 0].tolist())) == 6


def test_launch_zero_follows_the_launcher_environment(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert is_launch_zero()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not is_launch_zero()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert not is_launch_zero()
