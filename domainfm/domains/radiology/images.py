"""Radiograph reading: DICOM (modality LUT, VOI window or LUT, MONOCHROME1) and PNG/JPEG, into [0, 1].

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) trains on chest radiographs from DICOM archives; the
display transform matters because a model must see air dark and bone bright whatever the scanner stored:

1. stored values -> modality values by the Modality LUT (``RescaleSlope``/``RescaleIntercept``);
2. modality values -> display values by pydicom's VOI LUT (the VOI LUT sequence if present, else the
   first window, ``WindowCenter``/``WindowWidth``, LINEAR, LINEAR_EXACT or SIGMOID as DICOM PS3.3
   C.11.2.1.2 defines them), mapped to [0, 1] over its output range; without either, the 0.5-99.5
   percentiles of the image;
3. MONOCHROME1 (minimum = white) is inverted, so air is dark in every output.

Everything stays floating point (16-bit precision) until the final [0, 1] result. The geometry is the
model contract's (:func:`display_transform`: letterbox to a square with the aspect ratio kept, padded with
black air, rounded to uint8): :func:`ingest_tile` stores exactly what a deployed classifier makes of the
same file, so ``radiology ingest``, ``eval``, ``explain`` and an exported bundle see the same tensor.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from domainfm.shared.model import InputTransform

DICOM_SUFFIXES = (".dcm", ".dicom")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def percentile_scale(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Linear map of the ``low``-``high`` percentiles to [0, 1], clipped."""
    lo, hi = np.percentile(values, [low, high])
    return np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)


def _has_voi_lut(ds: object) -> bool:
    """Whether pydicom's ``apply_voi_lut`` would use the VOI LUT Sequence (it does when it is usable)."""
    sequence = ds.get("VOILUTSequence")  # type: ignore[attr-defined]
    return bool(sequence) and None not in (sequence[0].get("LUTDescriptor"), sequence[0].get("LUTData"))


def _has_window(ds: object) -> bool:
    return None not in (ds.get("WindowCenter"), ds.get("WindowWidth"))  # type: ignore[attr-defined]


