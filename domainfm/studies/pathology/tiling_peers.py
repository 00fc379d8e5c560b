"""``domainfm bench tiling --peers`` and ``--sizes``: the tiler against its peers, and how its cost grows.

``--peers``: on the benchmark's phantom Aperio SVS (0.5 mpp), every tool cuts the same 224-px tiles at
0.5 mpp with its own tissue detection on, and stores them where it stores them:

* ``domainfm``: ``pathology tile`` (:func:`~domainfm.domains.pathology.tiling.tile_slides`, 2 reading
  threads, 2 ingest workers) into a tile store;
* ``tiatoolbox``: its documented patch-extraction path (``get_patch_extractor("slidingwindow", ...)``
  with ``input_mask="otsu"``, ``resolution=0.5, units="mpp"``, ``min_mask_ratio=0.5``), every patch
  written into one ``.npy`` (tiatoolbox has no tile writer; its example keeps the patches in memory);
* ``lazyslide``: ``zs.pp.find_tissues`` + ``zs.pp.tile_tissues(wsi, 224, mpp=0.5)`` (coordinates saved in
  the slide's SpatialData zarr by ``wsi.write()``), then the pixels through its own ``wsi.ds.tile_images``
  dataset in a 2-worker ``DataLoader``, written into one ``.npy``.

Each tool runs in its own child process (:mod:`.peer_tilers`, which imports no domainfm), so the peak RSS
(``VmHWM``) is its own, imports included. The peers cannot live in domainfm's environment: tiatoolbox
2.1.3 pins ``torch<2.13``, ``numpy<2.4.4`` and ``dask<2026.7.1``, lazyslide 0.13 (through anndata and
spatialdata) ``pandas<3`` and ``dask<2026.1.2``, and the two ``dask`` ranges are disjoint, so
``make bench-peers-env`` builds one environment per peer, ``.venv-peers/<peer>``, where the children run
(:func:`find_peer_python`). A peer that no interpreter imports is reported as not installed.
``ratio_vs_<peer>`` = domainfm's tiles/s / the peer's; ``agreement_<peer>`` = the Jaccard index of
the slide area the two tile sets cover, and ``<peer>_common_tiles`` the tile origins both kept
(:func:`coordinate_agreement`; the tools' tissue detectors differ, so the counts differ, and the agreement
says by how much).

``--sizes``: the tiler alone (one child process per slide size and round), tiles/s and peak RSS per size.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import domainfm

PEERS = ("tiatoolbox", "lazyslide")
PEER_SCRIPT = Path(__file__).with_name("peer_tilers.py")
ENVS_VARIABLE = "DOMAINFM_PEERS_ENVS"
DEFAULT_ENVS = ".venv-peers"
MISSING = (
    "not installed: it cannot share domainfm's environment (see docs/benchmarks.md); "
    "run `make bench-peers-env` (one environment per peer under .venv-peers/) or pass --peer_envs"
)


def coordinate_agreement(ours: np.ndarray, theirs: np.ndarray, side: int = 224, cell: int = 16) -> dict[str, Any]:
    """Counts and overlap of two sets of ``side`` x ``side`` tiles given by level-0 origins ``[N, 2]`` (x, y).

    ``common_tiles``: origins both kept. ``agreement``: the Jaccard index of the slide area the two tile sets
    cover, on a grid of ``cell`` level-0 pixels (1.0 when both cover the same area; a tool whose grid starts
    elsewhere, as lazyslide's starts at each tissue's bounding box, shares no origin but may cover the same
    tissue).
    """
    ours, theirs = np.asarray(ours).reshape(-1, 2), np.asarray(theirs).reshape(-1, 2)
    a = {(int(x), int(y)) for x, y in ours}
    b = {(int(x), int(y)) for x, y in theirs}
    both = np.concatenate([ours, theirs]) if len(a | b) else np.zeros((1, 2), np.int64)
    shape = tuple(int(v) // cell + side // cell + 2 for v in both.max(axis=0)[::-1])
    covered = []
    for origins in (ours, theirs):
        mask = np.zeros(shape, bool)
        for x, y in origins:
            mask[int(y) // cell : (int(y) + side) // cell, int(x) // cell : (int(x) + side) // cell] = True
        covered.append(mask)
    union = int(np.count_nonzero(covered[0] | covered[1]))
    common = int(np.count_nonzero(covered[0] & covered[1]))
    return {"tiles": len(b), "common_tiles": len(a & b), "agreement": round(common / union, 3) if union else 1.0}


def _child_env() -> dict[str, str]:
    """The environment of a child: this checkout's domainfm first on the path, one BLAS thread per process."""
    env = dict(os.environ)
    root = str(Path(domainfm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_child(command: list[str], timeout: float = 3600) -> dict[str, Any]:
    """Runs a benchmark child and returns the JSON object on the last line of its stdout."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_child_env(), check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark child {command[1:4]} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1])


def peer_version(python: str, peer: str) -> str | None:
    """``peer``'s installed version under the interpreter ``python``, or None when it is not importable there."""
    code = f"import importlib.metadata as m, {peer}; print(m.version({peer!r}))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except OSError:
        return None
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None


def find_peer_python(peer: str, envs: Path | None) -> tuple[str, str] | None:
    """The first interpreter that imports ``peer``, and the version it finds.

    Tried in order: ``<envs>/<peer>/bin/python``, ``$DOMAINFM_PEERS_ENVS/<peer>/bin/python``,
    ``.venv-peers/<peer>/bin/python`` (what ``make bench-peers-env`` builds) and this interpreter.
    """
    folders = [envs, os.environ.get(ENVS_VARIABLE), DEFAULT_ENVS]
    candidates = [str(Path(f) / peer / "bin" / "python") for f in folders if f] + [sys.executable]
    for python in dict.fromkeys(candidates):
        if python != sys.executable and not Path(python).is_file():
            continue
        version = peer_version(python, peer)
        if version:
            return python, version
    return None


def domainfm_tile(slide: Path, out: Path, tile_px: int, mpp: float, threads: int) -> dict[str, Any]:
    """``pathology tile`` of one slide in a child process: tiles, seconds, tiles/s, peak RSS; origins in ``out``.npy."""
    command = [sys.executable, "-m", __name__, str(slide), str(out), str(tile_px), str(mpp), str(threads)]
    return run_child(command)


def _tile_here(slide: Path, out: Path, tile_px: int, mpp: float, threads: int) -> dict[str, Any]:
    """The child's side of :func:`domainfm_tile` (timed from the call, imports done, to the finished store)."""
    from domainfm.domains.pathology.tiling import TilingParams, tile_slides
    from domainfm.shared.tiles.store import TileStore

    start = time.perf_counter()
    params = TilingParams(mpps=(mpp,), tile_px=tile_px, threads=threads)
    summary = tile_slides([slide], out, params, workers=2, progress=False)
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise RuntimeError(summary.report())
    index = TileStore(out).index
    np.save(str(out) + ".origins.npy", np.stack([index["x"], index["y"]], axis=1).astype(np.int64))
    return {
        "tiles": int(summary.n_tiles),
        "seconds": round(seconds, 2),
        "tiles_per_s": round(summary.n_tiles / seconds, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peer_tile(python: str, peer: str, slide: Path, out: Path, tile_px: int, mpp: float) -> dict[str, Any]:
    """One peer's tiling of ``slide`` in a child process run by ``python`` (:mod:`.peer_tilers`)."""
    return run_child([python, str(PEER_SCRIPT), peer, str(slide), str(out), str(tile_px), str(mpp)])


def run_tiling_peers(
    slide: Path, folder: Path, tile_px: int, threads: int, rounds: int, envs: Path | None = None
) -> dict[str, Any]:
    """Domainfm and every peer found on the same slide, ``rounds`` interleaved rounds; returns the JSON fields."""
    results: dict[str, Any] = {"peer_rounds": rounds}
    found = {peer: find_peer_python(peer, envs) for peer in PEERS}
    runs: dict[str, list[dict[str, Any]]] = {"domainfm": []} | {p: [] for p in PEERS if found[p]}
    for _ in range(rounds):
        for tool in runs:
            out = folder / f"peer-{tool}"
            shutil.rmtree(out, ignore_errors=True)  # the previous round's output: not this round's work
            if tool == "domainfm":
                runs[tool].append(domainfm_tile(slide, out / "tiles.zarr", tile_px, 0.5, threads))
            else:
                runs[tool].append(peer_tile(found[tool][0], tool, slide, out, tile_px, 0.5))  # type: ignore[index]
    ours = np.load(folder / "peer-domainfm" / "tiles.zarr.origins.npy")
    for tool, measured in runs.items():
        rate = statistics.median(m["tiles_per_s"] for m in measured)
        results[f"{tool}_tiles"] = measured[-1]["tiles"]
        results[f"{tool}_tiles_per_s"] = round(rate, 1)
        results[f"{tool}_tiles_per_s_rounds"] = [m["tiles_per_s"] for m in measured]
        results[f"{tool}_peak_rss_mb"] = round(statistics.median(m["peak_rss_mb"] for m in measured), 1)
        if tool == "domainfm":
            continue
        python_used, version = found[tool]  # type: ignore[misc]
        results[f"{tool}_version"] = version
        results[f"{tool}_python"] = python_used
        results[f"{tool}_settings"] = measured[-1]["settings"]
        agreement = coordinate_agreement(ours, np.load(folder / f"peer-{tool}" / "origins.npy"), tile_px)
        results[f"{tool}_common_tiles"] = agreement["common_tiles"]
        results[f"agreement_{tool}"] = agreement["agreement"]
        results[f"ratio_vs_{tool}"] = round(results["domainfm_tiles_per_s"] / rate, 2)
        per_round = zip(runs["domainfm"], measured, strict=True)  # the same round: the same minute of the machine
        results[f"ratio_vs_{tool}_rounds"] = [round(a["tiles_per_s"] / b["tiles_per_s"], 2) for a, b in per_round]
    for peer in PEERS:
        if not found[peer]:
            results[peer] = MISSING
    return results


def run_growth(sizes: list[int], folder: Path, tile_px: int, threads: int, rounds: int) -> dict[str, Any]:
    """The tiler alone on phantom slides of each side in ``sizes``: tiles/s and child peak RSS per size."""
    from domainfm.studies.pathology.phantom import write_phantom_slide

    results: dict[str, Any] = {"sizes": sizes, "rounds": rounds, "threads": threads}
    for size in sizes:
        start = time.perf_counter()
        slide = write_phantom_slide(folder / f"growth-{size}.svs", size, seed=0, mpp=0.5)
        results[f"phantom_{size}_seconds"] = round(time.perf_counter() - start, 1)
        measured = []
        for _ in range(rounds):
            out = folder / f"growth-{size}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            measured.append(domainfm_tile(slide.path, out, tile_px, 0.5, threads))
        results[f"tiles_{size}"] = measured[-1]["tiles"]
        results[f"tiles_per_s_{size}"] = round(statistics.median(m["tiles_per_s"] for m in measured), 1)
        results[f"tiles_per_s_{size}_rounds"] = [m["tiles_per_s"] for m in measured]
        results[f"peak_rss_mb_{size}"] = round(statistics.median(m["peak_rss_mb"] for m in measured), 1)
        results[f"peak_rss_mb_{size}_rounds"] = [m["peak_rss_mb"] for m in measured]
        shutil.rmtree(folder / f"growth-{size}.zarr", ignore_errors=True)
        for path in folder.glob(f"growth-{size}.*"):  # this size's slide and truth: the next may be large
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    first, last = sizes[0], sizes[-1]
    results["tiles_per_s_ratio_largest_vs_smallest"] = round(
        results[f"tiles_per_s_{last}"] / results[f"tiles_per_s_{first}"], 2
    )
    results["peak_rss_ratio_largest_vs_smallest"] = round(
        results[f"peak_rss_mb_{last}"] / results[f"peak_rss_mb_{first}"], 2
    )
    return results


if __name__ == "__main__":  # the child of domainfm_tile
    slide_arg, out_arg, px, mpp_arg, threads_arg = sys.argv[1:6]
    print(json.dumps(_tile_here(Path(slide_arg), Path(out_arg), int(px), float(mpp_arg), int(threads_arg))))
