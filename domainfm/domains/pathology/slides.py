"""Whole-slide access through OpenSlide: opening, microns per pixel, pyramid levels and bounded reads.

Every format OpenSlide 4 reads (Aperio SVS, Hamamatsu NDPI/VMS, 3DHistech MRXS, Leica SCN, Ventana BIF,
Philips TIFF, DICOM-WSI, generic tiled TIFF) opens here; ``openslide-bin`` ships the library as a wheel.
Plain images (PNG, JPEG, BMP, untiled TIFF: patch datasets) open as one-level slides through
``openslide.ImageSlide`` and need ``--assume-mpp``.

Microns per pixel are resolved in this order, and the key that answered is recorded (``mpp_source``):
``openslide.mpp-x``/``-y`` (OpenSlide's normalised value, vendor keys already folded in), ``aperio.MPP``,
the TIFF ``XResolution`` with a centimetre or inch ``ResolutionUnit``, and finally the user's
``--assume-mpp``. A slide without any is refused: objective power is never turned into an mpp (a 3DHistech
"20x" is 0.234 mpp, twice off a power-based guess; ``shared/methods/pluto.md`` section 4).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.optional import require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # plain images: one-level slides
IMAGE_VENDOR = "image"  # the vendor recorded for a plain image (no slide properties)
LEVEL_TOLERANCE = 1.01  # a level whose downsample is within 1 % of the target still counts as "not finer"


class SlideError(DomainfmError, ValueError):
    """A slide that cannot be used as asked (unreadable, no mpp, ...); the message names the file and the fix."""


@dataclass(frozen=True)
class SlideInfo:
    """What the tiler needs to know about a slide."""

    path: str
    vendor: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    level_downsamples: tuple[float, ...]
    level_dimensions: tuple[tuple[int, int], ...]
    objective_power: float | None

    def to_meta(self) -> dict[str, Any]:
        """JSON form for the store's sources table."""
        return {
            "vendor": self.vendor,
            "level0_width": self.width,
            "level0_height": self.height,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "level_downsamples": list(self.level_downsamples),
            "objective_power": self.objective_power,
        }


def open_slide(path: str | Path) -> Any:
    """An ``openslide.OpenSlide`` handle, or a :class:`SlideError` naming the file."""
    openslide = require("openslide", "pathology")
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such slide file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as error:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return open_image(path)
        raise SlideError(f"{path}: not a slide format OpenSlide reads ({error or 'unrecognised'})") from error
    except openslide.OpenSlideError as error:
        raise SlideError(f"{path}: OpenSlide cannot read it, the file may be corrupt or truncated ({error})") from error


def open_image(path: Path) -> Any:
    """A plain image (PNG, JPEG, BMP, untiled TIFF) as a one-level slide (``openslide.ImageSlide``).

    It records no microns per pixel, so tiling needs ``--assume-mpp``.
    """
    openslide = require("openslide", "pathology")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()  # a truncated or foreign file fails here, by name, not later in a reading thread
        return openslide.ImageSlide(str(path))
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise SlideError(f"{path}: not a readable image ({error})") from error


def _tiff_resolution_mpp(properties: dict[str, str]) -> float | None:
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    per_unit = {"centimeter": 1e4, "inch": 25400.0}.get(unit)
    try:
        resolution = float(properties["tiff.XResolution"])
    except (KeyError, ValueError):
        return None
    if per_unit is None or resolution <= 0:
        return None
    return per_unit / resolution


def resolve_mpp(properties: dict[str, str], assume_mpp: float | None = None, path: str = "") -> tuple[float, str]:
    """``(mpp, source key)`` from slide properties, else ``assume_mpp``; a :class:`SlideError` when neither."""
    for key in ("openslide.mpp-x", "aperio.MPP"):
        try:
            value = float(properties[key])
        except (KeyError, ValueError):
            continue
        if value > 0:
            return value, key
    value = _tiff_resolution_mpp(properties)
    if value is not None:
        return value, "tiff.XResolution"
    if assume_mpp is not None:
        if assume_mpp <= 0:
            raise SlideError(f"{path}: --assume-mpp must be positive, got {assume_mpp}")
        return float(assume_mpp), "--assume-mpp"
    raise SlideError(
        f"{path}: the slide records no microns per pixel (no openslide.mpp-x, aperio.MPP or TIFF resolution). "
        "Pass --assume-mpp X with the scanner's true value (e.g. 0.25 for 40x, 0.5 for 20x on most scanners); "
        "it is not guessed from objective power."
    )


def slide_info(slide: Any, path: str | Path, assume_mpp: float | None = None) -> SlideInfo:
    """Geometry and resolution of an open slide."""
    properties = dict(slide.properties)
    mpp, source = resolve_mpp(properties, assume_mpp, str(path))
    power = properties.get("openslide.objective-power")
    width, height = slide.dimensions
    return SlideInfo(
        path=str(path),
        vendor=properties.get("openslide.vendor", "generic" if properties else IMAGE_VENDOR),
        width=int(width),
        height=int(height),
        mpp=mpp,
        mpp_source=source,
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        level_dimensions=tuple((int(w), int(h)) for w, h in slide.level_dimensions),
        objective_power=float(power) if power else None,
    )


