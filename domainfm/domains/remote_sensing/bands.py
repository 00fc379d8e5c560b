"""The 14 SatVision-TOA bands of MODIS L1B, their calibration constants and their scaling to [0, 1].

SatVision-TOA (NASA GSFC, arXiv 2411.17000; code ``nasa-nccs-hpda/pytorch-caney``) trains on 14 MODIS bands
chosen to match GOES-R ABI, in this order: reflective bands as reflectance in percent scaled by 0.01,
emissive bands as brightness temperature (K) scaled by the dataset's global min-max. Each band lives in
one of four L1B science datasets and is found there by the SDS's ``band_names`` attribute.

Brightness temperature inverts Planck's law at the band's effective central wavenumber, then applies the
band's temperature correction: ``T = (c2 / (lambda * ln(c1 / (L * lambda^5) + 1)) - tci) / tcs`` with
``L`` in W m^-2 m^-1 sr^-1. The Terra band-averaged constants (central wavenumber, slope, intercept) are
the MODIS Characterization Support Team values, as tabulated in IMAPP's ``modis_bright`` and satpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from domainfm.shared.errors import DomainfmError

PLANCK = 6.6260755e-34  # J s
LIGHT = 2.9979246e8  # m / s
BOLTZMANN = 1.380658e-23  # J / K
C1 = 2 * PLANCK * LIGHT**2  # W m^2 sr^-1
C2 = PLANCK * LIGHT / BOLTZMANN  # m K

SDS_250 = "EV_250_Aggr1km_RefSB"
SDS_500 = "EV_500_Aggr1km_RefSB"
SDS_1KM_REFLECTIVE = "EV_1KM_RefSB"
SDS_1KM_EMISSIVE = "EV_1KM_Emissive"
L1B_SDS = (SDS_250, SDS_500, SDS_1KM_REFLECTIVE, SDS_1KM_EMISSIVE)

# Terra: effective central wavenumber (cm^-1), temperature-correction slope and intercept (K), bands 20-36
TERRA_EMISSIVE = {
    20: (2641.775, 0.9993411, 0.4770532),
    21: (2505.277, 0.9998646, 0.09262664),
    22: (2518.028, 0.9998584, 0.09757996),
    23: (2465.428, 0.9998682, 0.08929242),
    24: (2235.815, 0.9998819, 0.07310901),
    25: (2200.346, 0.9998845, 0.07060415),
    27: (1477.967, 0.9994877, 0.2204921),
    28: (1362.737, 0.9994918, 0.2046087),
    29: (1173.190, 0.9995495, 0.1599191),
    30: (1027.715, 0.9997398, 0.08253401),
    31: (908.0884, 0.9995608, 0.1302699),
    32: (831.5399, 0.9997256, 0.07181833),
    33: (748.3394, 0.9999160, 0.01972608),
    34: (730.8963, 0.9999167, 0.01913568),
    35: (718.8681, 0.9999191, 0.01817817),
    36: (704.5367, 0.9999281, 0.01583042),
}


class BandError(DomainfmError, ValueError):
    """A band name that is not one of the SatVision-TOA bands; the message lists them."""


@dataclass(frozen=True)
class Band:
    """One MODIS band of the SatVision-TOA stack.

    Attributes:
        number: MODIS band number.
        wavelength_um: Centre wavelength.
        quantity: ``reflectance`` (percent) or ``brightness_temperature`` (K).
        sds: The L1B science dataset that holds it.
        low, high: Linear scaling to [0, 1]: ``(x - low) / (high - low)``.
    """

    number: int
    wavelength_um: float
    quantity: str
    sds: str
    low: float
    high: float

    @property
    def name(self) -> str:
        """``B01`` .. ``B36``."""
        return f"B{self.number:02d}"

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Physical values -> SatVision's [0, 1] (not clipped, as SatVision does not clip)."""
        return (values - self.low) / (self.high - self.low)


def _reflective(number: int, wavelength: float, sds: str) -> Band:
    return Band(number, wavelength, "reflectance", sds, 0.0, 100.0)


def _emissive(number: int, wavelength: float, low: float, high: float) -> Band:
    return Band(number, wavelength, "brightness_temperature", SDS_1KM_EMISSIVE, low, high)


SATVISION_BANDS: tuple[Band, ...] = (
    _reflective(1, 0.659, SDS_250),
    _reflective(2, 0.865, SDS_250),
    _reflective(3, 0.470, SDS_500),
    _reflective(6, 1.640, SDS_500),
    _reflective(7, 2.130, SDS_500),
    _emissive(21, 3.960, 223.1222, 352.7182),
    _reflective(26, 1.375, SDS_1KM_REFLECTIVE),
    _emissive(27, 6.720, 178.9174, 261.2920),
    _emissive(28, 7.330, 204.3739, 282.5529),
    _emissive(29, 8.550, 204.7677, 319.0373),
    _emissive(30, 9.730, 194.8686, 295.0209),
    _emissive(31, 11.030, 202.1759, 324.0677),
    _emissive(32, 12.200, 201.3823, 321.5254),
    _emissive(33, 13.340, 203.3537, 285.9848),
)
BY_NAME = {band.name: band for band in SATVISION_BANDS}


def brightness_temperature(radiance: np.ndarray, band: int) -> np.ndarray:
    """Brightness temperature (K) of radiance in W m^-2 um^-1 sr^-1 for a Terra emissive band."""
    wavenumber, slope, intercept = TERRA_EMISSIVE[band]
    wavelength = 1.0 / (wavenumber * 100.0)  # m
    radiance_si = np.asarray(radiance, dtype=np.float64) * 1e6  # per um -> per m
    with np.errstate(divide="ignore", invalid="ignore"):
        temperature = C2 / (wavelength * np.log(C1 / (radiance_si * wavelength**5) + 1.0))
    return (temperature - intercept) / slope


def planck_radiance(temperature: np.ndarray, band: int) -> np.ndarray:
    """Inverse of :func:`brightness_temperature`: radiance (W m^-2 um^-1 sr^-1) of a brightness temperature."""
    wavenumber, slope, intercept = TERRA_EMISSIVE[band]
    wavelength = 1.0 / (wavenumber * 100.0)
    effective = np.asarray(temperature, dtype=np.float64) * slope + intercept
    return C1 / (wavelength**5 * (np.exp(C2 / (wavelength * effective)) - 1.0)) / 1e6


def select_bands(names: list[str] | None) -> tuple[Band, ...]:
    """The named bands (``B01``, ``B31``, ...) in SatVision order; all 14 when ``names`` is empty."""
    if not names:
        return SATVISION_BANDS
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise BandError(f"unknown band(s) {', '.join(unknown)}; the SatVision-TOA bands are {', '.join(BY_NAME)}")
    return tuple(b for b in SATVISION_BANDS if b.name in names)