def _voi_display(values: np.ndarray, ds: object) -> np.ndarray:
    """Modality values -> [0, 1] by pydicom's VOI LUT or window (index 0), over pydicom's output range.

    * VOI LUT Sequence: pydicom indexes the LUT by integer input (it warns on floats: floor is its index
      for every input at or past the descriptor's first mapped value, and inputs below it take entry 0
      either way); the output range is ``0 .. 2**n - 1``, ``n`` the descriptor's third value (PS3.3
      C.11.2.1.1), not the range the LUT data happen to span.
    * Window (LINEAR, LINEAR_EXACT, SIGMOID; the first of several): pydicom returns values in its output
      range ``[y_min, y_max]`` (the stored bit range through the rescale, or the Modality LUT's range), the
      values it gives to inputs of -inf and +inf.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    if _has_voi_lut(ds):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # type: ignore[attr-defined]
        display = np.asarray(apply_voi(np.floor(values).astype(np.int64), ds, index=0), dtype=np.float64)
        return np.clip(display / (2**bits - 1), 0, 1)
    display = np.asarray(apply_windowing(values, ds, index=0), dtype=np.float64)
    low, high = np.asarray(apply_windowing(np.array([-np.inf, np.inf]), ds, index=0), dtype=np.float64)
    return np.clip((display - low) / (high - low), 0, 1)


def _source(path: Path) -> Path | io.BytesIO:
    """The file as ingest already read it (:func:`~domainfm.shared.tiles.fragments.source_bytes`), else its path."""
    from domainfm.shared.tiles.fragments import source_bytes

    data = source_bytes(path)
    return io.BytesIO(data) if data is not None else path


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM radiograph as float ``[H, W]`` in [0, 1], air dark (see the module docstring)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(_source(path))
    except (InvalidDicomError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable DICOM file: {error}") from error
    if "PixelData" not in ds:
        raise ValueError(f"{path} holds no image (no PixelData): a DICOM report or structured document?")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # missing decoder plugins, truncated pixel data
        raise ValueError(f"{path}: pixel data cannot be decoded ({error})") from error
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected one greyscale frame, found pixel array of shape {pixels.shape}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if _has_voi_lut(ds) or _has_window(ds):
        try:
            display = _voi_display(values, ds)
        except (ValueError, NotImplementedError) as error:  # a bad window width or function, LUT bit depth
            raise ValueError(f"{path}: cannot apply its VOI LUT or window: {error}") from error
    else:
        display = percentile_scale(values)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        display = 1.0 - display
    return display


def _read_raster_array(path: Path) -> np.ndarray:
    """The picture's greyscale values ``[H, W]`` as stored (colour pictures converted to ``L``).

    Decodes the bytes ingest already read for the file's fingerprint where there are any.
    """
    from PIL import Image, UnidentifiedImageError

    source = _source(path)
    try:
        with Image.open(source) as image:
            array = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA") else image)
    except (UnidentifiedImageError, OSError) as error:
        reason = str(error).replace(repr(source), repr(str(path)))  # name the file, not its bytes in memory
        raise ValueError(f"{path} is not a readable image: {reason}") from error
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a greyscale image, found shape {array.shape}")
    return array


def read_raster(path: Path) -> np.ndarray:
    """A PNG/JPEG/TIFF radiograph as float ``[H, W]`` in [0, 1] (8-bit / 255; deeper: percentiles)."""
    array = _read_raster_array(path)
    return array / 255.0 if array.dtype == np.uint8 else percentile_scale(array.astype(np.float64))


def read_radiograph(path: Path) -> np.ndarray:
    """DICOM or raster by suffix (files without a suffix are tried as DICOM)."""
    suffix = Path(path).suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(Path(path))
    return read_dicom(Path(path))


def raw_radiograph(display: np.ndarray) -> np.ndarray:
    """Display values in [0, 1] as the raw values a radiology model takes (float32, 0..255)."""
    return (np.asarray(display, dtype=np.float32) * np.float32(255)).astype(np.float32)


def display_transform(size: int, mean: float = 0.0, std: float = 1.0) -> InputTransform:
    """The input transform of radiograph models: letterbox to ``size``, uint8, [0, 1], ``(x - mean) / std``."""
    from domainfm.shared.model import InputTransform

    return InputTransform(
        channels=["grey"],
        size=[size, size],
        geometry="letterbox",
        scale=1 / 255,
        mean=[mean],
        std=[std],
        quantise="uint8",
        input_range=[0.0, 255.0],
        fill=0.0,
        details={
            "display": "DICOM: modality LUT, VOI LUT or first window (LINEAR/LINEAR_EXACT/SIGMOID), else "
            "0.5-99.5 percentiles; MONOCHROME1 inverted; pictures: 8-bit / 255, deeper by percentiles; x 255",
        },
    )


# raw_radiograph(value / 255) for every 8-bit value: the same float64 division and float32 product per value
RAW_8BIT = raw_radiograph(np.arange(256) / 255.0)
# Every 8-bit value comes back exactly (float64 v / 255 times float32 255 rounds to v), so an 8-bit picture's raw
# values are its values as float32: a conversion instead of a table lookup (checked here, not assumed).
_RAW_8BIT_IS_IDENTITY = bool(np.array_equal(RAW_8BIT, np.arange(256, dtype=np.float32)))


def read_raw(path: Path) -> np.ndarray:
    """``raw_radiograph(read_radiograph(path))``: float32 ``[H, W]`` raw values in 0..255.

    An 8-bit picture takes :data:`RAW_8BIT`'s values (the same arithmetic per value, so the same values bit
    for bit): as a float32 conversion where the table is the identity, as it is, else one lookup per pixel.
    """
    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        array = _read_raster_array(path)
        if array.dtype == np.uint8:
            return array.astype(np.float32) if _RAW_8BIT_IS_IDENTITY else RAW_8BIT[array]
        return raw_radiograph(percentile_scale(array.astype(np.float64)))
    return raw_radiograph(read_dicom(path))


def ingest_tile(path: Path, size: int) -> np.ndarray:
    """A radiograph file as the ``[1, size, size]`` uint8 tile ``radiology ingest`` stores."""
    from domainfm.shared.model import transform_array

    return transform_array(read_raw(Path(path))[None], display_transform(size))
