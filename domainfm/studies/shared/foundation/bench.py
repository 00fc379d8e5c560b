"""``domainfm bench convert``: peak memory of converting and loading a checkpoint against the plain way.

A user converting a multi-GB checkpoint without domainfm would write the two obvious lines: ``state =
torch.load(path, weights_only=True)`` then ``safetensors.torch.save_file(state, out)`` (renaming keys in
between costs nothing). That is the baseline. Both run in their own child process on the same generated
timm-layout file (a UNI-shaped ViT-L, widened or shortened to ``--size-mb``), one after the other, and each
reports:

* ``peak_rss``: the kernel's high-water mark of resident memory (``VmHWM``) above the resident memory
  after the imports, file-backed pages included: a memory-mapped source counts while its pages are
  cached, although the kernel may drop them at will;
* ``peak_anon``: the peak of private memory (``RssAnon``, sampled every 5 ms) above its level after the
  imports: the copies a process really holds, which is what runs a machine out of memory.

Loading is measured the same way: ``load_backbone(converted)`` (tensors copied into the model one at a
time) against ``timm.create_model(...).load_state_dict(torch.load(path))``, which holds the model and the
loaded dict together.

Ratios are printed against the source file's size and against the baseline of the same run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from domainfm.shared.config import PositiveInt

CHILD = r"""
import json, sys, threading, time
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

peak = [0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], status("RssAnon"))
        time.sleep(0.005)

mode, source, config, out = sys.argv[1:5]
import torch  # imports happen before the measured part: libraries are not the checkpoint's cost
import safetensors.torch
from domainfm.shared.foundation.convert import convert_checkpoint
import domainfm.shared.foundation.formats.timm_layout
import domainfm.domains.pathology.foundation
import timm
from domainfm.shared.foundation.catalogue import foundation_models
from domainfm.shared.backbones import load_backbone
foundation_models()
base_anon, base_rss = status("RssAnon"), status("VmRSS")
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
if mode == "baseline":
    state = torch.load(source, map_location="cpu", weights_only=True)
    safetensors.torch.save_file(state, out)
elif mode == "convert":
    convert_checkpoint("uni", source, out, config)
elif mode == "load_baseline":
    depth = json.loads(Path(config).read_text())["model_args"]["depth"]
    model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, depth=depth)
    model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
else:
    model = load_backbone(out)
seconds = time.perf_counter() - start
stop.set(); thread.join()
peak[0] = max(peak[0], status("RssAnon"))
print(json.dumps({"seconds": seconds, "peak_rss": status("VmHWM"), "peak_anon": peak[0], "base_anon": base_anon,
                  "base_rss": base_rss}))
"""


def _make_source(folder: Path, size_mb: int) -> tuple[Path, Path, int]:
    """A timm-layout ViT-L/16 state dict of about ``size_mb`` MB (depth chosen to fit), and its config."""
    per_block = 12 * 1024 * 1024 + 13 * 1024  # fp32 params of one ViT-L block (qkv, proj, mlp, norms, LayerScale)
    depth = max(1, round(size_mb * 1024 * 1024 / 4 / per_block))
    import timm

    with torch.device("meta"):
        shapes = {
            k: (tuple(v.shape), v.dtype)
            for k, v in timm.create_model(
                "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, depth=depth
            )
            .state_dict()
            .items()
        }
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator, dtype=dtype) * 0.02 for k, (shape, dtype) in shapes.items()}
    source = folder / "pytorch_model.bin"
    torch.save(state, source)
    del state
    config = folder / "config.json"
    config.write_text(json.dumps({"architecture": "vit_large_patch16_224", "model_args": {"depth": depth}}))
    return source, config, depth


def _run(mode: str, source: Path, config: Path, out: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(source), str(config), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_convert(size_mb: PositiveInt = 1024, workdir: Path | None = None, json_out: bool = False) -> int:
    """Peak memory of `models convert` vs torch.load + safetensors save_file on the same generated file.

    Args:
        size_mb: Size of the generated source checkpoint (a ViT-L/16 cut or stretched to fit), MB.
        workdir: Where to write the files (a temporary folder, removed afterwards, when unset).
        json_out: Print one JSON object instead of the table.
    """
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        folder = Path(folder)
        source, config, depth = _make_source(folder, size_mb)
        size = source.stat().st_size
        baseline = _run("baseline", source, config, folder / "baseline.safetensors")
        (folder / "baseline.safetensors").unlink()
        converted = _run("convert", source, config, folder / "uni.safetensors")
        load_baseline = _run("load_baseline", source, config, folder / "unused")
        loaded = _run("load", source, config, folder / "uni.safetensors")
    rows = {
        "convert baseline: torch.load + save_file": baseline,
        "domainfm models convert": converted,
        "load baseline: timm + load_state_dict": load_baseline,
        "domainfm load_backbone(converted)": loaded,
    }
    report = {
        "file_mb": size / 2**20,
        "depth": depth,
        **{
            name: {
                "seconds": row["seconds"],
                "peak_rss_mb": (row["peak_rss"] - row["base_rss"]) / 2**20,
                "peak_anon_mb": (row["peak_anon"] - row["base_anon"]) / 2**20,
                "peak_rss_over_file": (row["peak_rss"] - row["base_rss"]) / size,
                "peak_anon_over_file": (row["peak_anon"] - row["base_anon"]) / size,
            }
            for name, row in rows.items()
        },
    }
    report["anon_ratio_convert_over_baseline"] = (converted["peak_anon"] - converted["base_anon"]) / max(
        1, baseline["peak_anon"] - baseline["base_anon"]
    )
    report["rss_ratio_convert_over_baseline"] = (converted["peak_rss"] - converted["base_rss"]) / max(
        1, baseline["peak_rss"] - baseline["base_rss"]
    )
    report["anon_ratio_load_over_baseline"] = (loaded["peak_anon"] - loaded["base_anon"]) / max(
        1, load_baseline["peak_anon"] - load_baseline["base_anon"]
    )
    if json_out:
        print(json.dumps(report, indent=2))
        return 0
    print(f"source: ViT-L/16 timm layout, depth {depth}, {report['file_mb']:.0f} MB (fp32)")
    print(f"{'':42s} {'seconds':>8s} {'peak RSS MB':>12s} {'/file':>6s} {'peak anon MB':>13s} {'/file':>6s}")
    for name in rows:
        row = report[name]
        print(
            f"{name:42s} {row['seconds']:8.1f} {row['peak_rss_mb']:12.0f} {row['peak_rss_over_file']:6.2f} "
            f"{row['peak_anon_mb']:13.0f} {row['peak_anon_over_file']:6.2f}"
        )
    print(
        f"convert / baseline: peak anon {report['anon_ratio_convert_over_baseline']:.2f}x, "
        f"peak RSS {report['rss_ratio_convert_over_baseline']:.2f}x; "
        f"load / baseline: peak anon {report['anon_ratio_load_over_baseline']:.2f}x"
    )
    return 0


__all__ = ["bench_convert"]
