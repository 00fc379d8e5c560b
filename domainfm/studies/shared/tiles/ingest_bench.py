"""``domainfm bench ingest``: ingest of many small image files against their decode limit, in one run.

Generated in the work folder (greyscale radiograph-like pictures: smooth anatomy-like shading plus
noise, in two class folders that serve as the labels):

* ``png256``: ``images`` PNGs of 256 x 256 px, and ``png256_2n``: twice as many (the same files and as
  many again), for how time grows;
* ``mixed``: ``images`` files: 70 % PNG and 20 % JPEG of random, mostly non-square sides of 256-1024 px,
  10 % 16-bit CR DICOMs of 256-512 px (the radiology phantom's writer: rescale slope, VOI window).

Measured ``rounds`` times, interleaved (the machine's noise hits every measurement alike), medians
reported:

(a) ``domainfm``: ``radiology ingest`` of the folder (labels from the class folders, ``size`` px letterbox,
    ``workers`` threads, the defaults) into a new store, in sources/s from the call to the complete store;
(b) ``per_source`` (``png256`` only): the same ingest staging every source on its own (one staging pack,
    a folder of ~10 arrays and a journal, per source, flushed at once), as ingest staged before shared
    packs (``speedup_vs_per_source``);
(c) ``decode_limit``: the same files decoded and resized to the same letterboxed size by ``workers``
    threads in a plain loop, nothing written (PNG/JPEG: Pillow ``convert("L")`` and ``resize(BILINEAR)``;
    DICOM: pydicom's ``pixel_array`` and Pillow's resize of the float image):
    ``ratio_vs_decode_limit`` = (a) / (c);
(d) ``png256_2n``: (a) on twice the sources; ``time_ratio_2n_vs_n`` is 2.0 when time grows linearly.

Ingest does more than the decode limit by design: the display transform (8-bit / 255 in float), the
model contract's antialiased resize in float (bit for bit what a deployed model computes), exact
statistics, fingerprints and checksums; the ratio says what that costs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

from domainfm.shared.config import PositiveInt
from domainfm.shared.engine.memory import peak_memory_mb

CLASSES = ("normal", "finding")


def picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A radiograph-like greyscale picture in [0, 1]: smooth shading, two 'lungs' and noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    y, x = yy / height, xx / width
    phase = rng.uniform(0, 6.28, 2)
    body = 0.55 + 0.2 * np.sin(3 * x + phase[0]) * np.cos(2 * y + phase[1])
    lungs = sum(np.exp(-(((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.25) ** 2)) for cx in (0.32, 0.68))
    return np.clip(body - 0.35 * lungs + rng.normal(0, 0.03, (height, width)), 0, 1)


def write_images(folder: Path, n: int, kind: str, seed: int) -> list[Path]:
    """``n`` files in ``folder/<class>/``: ``png256`` or ``mixed`` (see the module docstring)."""
    from PIL import Image

    from domainfm.studies.radiology.phantom import write_dicom

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        target = folder / CLASSES[i % 2]
        target.mkdir(parents=True, exist_ok=True)
        draw = rng.random()
        if kind == "png256":
            fmt, (h, w) = "png", (256, 256)
        elif draw < 0.1:
            fmt, (h, w) = "dcm", tuple(int(v) for v in rng.integers(256, 513, 2))
        else:
            fmt, (h, w) = ("jpg" if draw < 0.3 else "png"), tuple(int(v) for v in rng.integers(256, 1025, 2))
        image = picture(rng, h, w)
        path = target / f"{kind}-{seed}-{i:06d}.{fmt}"
        if fmt == "dcm":
            write_dicom(path, image, monochrome1=False, study_id=path.stem)
        else:
            Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def _plain_decode(path: Path, size: int) -> np.ndarray:
    """What a user's own loop does: decode, resize to the letterboxed size; nothing else."""
    from PIL import Image

    from domainfm.shared.model.transform import letterbox_box

    if path.suffix == ".dcm":
        import pydicom

        image = Image.fromarray(pydicom.dcmread(path).pixel_array.astype(np.float32), mode="F")
    else:
        image = Image.open(path)
        image = image.convert("L") if image.mode != "L" else image
    _, _, new_h, new_w = letterbox_box(image.height, image.width, size)
    return np.asarray(image.resize((new_w, new_h), Image.BILINEAR))


