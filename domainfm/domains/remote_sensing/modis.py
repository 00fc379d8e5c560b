"""MODIS L1B (MOD021KM / MYD021KM) HDF4 granules -> calibrated SatVision-TOA bands, through pyhdf.

The rasterio wheel has no HDF4 driver, so granules are read with pyhdf's SD interface, following the L1B
product layout (MODIS Level 1B Product User's Guide; the SatVision-TOA pipeline, arXiv 2411.17000):

* each band is a plane of one of four uint16 science datasets (``EV_250_Aggr1km_RefSB``,
  ``EV_500_Aggr1km_RefSB``, ``EV_1KM_RefSB``, ``EV_1KM_Emissive``), located by the SDS's comma-separated
  ``band_names`` attribute;
* values above ``valid_range[1]`` (32767) are codes (65535 fill, 65534 missing, 65533 saturated, ...) and
  are masked, never passed on as numbers;
* reflective bands: ``(DN - reflectance_offsets[i]) * reflectance_scales[i] * 100`` (percent);
  emissive bands: ``(DN - radiance_offsets[i]) * radiance_scales[i]``, then brightness temperature by
  inverse Planck with the band's constants (:mod:`.bands`);
* 5-km ``Latitude``/``Longitude`` tie points, when present, are kept (:func:`read_geolocation` reads them
  alone): in MOD021KM every 5th 1-km pixel from the 3rd (0-based index 2) along track and along scan
  (:data:`TIE_START`, :data:`TIE_STEP`).

A file that is not an L1B granule gets an error naming what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from domainfm.domains.remote_sensing.bands import Band, brightness_temperature, select_bands
from domainfm.shared.optional import require

VALID_MAX = 32767
TIE_START, TIE_STEP = 2, 5  # 5-km geolocation tie points: 1-km pixels 2, 7, 12, ... in both directions


class L1BError(ValueError):
    """A file that cannot be read as a MODIS L1B granule."""


@dataclass
class Granule:
    """Calibrated bands of a granule.

    Attributes:
        values: ``[C, H, W]`` float32: reflectance (%) or brightness temperature (K); NaN where invalid.
        valid: ``[C, H, W]`` bool.
        bands: The bands, in order.
        latitude, longitude: 5-km tie points (``None`` when absent).
    """

    values: np.ndarray
    valid: np.ndarray
    bands: tuple[Band, ...]
    latitude: np.ndarray | None = None
    longitude: np.ndarray | None = None


def _open(path: Path) -> object:
    require("pyhdf", "remote-sensing")
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    if not Path(path).is_file():
        raise L1BError(f"{path} does not exist")
    try:
        return SD(str(path), SDC.READ)
    except HDF4Error as error:
        raise L1BError(f"{path} is not a readable HDF4 file ({error}); a truncated download?") from error


def _band_index(attributes: dict, sds: str, band: Band, path: Path) -> int:
    names = [n.strip() for n in str(attributes.get("band_names", "")).split(",")]
    if str(band.number) not in names:
        raise L1BError(f"{path}: {sds} has no band {band.number} in its band_names {names}")
    return names.index(str(band.number))


def read_l1b(path: Path, band_names: list[str] | None = None) -> Granule:
    """Reads and calibrates the SatVision-TOA bands (or the named subset) of an L1B granule."""
    path = Path(path)
    sd = _open(path)
    try:
        present = set(sd.datasets())  # type: ignore[attr-defined]
        bands = select_bands(band_names)
        needed = sorted({b.sds for b in bands})
        missing = [name for name in needed if name not in present]
        if missing:
            raise L1BError(
                f"{path} is not a MODIS L1B 1-km granule (MOD021KM/MYD021KM): it lacks {missing}; "
                f"it holds {sorted(present)[:8]}"
            )
        planes, valid = [], []
        cache: dict[str, tuple[np.ndarray, dict]] = {}
        for band in bands:
            if band.sds not in cache:
                sds = sd.select(band.sds)  # type: ignore[attr-defined]
                cache[band.sds] = (np.asarray(sds.get()), sds.attributes())
            data, attributes = cache[band.sds]
            index = _band_index(attributes, band.sds, band, path)
            dn = data[index].astype(np.float64)
            low, high = attributes.get("valid_range", (0, VALID_MAX))
            ok = (dn >= low) & (dn <= high)
            if band.quantity == "reflectance":
                value = (dn - attributes["reflectance_offsets"][index]) * attributes["reflectance_scales"][index] * 100
            else:
                radiance = (dn - attributes["radiance_offsets"][index]) * attributes["radiance_scales"][index]
                ok &= radiance > 0
                value = brightness_temperature(np.where(ok, radiance, 1.0), band.number)
            planes.append(np.where(ok, value, np.nan).astype(np.float32))
            valid.append(ok)
        latitude = np.asarray(sd.select("Latitude").get()) if "Latitude" in present else None  # type: ignore[attr-defined]
        longitude = np.asarray(sd.select("Longitude").get()) if "Longitude" in present else None  # type: ignore[attr-defined]
    except KeyError as error:
        raise L1BError(f"{path}: an L1B attribute is missing: {error}") from error
    finally:
        sd.end()  # type: ignore[attr-defined]
    return Granule(np.stack(planes), np.stack(valid), bands, latitude, longitude)


def read_geolocation(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The 5-km ``Latitude``/``Longitude`` tie points of a granule (float64 degrees), or ``None`` when absent.

    Tie point ``[i, j]`` lies at 1-km pixel row ``TIE_START + TIE_STEP * i``, column ``TIE_START + TIE_STEP * j``.
    """
    path = Path(path)
    sd = _open(path)
    try:
        present = set(sd.datasets())  # type: ignore[attr-defined]
        if not {"Latitude", "Longitude"} <= present:
            return None
        latitude = np.asarray(sd.select("Latitude").get(), np.float64)  # type: ignore[attr-defined]
        longitude = np.asarray(sd.select("Longitude").get(), np.float64)  # type: ignore[attr-defined]
    finally:
        sd.end()  # type: ignore[attr-defined]
    if latitude.shape != longitude.shape or latitude.ndim != 2:
        raise L1BError(f"{path}: Latitude {latitude.shape} and Longitude {longitude.shape} are not one 2-D grid")
    return latitude, longitude
