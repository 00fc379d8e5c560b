"""Inputs too large to hold in memory: cloud masks strip by strip, on the sliding window's own grid.

A cloud-mask model predicts an input larger than its chip with a sliding window (MONAI
``sliding_window_inference`` with :data:`domainfm.shared.model.transform.SLIDING_WINDOW`: 25 % overlap,
Gaussian blend). Windows start at multiples of the step ``int(0.75 * chip)`` from the top-left corner, the
last one moved back to end at the input's edge (``monai.data.utils.dense_patch_slices``), and a pixel's value
is the Gaussian-weighted mean of the windows that cover it.

An input whose bands would take more than :data:`MEMORY_BUDGET` bytes as float32 is predicted in strips of
rows (:func:`strip_plan`). Each strip starts on the step grid and is read with a margin of whole steps, at
least one chip, above and below its kept rows, so every kept row is covered by exactly the windows that
cover it in the whole input, with the same weights: the same values up to the order in which windows
batched differently are summed (tested to 1e-5 against the whole-input prediction). Only the kept rows are
written, window by window, into tiled GeoTIFFs in the input's staging folder, which become the COGs at the
end (:func:`.geofiles.cog_from_tiled`); the overlay is drawn on the input decimated to at most
:data:`OVERLAY_SIDE` px. Memory: one strip of bands and outputs, whatever the input's size.

GeoTIFFs are read strip by strip through rasterio windows and ``.npy`` arrays memory-mapped; MODIS granules
(2030 x 1354 px at most, about 150 MB of float32 bands) are read whole. Curtains and scene labels read only
what they use (:func:`read_region`): the track's column of chips, or the one chip.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable, ModelCard, predict_array
from domainfm.shared.deploy.inputs import InputError, check_finite, check_shape
from domainfm.shared.model.transform import SLIDING_WINDOW

MEMORY_BUDGET = 1 << 30  # bytes of float32 bands and outputs held at once before an input goes strip by strip
OVERLAY_SIDE = 2048  # the longer side of the overlay of an input predicted in strips, at most
REGION_SUFFIXES = (".tif", ".tiff", ".npy")  # inputs read a region at a time (others: whole, then cut)


def input_shape(path: Path, card: ModelCard) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a GeoTIFF or ``.npy`` input without reading its pixels; else ``None``.

    For a GeoTIFF, ``channels`` is the card's band count (the reader picks the card's bands by name).
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _npy(path, card)
        return int(array.shape[0]), int(array.shape[1]), int(array.shape[2])
    if suffix in (".tif", ".tiff"):
        import rasterio

        try:
            with rasterio.open(path) as source:
                return card.in_channels, int(source.height), int(source.width)
        except rasterio.errors.RasterioIOError as error:
            raise InputError(f"{path}: cannot be read as a raster ({' '.join(str(error).split())})") from error
    return None


def _npy(path: Path, card: ModelCard) -> np.ndarray:
    """A ``.npy`` input memory-mapped as ``[C, H, W]``, its shape checked as ``read_input`` checks it."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:  # not an .npy, empty or truncated, or pickled objects
        raise InputError(f"{path}: cannot be read as a NumPy array [C, H, W] ({error})") from error
    if array.ndim == 2:
        array = array[None]
    check_shape(path, array, card)
    return array