def decode_limit(paths: list[Path], size: int, workers: int) -> float:
    """Files/s when ``workers`` threads only decode and resize them."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda p: _plain_decode(p, size), paths):
            pass
    return len(paths) / (time.perf_counter() - start)


def ingest_rate(folder: Path, out: Path, size: int, workers: int, n: int, per_source: bool = False) -> float:
    """Sources/s of ``radiology ingest`` of ``folder`` into a new store at ``out`` (removed afterwards)."""
    from domainfm.domains.radiology.data import ingest_studies
    from domainfm.shared.tiles import packs

    shutil.rmtree(out, ignore_errors=True)  # only this benchmark's own store
    one_per_pack = mock.patch.object(packs, "MAX_PACK_SOURCES", 1) if per_source else mock.MagicMock()
    start = time.perf_counter()
    with one_per_pack:
        summary, _ = ingest_studies(folder, None, out, size, labels=folder, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if not summary.ok or summary.n_tiles != n:
        raise RuntimeError(f"ingest of {folder} gave {summary.n_tiles} of {n} tiles: {summary.report()}")
    shutil.rmtree(out)
    return n / seconds


def _link_folder(source: Path, target: Path) -> None:
    for path in source.rglob("*.*"):
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)


def run_ingest_benchmark(
    images: int, rounds: int, size: int, workers: int, per_source: bool, workdir: Path
) -> dict[str, float | int | list]:
    """Builds the data in ``workdir`` and measures (a)-(d); returns the JSON fields."""
    png = workdir / "png256"
    png_files = write_images(png, images, "png256", seed=0)
    double = workdir / "png256_2n"
    _link_folder(png, double)
    write_images(double, images, "png256", seed=1)
    mixed = workdir / "mixed"
    mixed_files = write_images(mixed, images, "mixed", seed=2)
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    ingest_rate(png, workdir / "warm.zarr", size, workers, images)  # imports and first-call costs, not timed
    for _ in range(rounds):
        add("png256_decode_limit", decode_limit(png_files, size, workers))
        add("png256_domainfm", ingest_rate(png, workdir / "store.zarr", size, workers, images))
        if per_source:
            add("png256_per_source", ingest_rate(png, workdir / "store.zarr", size, workers, images, True))
        add("png256_2n_domainfm", ingest_rate(double, workdir / "store.zarr", size, workers, 2 * images))
        add("mixed_decode_limit", decode_limit(mixed_files, size, workers))
        add("mixed_domainfm", ingest_rate(mixed, workdir / "store.zarr", size, workers, images))
    kinds = [p.suffix for p in mixed_files]
    results: dict[str, float | int | list] = {
        "images": images,
        "mixed_files": f"{kinds.count('.png')} png, {kinds.count('.jpg')} jpg, {kinds.count('.dcm')} dcm",
        "size": size,
        "workers": workers,
        "rounds": rounds,
    }
    for name, values in samples.items():
        results[f"{name}_sources_per_s"] = round(statistics.median(values), 1)
        results[f"{name}_rounds"] = [round(v, 1) for v in values]
    median = {name: statistics.median(values) for name, values in samples.items()}
    results["ratio_vs_decode_limit"] = round(median["png256_domainfm"] / median["png256_decode_limit"], 2)
    results["mixed_ratio_vs_decode_limit"] = round(median["mixed_domainfm"] / median["mixed_decode_limit"], 2)
    if per_source:
        results["speedup_vs_per_source"] = round(median["png256_domainfm"] / median["png256_per_source"], 2)
    seconds_n, seconds_2n = images / median["png256_domainfm"], 2 * images / median["png256_2n_domainfm"]
    results["time_ratio_2n_vs_n"] = round(seconds_2n / seconds_n, 2)
    results["peak_rss_mb"] = round(peak_memory_mb(), 1)
    return results


def bench_ingest(
    images: PositiveInt = 2000,
    rounds: PositiveInt = 3,
    size: PositiveInt = 224,
    workers: PositiveInt = 2,
    per_source: bool = True,
    workdir: Path | None = None,
    json: bool = False,
) -> int:
    """Ingest of many small images (PNG, JPEG, DICOM) against the decode limit and per-source staging.

    Args:
        images: Files per data set (``png256`` and ``mixed``; ``png256_2n`` has twice as many).
        rounds: Interleaved rounds of every measurement (medians are reported).
        size: The store's tile side (letterboxed), as ``radiology ingest --size``.
        workers: Ingest threads, and decoding threads of the decode limit.
        per_source: Also measure per-source staging (the slowest measurement).
        workdir: Where to build the data (a temporary folder, removed afterwards, when unset).
        json: Print the JSON fields only.
    """
    from domainfm.shared.report import run_benchmark

    def measure(folder: Path) -> dict:
        return run_ingest_benchmark(images, rounds, size, workers, per_source, folder)

    return run_benchmark(measure, workdir, "domainfm-bench-ingest-", json)
