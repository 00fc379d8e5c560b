"""Radiograph reading: DICOM (modality LUT, VOI window or LUT, MONOCHROME1) and PNG/JPEG, into [0, 1].

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) trains on chest radiographs from DICOM archives; the
display transform matters because a model must see air dark and bone bright whatever the scanner stored:

1. stored values -> modality values by the Modality LUT (``RescaleSlope``/``RescaleIntercept``);
2. modality values -> display values by the VOI LUT sequence if present, else the first window
   (``WindowCenter``/``WindowWidth``, LINEAR or SIGMOID as DICOM PS3.3 C.11.2.1.2 defines them), else
   the 0.5-99.5 percentiles of the image;
3. MONOCHROME1 (minimum = white) is inverted, so air is dark in every output.

Everything stays floating point (16-bit precision) until the final [0, 1] result; the caller scales to
the store's dtype once. :func:`letterbox` resizes with the aspect ratio kept and pads with black (air).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def percentile_scale(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Linear map of the ``low``-``high`` percentiles to [0, 1], clipped."""
    lo, hi = np.percentile(values, [low, high])
    return np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)


def _first(value: object) -> float:
    """The first value of a possibly multi-valued DICOM element."""
    try:
        return float(value[0])  # type: ignore[index]
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    if function == "SIGMOID":
        return 1 / (1 + np.exp(-4 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0, 1)
    return np.clip((values - (center - 0.5)) / max(width - 1, 1e-12) + 0.5, 0, 1)


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM radiograph as float ``[H, W]`` in [0, 1], air dark (see the module docstring)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
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
    if "VOILUTSequence" in ds:
        display = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        display = np.clip((display - lut.min()) / max(lut.max() - lut.min(), 1e-12), 0, 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        display = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
    else:
        display = percentile_scale(values)
    if ds.get("PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        display = 1.0 - display
    return display


def read_raster(path: Path) -> np.ndarray:
    """A PNG/JPEG/TIFF radiograph as float ``[H, W]`` in [0, 1] (8-bit / 255; deeper: percentiles)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA") else image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from error
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a greyscale image, found shape {array.shape}")
    return array / 255.0 if array.dtype == np.uint8 else percentile_scale(array.astype(np.float64))


def read_radiograph(path: Path) -> np.ndarray:
    """DICOM or raster by suffix (files without a suffix are tried as DICOM)."""
    suffix = Path(path).suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(Path(path))
    return read_dicom(Path(path))


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect kept), centre on a black ``size x size`` canvas."""
    from PIL import Image

    height, width = image.shape
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = np.asarray(Image.fromarray(image.astype(np.float32)).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size), np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.clip(resized, 0, 1)
    return canvas
