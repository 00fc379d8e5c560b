"""MODIS L1B: a phantom granule reads back what was written; fill codes are masked; non-L1B files fail clearly."""

from pathlib import Path

import numpy as np
import pytest
import scipy.constants as const

from domainfm.domains.remote_sensing.bands import TERRA_EMISSIVE, brightness_temperature
from domainfm.domains.remote_sensing.modis import L1BError, read_l1b
from domainfm.studies.remote_sensing.phantom import FILL, SATURATED, write_granule

pyhdf_sd = pytest.importorskip("pyhdf.SD")


@pytest.fixture(scope="module")
def granule(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_granule(tmp_path_factory.mktemp("modis") / "MOD021KM.test.hdf", (64, 80), seed=3)


def raw(path: Path, sds_name: str, band: str) -> tuple[np.ndarray, dict]:
    sd = pyhdf_sd.SD(str(path))
    sds = sd.select(sds_name)
    attributes = sds.attributes()
    index = attributes["band_names"].split(",").index(band)
    data = sds.get()[index].astype(np.float64)
    sd.end()
    return data, {k: v[index] for k, v in attributes.items() if k.endswith(("_scales", "_offsets"))}


def independent_bt(radiance_w_m2_um_sr: np.ndarray, band: int) -> np.ndarray:
    """Inverse Planck written here from CODATA constants, in wavenumber form, then the band correction."""
    wavenumber_m, slope, intercept = TERRA_EMISSIVE[band][0] * 100, TERRA_EMISSIVE[band][1], TERRA_EMISSIVE[band][2]
    radiance_per_m = radiance_w_m2_um_sr * 1e6
    wavelength = 1 / wavenumber_m
    t = (
        const.h
        * const.c
        / (const.k * wavelength)
        / np.log1p(2 * const.h * const.c**2 / (wavelength**5 * radiance_per_m))
    )
    return (t - intercept) / slope


def test_reflectance_is_scale_and_offset_of_the_stored_counts(granule: Path):
    result = read_l1b(granule, ["B02", "B26"])
    for plane, (sds, band) in zip(result.values, (("EV_250_Aggr1km_RefSB", "2"), ("EV_1KM_RefSB", "26")), strict=True):
        dn, attrs = raw(granule, sds, band)
        expected = (dn - attrs["reflectance_offsets"]) * attrs["reflectance_scales"] * 100
        np.testing.assert_allclose(plane, expected, rtol=1e-5, atol=1e-4)


def test_brightness_temperature_matches_an_independent_inverse_planck_within_0_1_k(granule: Path):
    names = ["B21", "B27", "B29", "B31", "B33"]
    result = read_l1b(granule, names)
    for plane, name in zip(result.values, names, strict=True):
        dn, attrs = raw(granule, "EV_1KM_Emissive", name[1:].lstrip("0"))
        radiance = (dn - attrs["radiance_offsets"]) * attrs["radiance_scales"]
        np.testing.assert_allclose(plane, independent_bt(radiance, int(name[1:])), atol=0.1)
        assert np.nanmin(plane) > 150 and np.nanmax(plane) < 350


def test_fill_and_saturation_codes_are_masked_never_numbers(granule: Path):
    result = read_l1b(granule, ["B01", "B03"])
    dn_b3, _ = raw(granule, "EV_500_Aggr1km_RefSB", "3")
    dn_b1, _ = raw(granule, "EV_250_Aggr1km_RefSB", "1")
    assert (dn_b3 == FILL).any() and (dn_b1 == SATURATED).any()
    np.testing.assert_array_equal(result.valid[1], dn_b3 <= 32767)
    np.testing.assert_array_equal(result.valid[0], dn_b1 <= 32767)
    assert np.isnan(result.values[1][dn_b3 == FILL]).all() and not np.isnan(result.values[1][dn_b3 <= 32767]).any()
    assert result.latitude is not None and result.latitude.shape == (64 // 5, 80 // 5)


def test_brightness_temperature_inverts_the_forward_planck():
    from domainfm.domains.remote_sensing.bands import planck_radiance

    temperatures = np.array([200.0, 250.0, 300.0])
    for band in (21, 31, 33):
        np.testing.assert_allclose(brightness_temperature(planck_radiance(temperatures, band), band), temperatures)


def test_a_file_that_is_not_l1b_names_what_is_missing(tmp_path: Path):
    sd = pyhdf_sd.SD(str(tmp_path / "MOD35.hdf"), pyhdf_sd.SDC.WRITE | pyhdf_sd.SDC.CREATE)
    sds = sd.create("Cloud_Mask", pyhdf_sd.SDC.INT8, (6, 10, 10))
    sds[:] = np.zeros((6, 10, 10), np.int8)
    sds.endaccess()
    sd.end()
    with pytest.raises(L1BError, match=r"MOD35\.hdf.*EV_1KM_Emissive"):
        read_l1b(tmp_path / "MOD35.hdf")


def test_a_truncated_granule_fails_by_name(granule: Path, tmp_path: Path):
    cut = tmp_path / "cut.hdf"
    cut.write_bytes(granule.read_bytes()[:5000])
    with pytest.raises(L1BError, match=r"cut\.hdf"):
        read_l1b(cut)
