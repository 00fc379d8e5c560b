"""Reading one input file as a raw ``[C, H, W]`` float tensor, the way a deployed network expects it.

* ``.png``/``.jpg``/``.tif`` pictures: RGB (3-channel cards) or grey (1-channel cards) values 0..255;
* any suffix the card's domain reads itself: its ``deploy`` module's ``INPUT_READERS``, each
  ``reader(path, card) -> [C, H, W]`` raw values read as that domain's ingest reads them (e.g. ``.dcm``
  through the DICOM display transform, x 255; a satellite granule's bands the card names, scaled, invalid 0);
* ``.npy``: an array ``[C, H, W]`` (e.g. a 14-band chip in the store's units), loaded without pickles;
* GeoTIFF with more than 4 bands, or any ``.tif`` a picture reader refuses: rasterio, bands first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from domainfm.shared.deploy.card import ModelCard
from domainfm.shared.deploy.registry import domain_module
from domainfm.shared.errors import DomainfmError

PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(DomainfmError, ValueError):
    """An input file a deployed model cannot read."""


def _picture(path: Path, channels: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if channels not in (1, 3):
            raise InputError(f"{path}: a picture has 1 or 3 channels; this model takes {channels} (give a .npy)")
        array = np.asarray(image.convert("RGB" if channels == 3 else "L"), dtype=np.float32)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _raster(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as source:
        return source.read().astype(np.float32)


def read_array(path: str | Path, card: ModelCard) -> np.ndarray:
    """``path`` as float32 ``[C, H, W]`` raw values (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    suffix = path.suffix.lower()
    domain_readers = getattr(domain_module(card.kind), "INPUT_READERS", {})
    if suffix in domain_readers:
        try:
            array = np.asarray(domain_readers[suffix](path, card), dtype=np.float32)
        except (ValueError, OSError) as error:  # the domain's readers name what is wrong with the file
            raise InputError(f"{path}: cannot be read as an input of {card.kind} ({error})") from error
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False).astype(np.float32)
        except (ValueError, EOFError, OSError) as error:  # not an .npy, empty or truncated, or pickled objects
            raise InputError(f"{path}: cannot be read as a NumPy array [C, H, W] ({error})") from error
        if array.ndim == 2:
            array = array[None]
    elif suffix in PICTURES and card.in_channels in (1, 3):
        array = _picture(path, card.in_channels)
    elif suffix in (".tif", ".tiff"):
        array = _raster(path)
    else:
        raise InputError(f"{path}: unknown input type {suffix!r}; give .png/.jpg/.tif, .dcm or .npy [C, H, W]")
    check_shape(path, array, card)
    check_finite(path, array)
    return array


def check_shape(path: Path, array: np.ndarray, card: ModelCard) -> None:
    """Refuses an input array that is not ``[C, H, W]`` with the card's channel count, naming the file."""
    if array.ndim != 3 or array.shape[0] != card.in_channels:
        raise InputError(
            f"{path} holds an array of shape {list(array.shape)}; {card.kind} takes [{card.in_channels}, H, W] "
            f"({', '.join(card.channel_names)})"
        )


def check_finite(path: Path, array: np.ndarray) -> None:
    """Refuses an input array holding NaN or infinite values, naming the file."""
    if not np.isfinite(array).all():
        raise InputError(f"{path} holds NaN or infinite values: fill them (e.g. with 0) and keep a validity mask")


def read_input(path: str | Path, card: ModelCard) -> torch.Tensor:
    """``path`` as a float tensor ``[1, C, H, W]``, ready for :func:`domainfm.shared.deploy.predict`."""
    return torch.from_numpy(read_array(path, card))[None]
