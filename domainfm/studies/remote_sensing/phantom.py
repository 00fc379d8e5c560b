"""Phantom MODIS L1B granules (real HDF4, MOD021KM layout) with surfaces and clouds at known heights.

No PyPI package ships a MODIS granule, so tests, the quickstart and the tutorial write their own with
pyhdf, in the layout a real MOD021KM has (``shared/methods/satvision.md`` section 5): the four uint16
``EV_*`` science datasets with every L1B band listed in ``band_names``, ``valid_range``,
``reflectance_scales/offsets`` and ``radiance_scales/offsets``, 5-km ``Latitude``/``Longitude``, the
``CoreMetadata.0`` attribute naming the product, fill codes on a dead-detector stripe and saturation on
the brightest cloud pixels.

The scene: ocean and land with band-dependent reflectance and surface temperature, and a few clouds, each
with a top and base height (km). Visible and short-wave bands brighten under clouds, the 1.375 um cirrus
band only under high clouds, and emissive bands see the cloud top's temperature (6.5 K/km lapse rate)
through the cloud's emissivity. The heights are written beside the granule (``FILE.truth.npz``), so
the vertical cloud curtain of any chip has ground truth
(:func:`~domainfm.domains.remote_sensing.curtain.curtain`), as CloudSat/CALIPSO give it for SatVision-TOA's
3D-cloud task (arXiv 2411.17000).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domainfm.domains.remote_sensing.bands import (
    L1B_SDS,
    SDS_1KM_EMISSIVE,
    SDS_1KM_REFLECTIVE,
    SDS_250,
    SDS_500,
    TERRA_EMISSIVE,
    planck_radiance,
)
from domainfm.shared.outputs import partial_path

SDS_BANDS = {
    SDS_250: ["1", "2"],
    SDS_500: ["3", "4", "5", "6", "7"],
    SDS_1KM_REFLECTIVE: [
        "8",
        "9",
        "10",
        "11",
        "12",
        "13lo",
        "13hi",
        "14lo",
        "14hi",
        "15",
        "16",
        "17",
        "18",
        "19",
        "26",
    ],
    SDS_1KM_EMISSIVE: [str(b) for b in TERRA_EMISSIVE],
}
PHANTOM_ATTRIBUTE = "domainfm remote-sensing phantom"  # global HDF attribute `domainfm`: ours to overwrite
REFLECTANCE_SCALE = 5e-5  # DN 32767 -> reflectance 1.64
FILL, SATURATED = 65535, 65533

# clear-sky brightness-temperature offsets from the surface temperature (K): water-vapour and CO2 bands
# see the colder upper troposphere, window bands nearly the surface
CLEAR_SKY_OFFSET = {20: 3, 21: 5, 22: 0, 23: -2, 24: -40, 25: -30, 27: -50, 28: -35, 29: -4, 30: -25, 31: -2,
                    32: -3, 33: -15, 34: -25, 35: -32, 36: -45}  # fmt: skip


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(0, 1, shape), sigma)
    return field / (field.std() + 1e-9)


def draw_scene(rng: np.random.Generator, shape: tuple[int, int], clouds: int = 8) -> dict[str, np.ndarray]:
    """Land mask, surface temperature and cloud top/base heights (km, NaN where clear) of one scene."""
    land = _smooth(rng, shape, shape[0] / 10) > 0.3
    surface_t = np.where(land, 298.0, 291.0) + 2.0 * _smooth(rng, shape, shape[0] / 20)
    top = np.full(shape, np.nan)
    base = np.full(shape, np.nan)
    emissivity = np.zeros(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _ in range(clouds):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(0.1, 0.3, 2) * np.array(shape)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * _smooth(rng, shape, 4) < 1
        h_top = rng.uniform(1.0, 14.0)
        opacity = rng.uniform(0.75, 1.0)  # optically thicker clouds are deeper: brighter and more opaque
        h_base = max(0.3, h_top - (1.0 + 24.0 * (opacity - 0.75) + rng.uniform(-0.5, 0.5)))
        higher = blob & ~(top > h_top)  # a higher cloud hides a lower one
        top[higher], base[higher] = h_top, h_base
        emissivity[higher] = opacity
    return {"land": land, "surface_t": surface_t, "cloud_top_km": top, "cloud_base_km": base, "emissivity": emissivity}


def reflectance(scene: dict[str, np.ndarray], band: str, rng: np.random.Generator) -> np.ndarray:
    """Top-of-atmosphere reflectance (0-1) of a reflective band over the scene."""
    wavelength = {"1": 0.65, "2": 0.86, "3": 0.47, "4": 0.55, "5": 1.24, "6": 1.64, "7": 2.13, "26": 1.375}
    w = wavelength.get(band.rstrip("lohi"), 0.9)
    land = scene["land"]
    surface = np.where(land, 0.08 + 0.25 * (w > 0.7) - 0.08 * (w > 1.5), 0.04 - 0.03 * (w > 0.7))
    if band == "26":
        surface = np.full_like(surface, 0.005)  # water vapour absorbs: the surface is dark at 1.375 um
    cloudy = ~np.isnan(scene["cloud_top_km"])
    cloud = 0.55 + 0.25 * scene["emissivity"] - 0.15 * (w > 1.5)
    if band == "26":
        cloud = np.where(scene["cloud_top_km"] > 8, 0.3, 0.01)  # only high clouds reach above the vapour
    value = np.where(cloudy, cloud, surface) + rng.normal(0, 0.005, land.shape)
    return np.clip(value, 0.001, 1.2)


def brightness(scene: dict[str, np.ndarray], band: int) -> np.ndarray:
    """Brightness temperature (K) of an emissive band over the scene."""
    clear = scene["surface_t"] + CLEAR_SKY_OFFSET[band]
    cloud_t = 288.0 - 6.5 * np.nan_to_num(scene["cloud_top_km"])
    cloud_t = np.minimum(cloud_t, clear)
    e = scene["emissivity"]
    return np.where(np.isnan(scene["cloud_top_km"]), clear, e * cloud_t + (1 - e) * clear)


def write_granule(path: Path, shape: tuple[int, int] = (256, 256), seed: int = 0, clouds: int = 8) -> Path:
    """Writes a phantom MOD021KM granule to ``path`` and its cloud heights to ``path.truth.npz``.

    Both are written under run-unique names (:func:`domainfm.shared.outputs.partial_path`) and renamed into
    place, so a killed run leaves no half granule and no sibling a user named is touched.
    """
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, shape, clouds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial, partial_truth = partial_path(path), partial_path(path.with_name(path.name + ".truth.npz"))
    try:
        _write_hdf(partial, scene, shape, rng, seed)
        with open(partial_truth, "wb") as handle:  # a file object: numpy adds no .npz suffix to the name
            np.savez_compressed(
                handle,
                cloud_top_km=scene["cloud_top_km"].astype(np.float32),
                cloud_base_km=scene["cloud_base_km"].astype(np.float32),
                land=scene["land"],
            )
        partial_truth.replace(path.with_name(path.name + ".truth.npz"))
        partial.replace(path)
    finally:
        for leftover in (partial, partial_truth):
            leftover.unlink(missing_ok=True)
    return path


def is_phantom_granule(path: Path) -> bool:
    """Whether ``path`` is a granule :func:`write_granule` wrote (its ``domainfm`` attribute)."""
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    try:
        sd = SD(str(path), SDC.READ)
    except HDF4Error:
        return False
    try:
        return str(sd.attributes().get("domainfm", "")).startswith(PHANTOM_ATTRIBUTE)
    finally:
        sd.end()


def _write_hdf(
    partial: Path, scene: dict[str, np.ndarray], shape: tuple[int, int], rng: np.random.Generator, seed: int
) -> None:
    from pyhdf.SD import SD, SDC

    sd = SD(str(partial), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    sd.attr("CoreMetadata.0").set(SDC.CHAR, 'OBJECT = SHORTNAME\n VALUE = "MOD021KM"\nEND_OBJECT = SHORTNAME\n')
    sd.attr("domainfm").set(SDC.CHAR, PHANTOM_ATTRIBUTE)
    for name in L1B_SDS:
        names = SDS_BANDS[name]
        dn = np.empty((len(names), *shape), np.uint16)
        scales, offsets = [], []
        for i, band in enumerate(names):
            if name == SDS_1KM_EMISSIVE:
                radiance = planck_radiance(brightness(scene, int(band)), int(band))
                scale, offset = float(radiance.max()) * 1.3 / 30000, 1577.3397
                values = radiance / scale + offset
            else:
                scale, offset = REFLECTANCE_SCALE, 0.0
                values = reflectance(scene, band, rng) / scale + offset
            dn[i] = np.clip(np.round(values), 0, 32767)
            scales.append(scale)
            offsets.append(offset)
        if name == SDS_500:
            dn[0, :, shape[1] // 3] = FILL  # a dead detector column in band 3
        if name == SDS_250:
            brightest = reflectance(scene, "1", np.random.default_rng(seed)) > 0.79
            dn[0][brightest] = SATURATED
        sds = sd.create(name, SDC.UINT16, dn.shape)
        sds.setcompress(SDC.COMP_DEFLATE, 4)
        sds[:] = dn
        sds.band_names = ",".join(names)
        sds.attr("valid_range").set(SDC.UINT16, [0, 32767])
        sds.attr("_FillValue").set(SDC.UINT16, FILL)
        kind = "radiance" if name == SDS_1KM_EMISSIVE else "reflectance"
        sds.attr(f"{kind}_scales").set(SDC.FLOAT32, scales)
        sds.attr(f"{kind}_offsets").set(SDC.FLOAT32, offsets)
        if kind == "reflectance":  # real RefSB SDS carry radiance calibration too
            sds.attr("radiance_scales").set(SDC.FLOAT32, [s * 500 for s in scales])
            sds.attr("radiance_offsets").set(SDC.FLOAT32, offsets)
        sds.endaccess()
    lat0, lon0 = rng.uniform(-50, 50), rng.uniform(-170, 170)
    tie = (shape[0] // 5, shape[1] // 5)
    rows, cols = np.meshgrid(np.linspace(0, 2.3, tie[0]), np.linspace(0, 2.3, tie[1]), indexing="ij")
    for name, grid in (("Latitude", lat0 + rows), ("Longitude", lon0 + cols)):
        sds = sd.create(name, SDC.FLOAT32, tie)
        sds[:] = grid.astype(np.float32)
        sds.endaccess()
    sd.end()


def write_phantom_splits(granules: list[Path], path: Path) -> Path:
    """A ``--splits`` CSV for phantom granules: whole granules to train, test, train, val, ... in turn.

    Chips are split per granule (a scene), so a few phantom granules need their splits assigned, or all of
    them may hash into one split.
    """
    cycle = ("train", "test", "train", "val")
    rows = [f"{Path(g).name},{cycle[i % len(cycle)]}" for i, g in enumerate(granules)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("granule,split\n" + "\n".join(rows) + "\n")
    return Path(path)