def best_level(downsamples: tuple[float, ...], target: float) -> int:
    """The coarsest pyramid level that is not coarser than ``target`` (level downsample, 1 % tolerance)."""
    candidates = [i for i, d in enumerate(downsamples) if d <= target * LEVEL_TOLERANCE]
    return max(candidates, key=lambda i: downsamples[i]) if candidates else 0


OPAQUE = np.uint32(0xFF000000)


@functools.cache
def _native_read_region() -> tuple[Any, Any]:
    """OpenSlide's C ``read_region`` and its buffer pointer type, looked up once (``(None, None)`` if unusable)."""
    from openslide import lowlevel

    native = getattr(lowlevel, "_read_region", None)
    if native is None or not np.little_endian:
        return None, None
    return native, lowlevel.POINTER(lowlevel.c_uint32)


def read_bgra(slide: Any, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
    """``[height, width, 4]`` uint8 in memory order B, G, R, A (premultiplied alpha), decoded straight into numpy.

    Calls OpenSlide's C ``openslide_read_region`` through openslide-python's ctypes binding (which releases
    the GIL) into a numpy buffer: no PIL image and no copy back, which ``OpenSlide.read_region`` costs.
    Falls back to ``read_region`` where the binding lacks the function or on big-endian machines.
    """
    native, pointer = _native_read_region()
    if native is None or not hasattr(slide, "_osr"):
        rgba = np.asarray(slide.read_region((x, y), level, (width, height))).astype(np.uint16)
        premultiplied = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return np.concatenate([premultiplied[..., ::-1], rgba[..., 3:]], axis=-1).astype(np.uint8)
    argb = np.empty((height, width), np.uint32)
    native(slide._osr, argb.ctypes.data_as(pointer), x, y, level, width, height)
    return argb.view(np.uint8).reshape(height, width, 4)


def bgra_to_rgb(bgra: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` RGB of premultiplied BGRA composited on white (transparent = outside the scan)."""
    if bgra.view(np.uint32).min() >= OPAQUE:
        return bgra[..., 2::-1]
    alpha = bgra[..., 3:].astype(np.uint16)
    return (bgra[..., 2::-1] + (255 - alpha)).astype(np.uint8)  # premultiplied c + white * (1 - a)


def rgb_on_white(region: Any) -> np.ndarray:
    """``[H, W, 3]`` uint8 from OpenSlide's RGBA region (image or array), transparent areas (outside the scan) white."""
    rgba = np.asarray(region)
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    return (rgba[..., :3] * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)


def _coarsest_exact_level(downsamples: tuple[float, ...], final: float, level: int, factor: int) -> tuple[int, int]:
    """The coarsest level whose downsample divides ``final`` (and the integer factor left), else ``(level, factor)``.

    ``best_level`` picks the level under the *requested* downsample; rounding the factor can land exactly on a
    coarser level (14x asked, level 4x times 4 = 16x, and the slide has a 16x level), which is 16 times fewer
    pixels to decode for the same thumbnail resolution.
    """
    for candidate in sorted(range(len(downsamples)), key=lambda i: -downsamples[i]):
        ratio = final / float(downsamples[candidate])
        if ratio >= 1 - 1e-3 and abs(ratio - round(ratio)) < 1e-3 * ratio:
            return candidate, max(1, round(ratio))
    return level, factor


def read_thumbnail(slide: Any, downsample: float, chunk: int = 1024) -> tuple[np.ndarray, float]:
    """The slide at about ``downsample`` as ``[h, w, 3]`` uint8, and the exact downsample used.

    Reads the best pyramid level in ``chunk``-sized windows and reduces each by an integer factor, so a
    slide without a pyramid costs memory for one window and the thumbnail, never for the whole level
    (1,024 px windows: a few MB each beside the thumbnail, which is at most 8,192 px a side).
    """
    from PIL import Image

    downsample = max(1.0, float(downsample))
    level = best_level(tuple(slide.level_downsamples), downsample)
    level_ds = float(slide.level_downsamples[level])
    factor = max(1, round(downsample / level_ds))
    level, factor = _coarsest_exact_level(tuple(slide.level_downsamples), level_ds * factor, level, factor)
    level_ds = float(slide.level_downsamples[level])
    chunk = max(factor, chunk - chunk % factor)
    width, height = slide.level_dimensions[level]
    out_w, out_h = max(1, width // factor), max(1, height // factor)
    thumbnail = np.full((out_h, out_w, 3), 255, np.uint8)
    for y in range(0, out_h * factor, chunk):
        for x in range(0, out_w * factor, chunk):
            w, h = min(chunk, out_w * factor - x), min(chunk, out_h * factor - y)
            origin = (round(x * level_ds), round(y * level_ds))
            rgb = bgra_to_rgb(read_bgra(slide, *origin, level, w, h))
            if factor > 1:  # Pillow's box reduction; a level read at its own size is copied as it is
                rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(factor))
            thumbnail[y // factor : y // factor + rgb.shape[0], x // factor : x // factor + rgb.shape[1]] = rgb
    return thumbnail, level_ds * factor
