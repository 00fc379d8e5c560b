"""The peers of ``domainfm bench tiling --peers``, each run as a script in its own child process.

``python peer_tilers.py PEER SLIDE OUT TILE_PX MPP`` tiles ``SLIDE`` with ``PEER`` (tissue detection on,
``TILE_PX`` tiles at ``MPP``), stores the tiles in ``OUT`` as the peer stores them, writes the kept tiles'
level-0 origins to ``OUT/origins.npy`` and prints one JSON line: tiles, seconds, tiles/s (timed from the
first call of the peer's API, imports done, to the stored tiles), peak RSS of this process (``VmHWM``,
imports included) and the settings used. This file imports nothing from domainfm, so it runs in an
environment that holds only the peer (tiatoolbox and lazyslide cannot share domainfm's, see
``docs/benchmarks.md``).

* tiatoolbox (https://tia-toolbox.readthedocs.io, "Patch extraction" example): ``get_patch_extractor(
  "slidingwindow", input_img=SLIDE, input_mask="otsu", patch_size, stride=patch_size, resolution=MPP,
  units="mpp", min_mask_ratio=0.5, within_bound=True)`` and a loop over the patches. tiatoolbox has no
  tile writer (its example keeps patches in a list); here every patch goes into one ``.npy`` memory map.
* lazyslide (https://lazyslide.readthedocs.io, "Preprocessing" tutorial): ``open_wsi``, ``zs.pp.find_tissues``,
  ``zs.pp.tile_tissues(wsi, TILE_PX, mpp=MPP)``, ``wsi.write()`` (tissues and tiles into the slide's
  SpatialData zarr), then the tile pixels through its own PyTorch dataset ``wsi.ds.tile_images()`` in a
  ``DataLoader`` with 2 workers, into one ``.npy``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

WORKERS = 2


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiatoolbox_tiles(slide: Path, out: Path, tile_px: int, mpp: float) -> dict:
    """Tiatoolbox's sliding-window patch extraction with its Otsu tissue mask."""
    from tiatoolbox.tools.patchextraction import get_patch_extractor

    settings = {
        "method": "slidingwindow", "input_mask": "otsu", "patch_size": tile_px, "stride": tile_px,
        "resolution": mpp, "units": "mpp", "min_mask_ratio": 0.5, "within_bound": True,
        "store": "one .npy memory map (tiatoolbox has no tile writer)", "processes": 1,
    }  # fmt: skip
    start = time.perf_counter()
    extractor = get_patch_extractor(
        "slidingwindow", input_img=str(slide), input_mask="otsu", patch_size=(tile_px, tile_px),
        stride=(tile_px, tile_px), resolution=mpp, units="mpp", min_mask_ratio=0.5, within_bound=True,
    )  # fmt: skip
    n = len(extractor)
    tiles = np.lib.format.open_memmap(out / "tiles.npy", mode="w+", dtype=np.uint8, shape=(n, tile_px, tile_px, 3))
    for i, patch in enumerate(extractor):
        tiles[i] = patch[..., :3]
    tiles.flush()
    seconds = time.perf_counter() - start
    origins = np.asarray(extractor.coordinate_list)[:, :2].astype(np.int64)
    return {"tiles": n, "seconds": seconds, "origins": origins, "settings": settings}


def lazyslide_tiles(slide: Path, out: Path, tile_px: int, mpp: float) -> dict:
    """Lazyslide's tissue detection and tiling, then its tile dataset through a DataLoader."""
    import lazyslide as zs
    from torch.utils.data import DataLoader
    from wsidata import open_wsi

    settings = {
        "find_tissues": "defaults (otsu, level auto)", "tile_tissues": {"tile_px": tile_px, "mpp": mpp,
        "background_fraction": 0.5}, "store": "wsi.write() to slide.zarr (coordinates); pixels: one .npy",
        "loader": {"dataset": "wsi.ds.tile_images()", "batch_size": 64, "num_workers": WORKERS},
    }  # fmt: skip
    start = time.perf_counter()
    wsi = open_wsi(str(slide), store=str(out / "slide.zarr"))
    zs.pp.find_tissues(wsi)
    zs.pp.tile_tissues(wsi, tile_px, mpp=mpp, background_fraction=0.5)
    wsi.write()
    dataset = wsi.ds.tile_images()
    n = len(dataset)
    tiles = np.lib.format.open_memmap(out / "tiles.npy", mode="w+", dtype=np.uint8, shape=(n, tile_px, tile_px, 3))
    origins, i = np.zeros((n, 2), np.int64), 0
    for batch in DataLoader(dataset, batch_size=64, num_workers=WORKERS):
        images = batch["image"].numpy()
        tiles[i : i + len(images)] = images[..., :3]
        origins[i : i + len(images)] = np.stack([batch["x"].numpy(), batch["y"].numpy()], axis=1)
        i += len(images)
    tiles.flush()
    seconds = time.perf_counter() - start
    settings["reader"] = type(wsi.reader).__name__
    return {"tiles": n, "seconds": seconds, "origins": origins, "settings": settings}


def main(argv: list[str]) -> None:
    """Runs one peer as ``argv`` says and prints its JSON line."""
    peer, slide, out, tile_px, mpp = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3]), float(argv[4])
    out.mkdir(parents=True, exist_ok=True)
    run = {"tiatoolbox": tiatoolbox_tiles, "lazyslide": lazyslide_tiles}[peer]
    measured = run(slide, out, tile_px, mpp)
    np.save(out / "origins.npy", measured.pop("origins"))
    measured["tiles_per_s"] = round(measured["tiles"] / measured["seconds"], 1)
    measured["seconds"] = round(measured["seconds"], 2)
    measured["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(measured))


if __name__ == "__main__":
    main(sys.argv[1:])
