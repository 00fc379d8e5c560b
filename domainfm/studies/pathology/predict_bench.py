"""``domainfm bench predict-memory``: peak memory of ``pathology predict`` on large slides against the tiler's.

On generated phantom Aperio SVS slides of ``size``, ``size / 2`` and ``size / 4`` pixels a side at 0.5 mpp
(JPEG tiles, pyramid), with a tiny tile classifier trained here on two small phantoms (``test_vit``,
``tile_size``-px tiles at 0.5 mpp, one epoch: the network's own size is not what is measured), each in its
own Python process (peak RSS, ``VmHWM``, is per process; imports included):

(a) ``tiler``: ``domainfm pathology tile`` of each slide at the classifier's mpp and tile size, end to end;
(b) ``predict``: ``domainfm pathology predict`` of each slide with the classifier (GeoJSON, pyramidal map,
    overlay), on the CPU;
(c) ``tiler_floor``: a process that imports the tiler's modules and does nothing: what the tiler costs
    before it reads a slide;
(d) ``predict_floor``: a process that imports ``predict``'s modules, loads the classifier and predicts one
    batch of blank tiles: the fixed cost of torch, the model and one batch, which the tiler does not pay.

Reported: every absolute peak and the ratio ``predict / tiler`` (the baseline, not softened); each
command's peak above its own floor (``predict - predict_floor`` against ``tiler - tiler_floor``: what
handling the slide costs each) and their ratio; and the growth from the smallest to the largest slide (16
times the area), which is what would make a larger slide fail. Both read tiles through the tiler's
bounded reader, and ``predict`` keeps one value per tile rather than tiles.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from domainfm.shared.config import PositiveInt

CHILD = """
import json, sys
from domainfm.cli import main
from domainfm.shared.engine.memory import peak_memory_mb
status = main(json.loads(sys.argv[1]))
print("BENCH " + json.dumps({"status": status, "peak_rss_mb": peak_memory_mb()}))
"""

TILER_FLOOR = """
import json, sys
import domainfm.cli, domainfm.domains.pathology.commands, domainfm.domains.pathology.tiling
import domainfm.shared.tiles.ingest, domainfm.shared.tiles.store
from domainfm.shared.engine.memory import peak_memory_mb
print("BENCH " + json.dumps({"status": 0, "peak_rss_mb": peak_memory_mb()}))
"""

FLOOR = """
import json, sys, torch
import domainfm.cli, domainfm.domains.pathology.predict, domainfm.domains.pathology.predict_maps
import domainfm.domains.pathology.slide_inputs, domainfm.domains.pathology.tiling, domainfm.shared.predict
import matplotlib.backends.backend_agg, matplotlib.figure, tifffile
from domainfm.shared.deploy import load_deployable, predict
from domainfm.shared.engine.memory import peak_memory_mb
checkpoint, batch = json.loads(sys.argv[1])
deployable = load_deployable(checkpoint)
size = deployable.card.spatial_shape[0]
predict(deployable, torch.zeros(batch, 3, size, size))
print("BENCH " + json.dumps({"status": 0, "peak_rss_mb": peak_memory_mb()}))
"""


def measure_process(argv: list[str], code: str = CHILD) -> dict[str, Any]:
    """``domainfm ARGV`` (or ``code`` with ``ARGV``) in a fresh Python process: status, peak RSS (MB), seconds."""
    import os

    import domainfm

    # the child imports this very domainfm (a checkout ahead of an installed copy stays ahead)
    source = str(Path(domainfm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"domainfm {' '.join(map(str, argv))} failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1][len("BENCH ") :])
    if result["status"] != 0:
        raise RuntimeError(f"domainfm {' '.join(map(str, argv))} exited with {result['status']}: {done.stderr[-2000:]}")
    return {"peak_rss_mb": round(result["peak_rss_mb"], 1), "seconds": round(seconds, 1)}


def train_classifier(folder: Path, tile_px: int, mpp: float) -> Path:
    """A tiny tile classifier (``test_vit``, one epoch) on two small phantom slides at ``mpp``."""
    from domainfm.cli import main
    from domainfm.studies.pathology.phantom import write_phantom_slide

    folder.mkdir(parents=True, exist_ok=True)
    side = max(2048, 8 * tile_px)
    slides = [str(write_phantom_slide(folder / f"train_{i}.svs", side, seed=10 + i, mpp=mpp).path) for i in range(2)]
    (folder / "splits.csv").write_text("slide,split\ntrain_0,train\ntrain_1,test\n")
    store, out = folder / "train.zarr", folder / "classifier"
    tile = ["pathology", "tile", *slides, "--out", str(store), "--mpp", str(mpp), "--tile_size", str(tile_px),
            "--truth_labels", "--splits", str(folder / "splits.csv"), "--workers", "1"]  # fmt: skip
    train = ["pathology", "train", "--store", str(store), "--out", str(out), "--backbone", "test_vit",
             "--epochs", "1", "--device", "cpu", "--json"]  # fmt: skip
    for argv in (tile, train):
        if main(argv) != 0:
            raise RuntimeError(f"domainfm {' '.join(map(str, argv))} failed")
    return out / "tile_classifier.safetensors"


def slide_sizes(size: int, tile_px: int) -> list[int]:
    """The slide sides measured: ``size / 4``, ``size / 2`` and ``size`` (each at least four tiles)."""
    return sorted({max(size // 4, 4 * tile_px), max(size // 2, 4 * tile_px), size})


def run_predict_memory_benchmark(size: int, tile_px: int, batch: int, folder: Path) -> dict[str, Any]:
    """Runs (a) to (d) in ``folder``; returns the JSON fields (module docstring)."""
    from domainfm.studies.pathology.phantom import write_phantom_slide

    mpp = 0.5
    checkpoint = train_classifier(folder / "train", tile_px, mpp)
    tile = ["pathology", "tile", "--mpp", str(mpp), "--tile_size", str(tile_px)]
    predict = ["pathology", "predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--batch", str(batch)]
    tiler_floor = measure_process([], TILER_FLOOR)["peak_rss_mb"]
    predict_floor = measure_process([str(checkpoint), batch], FLOOR)["peak_rss_mb"]
    slides = []
    for k, side in enumerate(slide_sizes(size, tile_px)):
        start = time.perf_counter()
        seed = 0 if side == size else k + 1  # the largest slide is the one earlier figures were measured on
        path = write_phantom_slide(folder / f"slide_{side}.svs", side, seed=seed, mpp=mpp).path
        phantom_seconds = time.perf_counter() - start
        tiler = measure_process([*tile, str(path), "--out", str(folder / f"tiles_{side}.zarr")])
        out = folder / f"predicted_{side}"
        predicted = measure_process([*predict, "--input", str(path), "--out", str(out), "--json"])
        rows = (out / "predictions.csv").read_text().splitlines()
        header, row = rows[0].split(","), rows[1].split(",")
        tiles = int(row[header.index("tiles")])
        slides.append({
            "slide_px": side, "slide_mb": round(path.stat().st_size / 2**20, 1), "tiles": tiles,
            "tiler_peak_rss_mb": tiler["peak_rss_mb"], "predict_peak_rss_mb": predicted["peak_rss_mb"],
            "tiler_above_floor_mb": round(tiler["peak_rss_mb"] - tiler_floor, 1),
            "predict_above_floor_mb": round(predicted["peak_rss_mb"] - predict_floor, 1),
            "tiler_seconds": tiler["seconds"], "predict_seconds": predicted["seconds"],
            "predict_tiles_per_s": round(tiles / predicted["seconds"], 1),
            "phantom_seconds": round(phantom_seconds, 1),
        })  # fmt: skip
        path.unlink()  # a 40000-px phantom is large; the next one is written fresh
    largest, smallest = slides[-1], slides[0]
    return {
        "tile_px": tile_px,
        "mpp": mpp,
        "batch": batch,
        "tiler_floor_mb": tiler_floor,
        "predict_floor_mb": predict_floor,
        "slides": slides,
        "tiles": largest["tiles"],
        "tiler_peak_rss_mb": largest["tiler_peak_rss_mb"],
        "predict_peak_rss_mb": largest["predict_peak_rss_mb"],
        "ratio_predict_vs_tiler": round(largest["predict_peak_rss_mb"] / largest["tiler_peak_rss_mb"], 2),
        "tiler_above_floor_mb": largest["tiler_above_floor_mb"],
        "predict_above_floor_mb": largest["predict_above_floor_mb"],
        "ratio_above_floor": round(largest["predict_above_floor_mb"] / max(largest["tiler_above_floor_mb"], 1e-9), 2),
        "tiler_growth_mb": round(largest["tiler_peak_rss_mb"] - smallest["tiler_peak_rss_mb"], 1),
        "predict_growth_mb": round(largest["predict_peak_rss_mb"] - smallest["predict_peak_rss_mb"], 1),
    }


def bench_predict_memory(
    size: PositiveInt = 40000,
    tile_size: PositiveInt = 224,
    batch: PositiveInt = 64,
    workdir: Path | None = None,
    json: bool = False,
) -> int:
    """Peak RSS of ``pathology predict`` on phantom slides of three sizes against the tiler's on the same slides.

    Args:
        size: Side of the largest generated phantom slide in pixels (40000 for the documented figure); slides
            of half and a quarter the side are measured too.
        tile_size: Tile side in pixels (at 0.5 mpp on a 0.5-mpp slide).
        batch: Tiles predicted together.
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        return run_predict_memory_benchmark(size, tile_size, batch, folder)

    return run_benchmark(measure, workdir, "domainfm-bench-predict-", json)
