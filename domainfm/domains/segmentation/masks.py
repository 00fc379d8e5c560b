"""Masks as users hand them over (8-bit pictures, often JPEG; PNG label maps; palette images), and unread files.

A mask is binarised by one rule, recorded per source:

* ``foreground`` given: pixels whose stored value (a palette image's index, a label map's label) is listed.
* a palette image, or a lossless greyscale label map (PNG/TIFF/BMP whose values are a few small labels, all
  at most ``threshold``): exact, every nonzero label is foreground.
* otherwise (8-bit masks, JPEG): foreground is ``value > threshold`` (default 127), so JPEG ringing around
  0 and 255 does not become foreground speckle.

A thresholded mask is *clean* when it holds two values at most; otherwise :func:`read_mask` returns a note
naming the file and how many pixels lay between (lossy compression), which ingest prints as a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from domainfm.shared.errors import DomainfmError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSSLESS_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm", ".npy", ".npz")
DEFAULT_THRESHOLD = 127
MAX_LABELS = 32


class MaskError(DomainfmError, ValueError):
    """A mask or image file that cannot be used; the message names it and the fix."""


def full_suffix(path: Path) -> str:
    """The lower-case suffix, counting ``.nii.gz`` as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def unsupported_reason(path: Path) -> str | None:
    """Why a file in an image or mask folder is not read, or ``None`` for a supported picture."""
    suffix = full_suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return None
    if suffix in VOLUME_SUFFIXES:
        return f"{suffix} volumes/arrays are not read; export 2-D slices as PNG (image and mask with one stem)"
    return f"unsupported extension {suffix or '(none)'}; use {', '.join(IMAGE_SUFFIXES)}"


def check_single_frame(image: object, path: Path) -> None:
    """Refuses a multi-page (3-D) TIFF: only 2-D pictures are segmentation inputs."""
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        raise MaskError(f"{path}: a 3-D stack of {frames} pages; export each slice as its own 2-D picture")


def binarise(
    array: np.ndarray, path: Path, foreground: Sequence[int] | None, threshold: int, palette: bool
) -> tuple[np.ndarray, str | None]:
    """``(mask, note)`` by the module's rule; ``note`` describes a mask that is not clean."""
    if foreground:
        return np.isin(array, list(foreground)), None
    values = np.unique(array)
    label_map = palette or (
        full_suffix(path) in LOSSLESS_SUFFIXES and len(values) <= MAX_LABELS and values.max(initial=0) <= threshold
    )
    if label_map or array.dtype == bool:
        return array > 0, None
    mask = array > threshold
    if len(values) <= 2:
        return mask, None
    between = int(((array != values.min()) & (array != values.max())).sum())
    note = (
        f"{path}: mask is not clean: {between} pixels ({100 * between / array.size:.1f} %) hold {len(values)} "
        f"values besides {values.min()} and {values.max()} (lossy JPEG?); foreground is value > {threshold} "
        "(--mask_threshold)"
    )
    return mask, note


def read_mask(
    path: Path, foreground: Sequence[int] | None = None, threshold: int = DEFAULT_THRESHOLD
) -> tuple[np.ndarray, str | None]:
    """A mask as ``[H, W]`` bool and a note when it is not clean (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            check_single_frame(image, path)
            palette = image.mode in ("P", "PA")
            if palette:
                array = np.asarray(image.convert("P") if image.mode == "PA" else image)
            else:
                array = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "LA", "CMYK") else image)
    except (UnidentifiedImageError, OSError) as error:
        raise MaskError(f"{path} is not a readable mask: {error}") from error
    if array.ndim != 2:
        raise MaskError(f"{path}: a mask must have one channel, found shape {array.shape}")
    return binarise(array, path, foreground, threshold, palette)
