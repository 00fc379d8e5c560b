"""Where a prediction lies on the Earth, and the files GIS tools open: COG class maps, CF-NetCDF curtains.

* **Georeference** of an input (:func:`georeference`): a GeoTIFF's CRS and affine transform (or its GCPs);
  a MODIS L1B swath's 5-km ``Latitude``/``Longitude`` tie points (:mod:`.modis`); nothing for ``.npy`` chips.
  A swath has no affine grid, so its maps carry **ground control points** (GDAL's GCP model, EPSG:4326):
  the tie points themselves, subsampled to at most :data:`MAX_GCPS_PER_AXIS` per axis (every k-th tie
  point, the last row and column always kept), each at the centre of its 1-km pixel; a swath across the
  antimeridian gets its longitudes unwrapped (east of it above 180), so a fit through them stays
  continuous. GDAL-based tools (QGIS, ``gdalwarp -tps``) warp the swath with them; nothing is resampled
  in the file itself. Swaths over a pole, whose longitudes span every meridian, are beyond this.
* **Latitude/longitude of pixels** (:meth:`Georeference.lonlat`): GeoTIFFs through their CRS
  (``rasterio.warp.transform`` of pixel centres), GCP-only GeoTIFFs through GDAL's GCP transformer, MODIS
  swaths by bilinear interpolation of the tie points (linear extrapolation at the swath's edges; longitudes
  unwrapped across the antimeridian first).
* **Cloud-Optimised GeoTIFF** (:func:`write_cog`): GDAL's ``COG`` driver when the installed GDAL has it,
  else a tiled GTiff with overviews copied in front (``COPY_SRC_OVERVIEWS``), which is the same layout
  (GDAL COG driver documentation; the COG specification, cogeo.org). DEFLATE; square blocks of 512 px
  (GDAL's default), or 256 or 128 px (GDAL's smallest) for smaller maps, so that every map larger than
  128 px has at least one overview level (overviews halve until one block holds the map); a map of at
  most 128 px is one block and needs none.
* **CF-NetCDF curtain** (:func:`write_curtain`): along-track sample x height bin, CF-1.8 attributes
  (``units``, ``long_name``, ``standard_name``, ``flag_values``), the track's latitude and longitude as
  auxiliary coordinates when the input is georeferenced, and a section plot PNG (:func:`plot_curtain`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.remote_sensing.modis import TIE_START, TIE_STEP

MAX_GCPS_PER_AXIS = 32
GEOGRAPHIC = "EPSG:4326"
BLOCKS = (512, 256, 128)  # GDAL's COG default block, and smaller ones for small maps (128: its minimum)


@dataclass
class Georeference:
    """How an input's pixels map onto the Earth.

    Attributes:
        crs: The CRS of ``transform`` (``None``: not georeferenced by a transform).
        transform: A rasterio ``Affine`` (pixel corner -> CRS coordinates).
        gcps: Ground control points (rasterio ``GroundControlPoint``) in ``gcp_crs``.
        gcp_crs: The CRS of the GCPs.
        tie_latitude, tie_longitude: A MODIS swath's tie points (degrees; :mod:`.modis` says where they lie).
    """

    crs: Any = None
    transform: Any = None
    gcps: list[Any] = field(default_factory=list)
    gcp_crs: Any = None
    tie_latitude: np.ndarray | None = None
    tie_longitude: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """``crs`` (CRS and transform), ``gcps`` or ``none``."""
        if self.crs is not None and self.transform is not None:
            return "crs"
        return "gcps" if self.gcps else "none"

    def lonlat(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Longitude and latitude (degrees) of the centres of pixels ``(rows, cols)``; ``None`` if unknown."""
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        if self.tie_latitude is not None and self.tie_longitude is not None:
            return _interpolate_ties(self.tie_latitude, self.tie_longitude, rows, cols)
        if self.kind == "crs":
            from rasterio.transform import xy
            from rasterio.warp import transform as warp

            xs, ys = xy(self.transform, rows, cols, offset="center")
            lon, lat = warp(self.crs, GEOGRAPHIC, np.atleast_1d(xs), np.atleast_1d(ys))
            return np.asarray(lon), np.asarray(lat)
        if self.kind == "gcps":
            from rasterio.transform import GCPTransformer
            from rasterio.warp import transform as warp

            with GCPTransformer(self.gcps) as transformer:
                xs, ys = transformer.xy(rows, cols, offset="center")
            lon, lat = warp(self.gcp_crs, GEOGRAPHIC, np.atleast_1d(xs), np.atleast_1d(ys))
            return np.asarray(lon), np.asarray(lat)
        return None


