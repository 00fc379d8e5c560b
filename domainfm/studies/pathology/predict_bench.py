"""``domainfm bench predict-memory``: peak memory of ``pathology predict`` on a large slide against the tiler's.

On a generated phantom Aperio SVS of ``size`` x ``size`` pixels at 0.5 mpp (JPEG tiles, pyramid), with a
tiny tile classifier trained here on two small phantoms (``test_vit``, ``tile_size``-px tiles at 0.5 mpp,
one epoch: the network's own size is not what is measured):

(a) ``tiler``: ``domainfm pathology tile`` of the slide at the classifier's mpp and tile size, end to end;
(b) ``predict``: ``domainfm pathology predict`` of the same slide with the classifier (GeoJSON, pyramidal
    map, overlay), on the CPU;
(c) ``predict_small`` and ``tiler_small``: both on a slide of a quarter the side (1/16 the area), so
    ``predict - predict_small`` is what predicting grows by with the slide (and the same for the tiler);
(d) ``predict_floor``: a process that loads the classifier and predicts one batch of blank tiles, nothing
    else: the fixed cost of torch, the model and one batch, which the tiler does not pay.

Each runs in its own Python process (peak RSS, ``VmHWM``, is per process); the figures are each process's
peak resident memory, the import of the code it runs included, and the ratio ``predict / tiler``. Both
read tiles through the tiler's bounded reader (two batches in flight), and ``predict`` keeps one value per
tile rather than tiles, so what grows with the slide is the thumbnail-sized planning both share (the
thumbnail, tissue mask and its summed-area table, at most 8192 pixels a side).
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


FLOOR = """
import json, sys, torch
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


def run_predict_memory_benchmark(size: int, tile_px: int, batch: int, folder: Path) -> dict[str, Any]:
    """Runs (a), (b) and (c) in ``folder``; returns the JSON fields."""
    from domainfm.studies.pathology.phantom import write_phantom_slide

    mpp = 0.5
    checkpoint = train_classifier(folder / "train", tile_px, mpp)
    small_size = max(size // 4, 4 * tile_px)
    start = time.perf_counter()
    large = write_phantom_slide(folder / "large.svs", size, seed=0, mpp=mpp).path
    small = write_phantom_slide(folder / "small.svs", small_size, seed=1, mpp=mpp).path
    results: dict[str, Any] = {"slide_px": [size, size], "slide_mb": round(large.stat().st_size / 2**20, 1),
                               "small_slide_px": [small_size, small_size], "tile_px": tile_px, "mpp": mpp,
                               "phantom_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    tile = ["pathology", "tile", "--mpp", str(mpp), "--tile_size", str(tile_px)]
    tiler = measure_process([*tile, str(large), "--out", str(folder / "tiles.zarr")])
    tiler_small = measure_process([*tile, str(small), "--out", str(folder / "tiles_small.zarr")])
    floor = measure_process([str(checkpoint), batch], FLOOR)
    predict = ["pathology", "predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--batch", str(batch)]
    predicted = measure_process([*predict, "--input", str(large), "--out", str(folder / "predicted"), "--json"])
    small_run = measure_process([*predict, "--input", str(small), "--out", str(folder / "predicted_small"), "--json"])
    rows = (folder / "predicted" / "predictions.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    tiles = int(row[header.index("tiles")])
    results.update(
        tiles=tiles,
        tiler_peak_rss_mb=tiler["peak_rss_mb"],
        predict_peak_rss_mb=predicted["peak_rss_mb"],
        ratio_predict_vs_tiler=round(predicted["peak_rss_mb"] / tiler["peak_rss_mb"], 2),
        predict_floor_peak_rss_mb=floor["peak_rss_mb"],
        predict_above_floor_mb=round(predicted["peak_rss_mb"] - floor["peak_rss_mb"], 1),
        tiler_small_peak_rss_mb=tiler_small["peak_rss_mb"],
        tiler_growth_mb=round(tiler["peak_rss_mb"] - tiler_small["peak_rss_mb"], 1),
        predict_small_peak_rss_mb=small_run["peak_rss_mb"],
        predict_growth_mb=round(predicted["peak_rss_mb"] - small_run["peak_rss_mb"], 1),
        tiler_seconds=tiler["seconds"],
        predict_seconds=predicted["seconds"],
        predict_tiles_per_s=round(tiles / predicted["seconds"], 1),
    )
    return results


def bench_predict_memory(
    size: PositiveInt = 40000,
    tile_size: PositiveInt = 224,
    batch: PositiveInt = 64,
    workdir: Path | None = None,
    json: bool = False,
) -> int:
    """Peak RSS of ``pathology predict`` on a large phantom slide against the tiler's on the same slide.

    Args:
        size: Side of the generated phantom slide in pixels (40000 for the documented figure).
        tile_size: Tile side in pixels (at 0.5 mpp on a 0.5-mpp slide).
        batch: Tiles predicted together.
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        return run_predict_memory_benchmark(size, tile_size, batch, folder)

    return run_benchmark(measure, workdir, "domainfm-bench-predict-", json)
