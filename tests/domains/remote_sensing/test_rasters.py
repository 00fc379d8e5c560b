"""GDAL rasters: band sets at several resolutions land on one grid with their CRS; nodata is invalid."""

from pathlib import Path

import numpy as np
import pytest

from domainfm.domains.remote_sensing.rasters import group_band_files, read_stack

rasterio = pytest.importorskip("rasterio")


def write_band(path: Path, resolution: int, extent: int = 600, nodata_corner: bool = False) -> None:
    from rasterio.transform import from_origin

    n = extent // resolution
    x = (np.arange(n) + 0.5) * resolution
    data = (np.tile(x, (n, 1)) + 1000).astype(np.uint16)  # value = easting offset + 1000
    if nodata_corner:
        data[0, 0] = 0
    profile = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint16", "crs": "EPSG:32633",
               "transform": from_origin(500000, 4000000, resolution, resolution), "nodata": 0}  # fmt: skip
    with rasterio.open(path, "w", **profile) as handle:
        handle.write(data, 1)


def test_sentinel2_style_band_files_resample_onto_the_finest_grid(tmp_path: Path):
    write_band(tmp_path / "T33_B02.tif", 10)
    write_band(tmp_path / "T33_B05.tif", 20, nodata_corner=True)
    write_band(tmp_path / "T33_B01.tif", 60)
    (group,) = group_band_files(sorted(tmp_path.glob("*.tif"))).values()
    stack = read_stack(group)
    assert stack.band_names == ["B01", "B02", "B05"] and stack.values.shape == (3, 60, 60)
    assert stack.crs == "EPSG:32633" and stack.resolution == 10.0 and stack.transform[2] == 500000
    interior = np.s_[:, 10:50, 10:50]  # away from the edges, bilinear resampling of a linear ramp is exact
    expected = (np.arange(60) * 10 + 5 + 1000)[None, None, :]
    np.testing.assert_allclose(stack.values[interior], np.broadcast_to(expected, (3, 60, 60))[interior], atol=1e-3)
    assert not stack.valid[2, :2, :2].any() and stack.valid[2, 2:, 2:].all()  # the 20 m nodata pixel
    subset = read_stack(group, ["B05", "B02"])
    assert subset.band_names == ["B05", "B02"]
    with pytest.raises(ValueError, match="B09"):
        read_stack(group, ["B09"])
