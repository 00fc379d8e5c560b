"""GeoTIFF / COG / any GDAL raster through rasterio, including band sets split over several files.

A band set is either one multi-band file, or single-band files at different resolutions (Sentinel-2's
10/20/60 m ``..._B02.tif``, ``..._B05.tif``, ``..._B01.tif``): the finest file defines the grid and every
other band is resampled onto it with a ``WarpedVRT`` (bilinear; any CRS is reprojected too), as TorchGeo's
``RasterDataset`` does. Nodata (the file's ``nodata`` value or its mask) becomes a validity mask, never a
number; CRS and affine transform are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.optional import require

BAND_SUFFIX = re.compile(r"^(?P<stem>.+?)[_-](?P<band>B\d{1,2}A?)$", re.IGNORECASE)


class RasterError(DomainfmError, ValueError):
    """A file that GDAL cannot open as a raster; the message names it."""


@dataclass
class RasterStack:
    """Bands on one grid.

    Attributes:
        values: ``[C, H, W]`` float32, NaN where invalid.
        valid: ``[C, H, W]`` bool.
        band_names: One per band.
        crs: The grid's CRS (WKT or ``EPSG:n``).
        transform: The grid's affine transform (a, b, c, d, e, f).
        resolution: Pixel size in CRS units.
    """

    values: np.ndarray
    valid: np.ndarray
    band_names: list[str]
    crs: str
    transform: tuple[float, ...]
    resolution: float


def group_band_files(files: list[Path]) -> dict[Path, list[Path]]:
    """Groups single-band files named ``<stem>_B<nn>.<ext>`` by stem; other files stand alone.

    The key of a group is its first file (sorted), which the ingest engine uses as the source identity.
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(f) for f in files):
        match = BAND_SUFFIX.match(path.stem)
        key = str(path.parent / match["stem"]) if match else str(path)
        groups.setdefault(key, []).append(path)
    return {members[0]: members for members in groups.values()}


def _band_name(path: Path, index: int, description: str | None, single: bool) -> str:
    match = BAND_SUFFIX.match(path.stem)
    if single and match:
        return match["band"].upper()
    return description or f"b{index + 1}"


def read_stack(
    files: list[Path],
    band_names: list[str] | None = None,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> RasterStack:
    """Reads a band set onto the grid of its finest file (see the module docstring).

    ``window``: only rows ``[r0, r1)`` and columns ``[c0, c1)`` of that grid, as ``((r0, r1), (c0, c1))``
    (the stack's transform is then the window's).
    """
    require("rasterio", "remote-sensing")
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioIOError
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    handles = []
    for f in files:
        try:
            handles.append(rasterio.open(f))
        except RasterioIOError as error:
            for handle in handles:
                handle.close()
            raise RasterError(f"{f}: cannot be read as a raster ({' '.join(str(error).split())})") from error
    try:
        reference = min(handles, key=lambda h: abs(h.res[0]))
        region = None if window is None else Window.from_slices(*window)
        values, valid, names = [], [], []
        for handle, path in zip(handles, files, strict=True):
            single = handle.count == 1
            same_grid = (
                handle.crs == reference.crs
                and handle.transform == reference.transform
                and handle.shape == reference.shape
            )
            source = handle if same_grid else WarpedVRT(
                handle, crs=reference.crs, transform=reference.transform, width=reference.width,
                height=reference.height, resampling=Resampling.bilinear, src_nodata=handle.nodata,
            )  # fmt: skip
            data = source.read(masked=True, window=region).astype(np.float32)
            mask = ~np.ma.getmaskarray(data)
            for index in range(handle.count):
                name = _band_name(path, index, handle.descriptions[index], single)
                names.append(name)
                values.append(np.where(mask[index], data.data[index], np.nan).astype(np.float32))
                valid.append(mask[index])
            if source is not handle:
                source.close()
        stack = RasterStack(
            np.stack(values), np.stack(valid), names, reference.crs.to_string() if reference.crs else "",
            tuple(reference.transform if region is None else window_transform(region, reference.transform))[:6],
            float(abs(reference.res[0])),
        )  # fmt: skip
    finally:
        for handle in handles:
            handle.close()
    if band_names:
        missing = [b for b in band_names if b not in stack.band_names]
        if missing:
            raise RasterError(
                f"{files[0]}: unknown band(s) {', '.join(missing)}; the files hold {', '.join(stack.band_names)}"
            )
        order = [stack.band_names.index(b) for b in band_names]
        stack = RasterStack(
            stack.values[order], stack.valid[order], list(band_names), stack.crs, stack.transform, stack.resolution
        )
    return stack
