"""``domainfm bench backbones``: forward (or training-step) throughput of registered backbones.

Timings are interleaved (one step of every backbone per round) and summarised by the median, and every
backbone is reported as a ratio to a baseline measured in the same process, so the numbers survive a
noisy machine. Peak memory is reported on CUDA devices.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from domainfm.shared.backbones.wrapper import create_backbone
from domainfm.shared.config import NonNegativeInt, PositiveInt
from domainfm.shared.engine.runtime import resolve_device

TINY_BACKBONES = ["test_resnet", "test_vit", "test_flexivit", "test_swin", "test_swinv2"]


@dataclass
class BackboneTiming:
    """One backbone's measurement."""

    name: str
    params_m: float
    embed_dim: int
    input_size: int
    ms_per_batch: float
    images_per_s: float
    ratio_to_baseline: float
    peak_memory_mib: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_backbones(
    names: list[str],
    baseline: str,
    in_chans: int = 3,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    device: str = "auto",
    train: bool = False,
    default_size: int = 64,
) -> list[BackboneTiming]:
    """Times ``names`` (the baseline added if missing) and returns one row per backbone, baseline first."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch_device = resolve_device(device)
    names = [baseline, *[n for n in names if n != baseline]]
    models, inputs = {}, {}
    for name in names:
        model = create_backbone(name, in_chans=in_chans).to(torch_device).train(train)
        size = model.img_size or default_size
        models[name] = model
        inputs[name] = torch.randn(batch_size, in_chans, size, size, device=torch_device)

    def step(name: str) -> float:
        model, x = models[name], inputs[name]
        _sync(torch_device)
        start = time.perf_counter()
        if train:
            model.zero_grad(set_to_none=True)
            model(x).float().pow(2).mean().backward()
        else:
            with torch.inference_mode():
                model(x)
        _sync(torch_device)
        return time.perf_counter() - start

    for _ in range(warmup):
        for name in names:
            step(name)
    if torch_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(torch_device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(steps):
        for name in names:
            times[name].append(step(name))
    peak = torch.cuda.max_memory_allocated(torch_device) / 2**20 if torch_device.type == "cuda" else None
    base = statistics.median(times[baseline])
    rows = []
    for name in names:
        median = statistics.median(times[name])
        rows.append(
            BackboneTiming(
                name=name,
                params_m=sum(p.numel() for p in models[name].parameters()) / 1e6,
                embed_dim=models[name].embed_dim,
                input_size=inputs[name].shape[-1],
                ms_per_batch=median * 1e3,
                images_per_s=batch_size / median,
                ratio_to_baseline=base / median,
                peak_memory_mib=peak,
            )
        )
    return rows


def bench_backbones(
    names: list[str] = TINY_BACKBONES,
    baseline: str = "test_resnet",
    in_chans: PositiveInt = 3,
    batch_size: PositiveInt = 8,
    steps: PositiveInt = 10,
    warmup: NonNegativeInt = 2,
    device: str = "auto",
    train: bool = False,
    json: bool = False,
) -> None:
    """Throughput of backbones as ratios to a baseline timed in the same process.

    Args:
        names: Registered backbone names to time.
        baseline: The backbone every ratio is relative to (ratio > 1: faster than the baseline).
        in_chans: Input channels.
        batch_size: Images per step; inputs use each backbone's default size (64 for CNNs).
        steps: Timed rounds (the median is reported).
        warmup: Untimed rounds first.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        train: Time forward + backward instead of inference.
        json: Print JSON rows instead of a table.
    """
    import json as json_module

    rows = measure_backbones(names, baseline, in_chans, batch_size, steps, warmup, device, train)
    if json:
        print(json_module.dumps([asdict(r) for r in rows], indent=2))
        return
    mode = "train step" if train else "inference"
    print(f"{mode}, batch {batch_size}, {in_chans} channels, median of {steps}; ratio = baseline time / time")
    print(f"{'backbone':30s} {'params M':>9s} {'size':>5s} {'ms/batch':>9s} {'img/s':>9s} {'ratio':>6s}")
    for r in rows:
        print(
            f"{r.name:30s} {r.params_m:9.2f} {r.input_size:5d} {r.ms_per_batch:9.2f} {r.images_per_s:9.1f} "
            f"{r.ratio_to_baseline:6.2f}"
        )
