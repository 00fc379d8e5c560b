"""The vertical cloud curtain of a chip: the 91 x 40 target of SatVision-TOA's 3D-cloud task.

CloudSat/CALIPSO give, under the MODIS swath, a binary cloud profile along the satellite track; SatVision-TOA
(arXiv 2411.17000) predicts it for a chip as 91 along-track samples x 40 height bins from 0 to 20 km. The
shape is a property of the task, so the curtain head (:mod:`.downstream`) and the chip ingest
(:mod:`.data`, ``--curtains``) take it from here; :func:`curtain` builds it from per-pixel cloud top and
base heights (the ``FILE.truth.npz`` sidecar of a granule, e.g. a phantom's).
"""

from __future__ import annotations

import numpy as np

CURTAIN_SHAPE = (91, 40)  # along-track samples x height bins
CURTAIN_TOP_KM = 20.0


def track_rows(chip_rows: int, samples: int = CURTAIN_SHAPE[0]) -> np.ndarray:
    """The chip rows of the curtain's along-track samples: ``samples`` rows spread evenly over the chip."""
    return np.linspace(0, chip_rows - 1, samples).round().astype(int)


def height_bins(bins: int = CURTAIN_SHAPE[1]) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``[bins]`` and edges ``[bins + 1]`` (km) of the height bins, 0 to :data:`CURTAIN_TOP_KM`."""
    edges = np.linspace(0.0, CURTAIN_TOP_KM, bins + 1)
    return (edges[:-1] + edges[1:]) / 2, edges


def curtain(top_km: np.ndarray, base_km: np.ndarray, shape: tuple[int, int] = CURTAIN_SHAPE) -> np.ndarray:
    """The binary cloud curtain (along-track x height bins) under a chip's central column.

    The chip's central column is the satellite track (as CloudSat's under the MODIS swath): ``shape[0]``
    samples along it, ``shape[1]`` height bins from 0 to 20 km; a bin is cloudy where a cloud spans it.
    """
    rows = track_rows(top_km.shape[0], shape[0])
    column = top_km.shape[1] // 2
    tops, bases = top_km[rows, column], base_km[rows, column]
    heights = height_bins(shape[1])[0]
    inside = (heights[None, :] <= tops[:, None]) & (heights[None, :] >= bases[:, None])
    return np.nan_to_num(inside).astype(np.uint8)
