"""The GPU check script and `domainfm bench gpu`: the code path on the CPU, the no-GPU report, FLOP counting."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from domainfm.studies.device_check import WARMUP_STEPS, bench_gpu, step_flops, time_training

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


def test_step_flops_counts_forward_and_backward_of_a_linear_layer():
    layer = nn.Linear(64, 32, bias=False)
    forward = 2 * 8 * 64 * 32
    data = {"x": torch.randn(8, 64)}
    assert step_flops(lambda b: layer(b["x"]).sum(), data) == 2 * forward  # forward + weight gradient
    hidden = {"x": torch.randn(8, 64, requires_grad=True)}  # as inside a deeper network
    assert step_flops(lambda b: layer(b["x"]).sum(), hidden) == 3 * forward  # + gradient for the input


def test_time_training_reports_the_timed_wait_samples_and_utilisation(monkeypatch: pytest.MonkeyPatch):
    """A clock that moves only while the stream hands out a batch (known waits) or a step computes (known
    time): the data-wait fraction, samples/s and FLOP utilisation are then known exactly."""
    from domainfm.studies import device_check

    unit = 1e-8  # virtual seconds: small, so that the tiny layer's FLOP rate is a readable TFLOP/s
    clock = {"now": 0.0, "next": 0}
    waits = [0.0] * (1 + WARMUP_STEPS) + [1.0, 5.0, 0.0, 2.0]  # flop count + warm-up, then the timed steps
    monkeypatch.setattr(device_check, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock["now"])}))

    class Stream:  # one pass of 3 batches of 8 rows; the check cycles through it
        def __iter__(self):
            for i in range(3):
                clock["now"] += waits[clock["next"]] * unit
                clock["next"] += 1
                yield {"tiles": torch.full((8, 64), float(i + 1))}

    layer = nn.Linear(64, 32, bias=False)

    def step(batch: dict) -> torch.Tensor:
        clock["now"] += 3.0 * unit  # compute time of every step
        return layer(batch["tiles"]).float().pow(2).mean()

    result = time_training(step, list(layer.parameters()), Stream(), 4, torch.device("cpu"), peak_tflops=2.0)
    assert clock["next"] == 1 + WARMUP_STEPS + 4
    seconds = (1 + 5 + 0 + 2 + 4 * 3) * unit  # waits and steps of the 4 timed steps
    flops = 2 * (2 * 8 * 64 * 32)  # forward and weight gradient of the layer (the input needs no gradient)
    assert result["steps"] == 4 and result["batch_size"] == 8
    assert result["data_wait_fraction"] == pytest.approx(8 / 20)
    assert result["samples_per_s"] == pytest.approx(round(32 / seconds, 1))
    assert result["achieved_tflops"] == pytest.approx(round(flops * 4 / seconds / 1e12, 3))
    assert result["mfu"] == pytest.approx(round(flops * 4 / seconds / 1e12 / 2.0, 4))


def test_cpu_run_reports_every_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert bench_gpu(device="cpu", steps=2, json=True, workdir=tmp_path) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["gpu"] is None and results["device"] == "cpu"
    assert results["stream"]["stream_samples_per_s"] > 0 and results["stream"]["ratio_vs_decode_limit"] > 0
    for model in ("convirt", "simmim"):
        run = results[model]
        assert run["samples_per_s"] > 0 and run["steps"] == 2
        assert 0 <= run["data_wait_fraction"] < 1
        assert run["step_tflops"] > 0 and run["mfu"] is None  # no peak is known for a CPU
        assert all(torch.isfinite(torch.tensor(run["loss_first_last"])))


@no_cuda
def test_without_a_gpu_the_command_says_so_and_succeeds(capsys: pytest.CaptureFixture[str]):
    assert bench_gpu(json=True) == 0
    assert json.loads(capsys.readouterr().out)["gpu"] is None


@no_cuda
def test_the_script_passes_on_a_cpu_only_machine(tmp_path: Path):
    import sys

    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run([ROOT / "benchmarks" / "gpu_check.sh"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU found" in result.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["gpu"] is None


@pytest.mark.gpu
def test_gpu_run_measures_mfu(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert bench_gpu(device="cuda", steps=5, stream_tiles=2000, peak_tflops=100.0, json=True, workdir=tmp_path) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["gpu"] and 0 < results["convirt"]["mfu"] < 1 and 0 < results["simmim"]["mfu"] < 1