def read_region(path: Path, card: ModelCard, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of an input as float32 ``[C, h, w]``.

    The values ``read_input`` gives for them: GeoTIFFs through a rasterio window, ``.npy`` memory-mapped;
    other inputs are read whole and cut.
    """
    from domainfm.domains.remote_sensing.deploy import read_raster_input
    from domainfm.shared.deploy import read_input

    suffix = path.suffix.lower()
    if suffix == ".npy":
        region = np.asarray(_npy(path, card)[:, rows[0] : rows[1], cols[0] : cols[1]], dtype=np.float32)
        check_finite(path, region)
        return region
    if suffix in (".tif", ".tiff"):
        return read_raster_input(path, card, (rows, cols))
    return read_input(path, card)[0].numpy()[:, rows[0] : rows[1], cols[0] : cols[1]]


def needs_strips(shape: tuple[int, int, int], classes: int, chip: int) -> bool:
    """Whether an input of ``shape`` goes strip by strip (more than :data:`MEMORY_BUDGET`, several strips)."""
    channels, height, width = shape
    return (
        _row_bytes(channels, classes, width) * height > MEMORY_BUDGET
        and len(strip_plan(height, chip, rows_per_strip(channels, classes, width))) > 1
    )


def _row_bytes(channels: int, classes: int, width: int) -> int:
    # float32 bands, the blended output and its weight map in MONAI, the probabilities kept, the class map
    return width * (4 * (channels + 3 * classes + 1) + 1)


def rows_per_strip(channels: int, classes: int, width: int) -> int:
    """Rows read at once within :data:`MEMORY_BUDGET` (margins included)."""
    return max(1, MEMORY_BUDGET // _row_bytes(channels, classes, width))


def strip_plan(height: int, chip: int, rows: int) -> list[tuple[int, int, int, int]]:
    """``(read_start, read_stop, keep_start, keep_stop)`` of each strip of an input ``height`` rows high.

    Kept rows start on the sliding window's step grid; each strip is read with a margin of whole steps (at
    least ``chip`` rows) on both sides where the input has them, and about ``rows`` rows in all (at least
    one step kept).
    """
    step = max(int(chip * (1 - SLIDING_WINDOW["overlap"])), 1)
    margin = -(-chip // step) * step
    keep = max(step, (rows - 2 * margin) // step * step)
    return [
        (max(0, start - margin), min(height, start + keep + margin), start, min(height, start + keep))
        for start in range(0, height, keep)
    ]


def predict_mask_strips(
    deployable: Deployable,
    path: Path,
    shape: tuple[int, int, int],
    threshold: float,
    class_map: Any,
    writers: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """Predicts the cloud mask of a large input strip by strip (module docstring).

    ``writers``: open :func:`.geofiles.open_tiled` datasets, ``mask`` (uint8, one band) and optionally
    ``probabilities`` (float32, one band per class), filled window by window. Returns the decimated
    picture and class map for the overlay, the cloudy pixel count and the number of strips.
    """
    from rasterio.windows import Window
    from tqdm.auto import tqdm

    card = deployable.card
    channels, height, width = shape
    classes = len(card.class_names)
    plan = strip_plan(height, int(card.spatial_shape[0]), rows_per_strip(channels, classes, width))
    factor = max(1, math.ceil(max(height, width) / OVERLAY_SIDE))
    pictures, labels_small, cloudy = [], [], 0
    for read_start, read_stop, keep_start, keep_stop in tqdm(plan, desc=f"{path.name} strips", leave=False):
        image = read_region(path, card, (read_start, read_stop), (0, width))
        kept = slice(keep_start - read_start, keep_stop - read_start)
        probability = predict_array(deployable, image[None], device)[0][:, kept]
        labels = class_map(probability, threshold)
        window = Window(0, keep_start, width, keep_stop - keep_start)
        writers["mask"].write(labels[None], window=window)
        if "probabilities" in writers:
            writers["probabilities"].write(probability.astype(np.float32), window=window)
        cloudy += int((labels > 0).sum())
        sampled = np.arange(-(-keep_start // factor) * factor, keep_stop, factor)  # rows on the overlay's grid
        pictures.append(image[:, sampled - read_start, ::factor])
        labels_small.append(labels[sampled - keep_start, ::factor])
    return {
        "picture": np.concatenate(pictures, axis=1),
        "labels": np.concatenate(labels_small, axis=0),
        "cloudy": cloudy,
        "strips": len(plan),
        "overlay_scale": factor,
    }