def tie_pixels(count: int) -> np.ndarray:
    """The 1-km pixel index of each of ``count`` MODIS tie points along one axis."""
    return TIE_START + TIE_STEP * np.arange(count)


def _unwrap(longitude: np.ndarray) -> np.ndarray:
    """Longitudes made continuous across the antimeridian (a swath spanning it gets values above 180)."""
    if np.nanmax(longitude) - np.nanmin(longitude) > 180:
        return np.where(longitude < 0, longitude + 360, longitude)
    return longitude


def _interpolate_ties(
    latitude: np.ndarray, longitude: np.ndarray, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.interpolate import RegularGridInterpolator

    grid = (tie_pixels(latitude.shape[0]).astype(np.float64), tie_pixels(latitude.shape[1]).astype(np.float64))
    points = np.stack([rows, cols], axis=-1)
    values = []
    for plane in (_unwrap(longitude), latitude):
        if plane.shape[0] < 2 or plane.shape[1] < 2:  # one tie point along an axis: nearest, no slope
            values.append(plane[np.clip(np.searchsorted(grid[0], rows), 0, plane.shape[0] - 1),
                                np.clip(np.searchsorted(grid[1], cols), 0, plane.shape[1] - 1)])  # fmt: skip
            continue
        interpolate = RegularGridInterpolator(grid, plane, method="linear", bounds_error=False, fill_value=None)
        values.append(interpolate(points))
    lon, lat = values
    return (lon + 180) % 360 - 180, np.clip(lat, -90, 90)


def swath_gcps(latitude: np.ndarray, longitude: np.ndarray, max_per_axis: int = MAX_GCPS_PER_AXIS) -> list[Any]:
    """GCPs (EPSG:4326) at a subsample of a swath's tie points (see the module docstring)."""
    from rasterio.control import GroundControlPoint

    def subsample(count: int) -> list[int]:
        step = max(1, math.ceil((count - 1) / max(max_per_axis - 1, 1)))
        return sorted({*range(0, count, step), count - 1})

    rows, cols = tie_pixels(latitude.shape[0]), tie_pixels(latitude.shape[1])
    longitude = _unwrap(longitude)  # a swath across the antimeridian: one continuous fit (values above 180)
    return [
        GroundControlPoint(
            row=float(rows[i]) + 0.5,
            col=float(cols[j]) + 0.5,
            x=float(longitude[i, j]),
            y=float(latitude[i, j]),
            id=f"tie_{i}_{j}",
        )
        for i in subsample(latitude.shape[0])
        for j in subsample(latitude.shape[1])
    ]


def georeference(path: Path) -> Georeference:
    """The georeference of an input file (module docstring); ``Georeference()`` for ``.npy`` chips."""
    from domainfm.domains.remote_sensing.scenes import HDF_SUFFIXES

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in HDF_SUFFIXES:
        from domainfm.domains.remote_sensing.modis import read_geolocation

        ties = read_geolocation(path)
        if ties is None:
            return Georeference()
        latitude, longitude = ties
        return Georeference(gcps=swath_gcps(latitude, longitude), gcp_crs=GEOGRAPHIC,
                            tie_latitude=latitude, tie_longitude=longitude)  # fmt: skip
    if suffix in (".tif", ".tiff"):
        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                gcps, gcp_crs = source.gcps
                if source.crs is not None and not source.transform.is_identity:
                    return Georeference(crs=source.crs, transform=source.transform)
                if gcps:
                    return Georeference(gcps=list(gcps), gcp_crs=gcp_crs)
    return Georeference()


def cog_driver() -> str:
    """``COG`` when the installed GDAL has the driver, else ``GTiff`` (written in the COG layout)."""
    from rasterio.env import Env

    with Env() as env:
        return "COG" if "COG" in env.drivers() else "GTiff"


def block_size(height: int, width: int) -> int:
    """The COG block side: the largest of 512, 256 and 128 below the map's longer side (128 at least)."""
    side = max(height, width)
    return next((block for block in BLOCKS if block < side), BLOCKS[-1])


def overview_factors(height: int, width: int, block: int) -> list[int]:
    """Overview decimation factors 2, 4, ... until the overview fits in one block (GDAL's COG ``AUTO`` rule)."""
    factors, factor = [], 2
    while math.ceil(max(height, width) / (factor // 2)) > block:
        factors.append(factor)
        factor *= 2
    return factors


def write_cog(
    path: Path,
    bands: np.ndarray,
    geo: Georeference,
    resampling: str,
    descriptions: list[str],
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    driver: str | None = None,
) -> Path:
    """``bands`` ``[B, H, W]`` as a Cloud-Optimised GeoTIFF at ``path`` with ``geo`` (see the module docstring).

    ``resampling``: the overviews' (``nearest`` for class maps, ``average`` for probabilities).
    """
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile

    driver = driver or cog_driver()
    count, height, width = bands.shape
    block = block_size(height, width)
    profile: dict[str, Any] = {"width": width, "height": height, "count": count, "dtype": bands.dtype.name}
    if geo.kind == "crs":
        profile.update(crs=geo.crs, transform=geo.transform)

    def fill(dataset: Any) -> None:
        dataset.write(bands)
        _describe(dataset, geo, descriptions, tags, colormap)

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # swaths (GCPs) and chips
        if driver == "COG":
            with rasterio.open(path, "w", driver="COG", blocksize=block, compress="deflate", bigtiff="if_safer",
                               overview_resampling=resampling, **profile) as dataset:  # fmt: skip
                fill(dataset)
            return path
        with MemoryFile() as memory:
            with memory.open(driver="GTiff", tiled=True, blockxsize=block, blockysize=block, **profile) as dataset:
                fill(dataset)
                factors = overview_factors(height, width, block)
                if factors:
                    dataset.build_overviews(factors, Resampling[resampling])
            with memory.open() as source:
                rasterio.shutil.copy(source, path, driver="GTiff", tiled=True, blockxsize=block, blockysize=block,
                                     compress="deflate", copy_src_overviews=True, bigtiff="if_safer")  # fmt: skip
    return path


def _describe(
    dataset: Any,
    geo: Georeference,
    descriptions: list[str],
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int, int]] | None,
) -> None:
    """Band descriptions, tags, GCPs and colour table of a map being written."""
    for index, description in enumerate(descriptions, 1):
        dataset.set_band_description(index, description)
    dataset.update_tags(**tags)
    if geo.kind == "gcps":
        dataset.gcps = (geo.gcps, geo.gcp_crs)
    if colormap is not None:
        dataset.write_colormap(1, colormap)


def open_tiled(path: Path, height: int, width: int, count: int, dtype: str, geo: Georeference) -> Any:
    """A tiled GeoTIFF (DEFLATE, BigTIFF when needed) open for writing window by window.

    Once filled and closed, :func:`cog_from_tiled` makes the COG of it.
    """
    import rasterio

    profile: dict[str, Any] = {"width": width, "height": height, "count": count, "dtype": dtype}
    if geo.kind == "crs":
        profile.update(crs=geo.crs, transform=geo.transform)
    block = block_size(height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        return rasterio.open(Path(path), "w", driver="GTiff", tiled=True, blockxsize=block, blockysize=block,
                             compress="deflate", zlevel=1, bigtiff="if_safer", **profile)  # fmt: skip


def cog_from_tiled(
    source: Path,
    path: Path,
    geo: Georeference,
    resampling: str,
    descriptions: list[str],
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
    driver: str | None = None,
) -> Path:
    """The tiled GeoTIFF ``source`` (:func:`open_tiled`, filled and closed) as the COG ``path``.

    Laid out and described as :func:`write_cog` writes it; GDAL streams the copy, so a map larger than
    memory can be written. ``source`` is left for the caller to delete.
    """
    import rasterio
    import rasterio.shutil
    from rasterio.enums import Resampling

    driver = driver or cog_driver()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(source, "r+") as dataset:
            _describe(dataset, geo, descriptions, tags, colormap)
            height, width = dataset.height, dataset.width
            block = block_size(height, width)
            factors = overview_factors(height, width, block)
            if driver != "COG" and factors:
                dataset.build_overviews(factors, Resampling[resampling])
        if driver == "COG":
            rasterio.shutil.copy(source, path, driver="COG", blocksize=block, compress="deflate",
                                 bigtiff="if_safer", overview_resampling=resampling)  # fmt: skip
        else:
            rasterio.shutil.copy(source, path, driver="GTiff", tiled=True, blockxsize=block, blockysize=block,
                                 compress="deflate", copy_src_overviews=True, bigtiff="if_safer")  # fmt: skip
    return Path(path)


def write_curtain(
    path: Path,
    probability: np.ndarray,
    threshold: float,
    rows: np.ndarray,
    cols: np.ndarray,
    chips: np.ndarray,
    lonlat: tuple[np.ndarray, np.ndarray] | None,
    attributes: dict[str, str],
) -> Path:
    """A cloud curtain ``[samples, bins]`` as CF-NetCDF at ``path`` (see the module docstring)."""
    import netCDF4

    from domainfm.domains.remote_sensing.curtain import height_bins

    samples, bins = probability.shape
    centres, edges = height_bins(bins)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.setncatts({"Conventions": "CF-1.8", **attributes})
        nc.createDimension("along_track", samples)
        nc.createDimension("height", bins)
        nc.createDimension("nv", 2)

        def variable(name: str, dtype: str, dims: tuple[str, ...], values: np.ndarray, **attrs: Any) -> None:
            var = nc.createVariable(name, dtype, dims, zlib=True)
            var.setncatts(attrs)
            var[:] = values

        variable(
            "along_track",
            "i4",
            ("along_track",),
            np.arange(samples),
            long_name="along-track sample index (91 per chip, top to bottom of the input)",
            units="1",
        )
        variable(
            "height",
            "f4",
            ("height",),
            centres,
            standard_name="height",
            units="km",
            positive="up",
            long_name="centre of the height bin above the surface",
            bounds="height_bnds",
        )
        variable("height_bnds", "f4", ("height", "nv"), np.stack([edges[:-1], edges[1:]], axis=1))
        variable("row", "i4", ("along_track",), rows, long_name="input pixel row of the sample (0-based)", units="1")
        variable(
            "column",
            "i4",
            ("along_track",),
            cols,
            long_name="input pixel column of the track (0-based; the chip's central column)",
            units="1",
        )
        variable("chip", "i4", ("along_track",), chips, long_name="index of the chip the sample was predicted in",
                 units="1")  # fmt: skip
        coordinates = "height"
        if lonlat is not None:
            variable("lat", "f8", ("along_track",), lonlat[1], standard_name="latitude", units="degrees_north",
                     long_name="latitude of the sample")  # fmt: skip
            variable("lon", "f8", ("along_track",), lonlat[0], standard_name="longitude", units="degrees_east",
                     long_name="longitude of the sample")  # fmt: skip
            coordinates = "lat lon height"
        variable("cloud_probability", "f4", ("along_track", "height"), probability, units="1",
                 long_name="probability that the height bin is cloudy", valid_range=np.float32([0, 1]),
                 coordinates=coordinates)  # fmt: skip
        variable("cloud_mask", "u1", ("along_track", "height"), (probability >= threshold).astype(np.uint8),
                 long_name=f"cloudy height bin (cloud_probability >= {threshold:g})", units="1",
                 flag_values=np.uint8([0, 1]), flag_meanings="clear cloudy", coordinates=coordinates)  # fmt: skip
    return Path(path)


def plot_curtain(
    path: Path,
    probability: np.ndarray,
    threshold: float,
    chip_samples: int,
    lonlat: tuple[np.ndarray, np.ndarray] | None,
    title: str,
) -> Path:
    """A section plot of a curtain: height (km) against along-track sample, chip boundaries dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from domainfm.domains.remote_sensing.curtain import height_bins

    samples, bins = probability.shape
    _, edges = height_bins(bins)
    figure = Figure(figsize=(min(12.0, 3.0 + samples / 40), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    mesh = axes.pcolormesh(np.arange(samples + 1) - 0.5, edges, probability.T, cmap="Blues", vmin=0, vmax=1)
    if probability.max() >= threshold > probability.min():
        axes.contour(np.arange(samples), (edges[:-1] + edges[1:]) / 2, probability.T, levels=[threshold],
                     colors="tab:orange", linewidths=1.0)  # fmt: skip
    for boundary in range(chip_samples, samples, chip_samples):
        axes.axvline(boundary - 0.5, color="0.4", linestyle="--", linewidth=0.8)
    axes.set(xlabel="along-track sample", ylabel="height (km)", title=title)
    figure.colorbar(mesh, ax=axes, label="cloud probability")
    if lonlat is not None:
        ticks = np.unique(np.linspace(0, samples - 1, min(samples, 5)).round().astype(int))
        top = axes.secondary_xaxis("top")
        top.set_xticks(ticks, [f"{lonlat[1][t]:.2f}°, {lonlat[0][t]:.2f}°" for t in ticks], fontsize=7)
        top.set_xlabel("latitude, longitude", fontsize=8)
    figure.savefig(path, format="png", metadata={"Software": "domainfm predict"})
    return Path(path)
