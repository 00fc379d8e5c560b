r"""Image + mask pairs (PNG, JPEG, TIFF) -> a segmentation tile store.

Pairs are found by file stem (``case_01.png`` + ``case_01.png`` in the mask folder; a mask stem may carry
one of :data:`MASK_SUFFIXES`, as in BUSI's ``benign (1)_mask.png`` or ISIC's ``..._segmentation.png``).
Images are stored RGB uint8 at ``size x size`` (greyscale replicated; 16-bit and float images scaled by
their 0.5-99.5 percentiles), masks as the ``mask`` companion (``[1, size, size]``, 0/1) resized with
nearest neighbour, the original image size as ``source_shape``. GMS resizes every input to a square
(224 x 224) without keeping the aspect ratio; the store does the same and keeps the original size, so
metrics can also be reported at native resolution.

Splits are per **case**: the image stem, or the first group of ``case_pattern`` matched on it (e.g.
``^(patient\d+)_`` keeps every image of a patient together); a ``--splits`` CSV (case, stem or file name ->
split) overrides the stable hash of the case, and each source records its ``group`` (case). Masks are
binarised as :mod:`.masks` describes (threshold 127 for 8-bit pictures, exact for label maps), with a note
per mask that is not clean; files that are not 2-D pictures are listed as skipped with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from domainfm.shared.model import InputTransform

from domainfm.domains.segmentation.masks import (
    DEFAULT_THRESHOLD,
    MaskError,
    check_single_frame,
    unsupported_reason,
)
from domainfm.domains.segmentation.masks import read_mask as read_mask_noted
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import unpaired_report
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.splits import SplitTable, group_split

MASK_SUFFIXES = ("_mask", "_segmentation", "_seg", "_label", "_gt")
READER_VERSION = "2"  # 2: masks thresholded (127) unless label maps; splits per case with the case recorded


class PairingError(DomainfmError, ValueError):
    """Images and masks that do not pair up."""


@dataclass
class Pairing:
    """Image/mask files matched by stem, and what did not match."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    images_without_mask: list[Path] = field(default_factory=list)
    masks_without_image: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every image has a mask and every mask an image."""
        return not (self.images_without_mask or self.masks_without_image)

    def report(self, limit: int = 20) -> str:
        """The unpaired files, one per line (at most ``limit`` of each kind)."""
        unpaired = {
            "images without a mask": self.images_without_mask,
            "masks without an image": self.masks_without_image,
        }
        report = unpaired_report(len(self.pairs), unpaired, limit)
        skipped = [f"  skipped {path}: {reason}" for path, reason in list(self.skipped.items())[:limit]]
        if len(self.skipped) > limit:
            skipped.append(f"  ... and {len(self.skipped) - limit} more skipped files")
        return "\n".join([report, *skipped]) if skipped else report


def _by_stem(
    folder: Path, strip_suffixes: Sequence[str] = (), skipped: dict[Path, str] | None = None
) -> dict[str, Path]:
    if not folder.is_dir():
        raise PairingError(f"{folder} is not a folder of images")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        reason = unsupported_reason(path)
        if reason is not None:
            if skipped is not None:
                skipped[path] = reason
            continue
        stem = path.stem
        for suffix in strip_suffixes:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in found:
            raise PairingError(f"{found[stem]} and {path} share the stem {stem!r}; keep one of them")
        found[stem] = path
    return found


def find_pairs(images: Path, masks: Path) -> Pairing:
    """Matches images to masks by stem (mask stems may end in one of :data:`MASK_SUFFIXES`)."""
    skipped: dict[Path, str] = {}
    image_files = _by_stem(Path(images), skipped=skipped)
    mask_files = _by_stem(Path(masks), skipped=skipped)
    if not set(image_files) & set(mask_files):
        mask_files = _by_stem(Path(masks), MASK_SUFFIXES)
    stems = sorted(set(image_files) & set(mask_files))
    return Pairing(
        [(image_files[s], mask_files[s]) for s in stems],
        [image_files[s] for s in sorted(set(image_files) - set(mask_files))],
        [mask_files[s] for s in sorted(set(mask_files) - set(image_files))],
        skipped,
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        high = low + 1
    return np.clip((values - low) / (high - low) * 255 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """An image as ``[H, W, 3]`` uint8 (greyscale replicated, alpha dropped, >8-bit rescaled)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            check_single_frame(image, Path(path))
            if image.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from error
    if array.ndim == 3 and array.shape[2] > 3:
        array = array[..., :3]
    array = _to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array)


def read_mask(path: Path, foreground: Sequence[int] | None = None, threshold: int = DEFAULT_THRESHOLD) -> np.ndarray:
    """A mask as ``[H, W]`` bool by :mod:`.masks`' rule.

    ``threshold`` 0 takes every nonzero pixel, as stores of reader version 1 were made.
    """
    return read_mask_noted(Path(path), foreground, threshold)[0]


def case_key(image_path: str | Path, case_pattern: str | None = None) -> str:
    """The case of an image: its stem, or the first group (else the match) of ``case_pattern`` on the stem."""
    stem = Path(image_path).stem
    if not case_pattern:
        return stem
    match = re.search(case_pattern, stem)
    if match is None:
        raise PairingError(f"{image_path}: --case_pattern {case_pattern!r} does not match its stem {stem!r}")
    return match.group(1) if match.groups() else match.group(0)


def image_transform(size: int) -> InputTransform:
    """The input transform of segmenters trained on a store of ``size``.

    The whole image resized to a square (aspect not kept, as GMS trains), rounded to uint8, mapped to
    [-1, 1] (``(x / 255 - 0.5) / 0.5``).
    """
    from domainfm.shared.model import InputTransform

    return InputTransform(
        channels=["red", "green", "blue"],
        size=[size, size],
        geometry="resize",
        scale=1 / 255,
        mean=[0.5, 0.5, 0.5],
        std=[0.5, 0.5, 0.5],
        quantise="uint8",
        input_range=[0.0, 255.0],
        details={"read": "RGB uint8; greyscale replicated, alpha dropped, deeper images by their 0.5-99.5 percentiles"},
    )


def read_input_image(path: Path, card: object = None) -> np.ndarray:
    """An image as raw ``[3, H, W]`` float values 0..255, read as ingest reads it (a deployed segmenter's reader)."""
    return read_image(Path(path)).transpose(2, 0, 1).astype(np.float32)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask at ``size x size``: the image through the segmenters' geometry, the mask nearest-neighbour.

    The image (``[size, size, 3]`` uint8) is what :func:`image_transform` makes of it, so a deployed
    segmenter sees the stored tile for the same file.
    """
    from PIL import Image

    from domainfm.shared.model import transform_array

    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[:2]} pixels but its mask is {mask.shape}")
    resized = transform_array(image.transpose(2, 0, 1), image_transform(size)).transpose(1, 2, 0)
    mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return resized, np.asarray(mask_image) > 127


def read_pair(
    image_path: Path,
    masks: dict[str, str],
    size: int,
    foreground: tuple[int, ...] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    threshold: int = DEFAULT_THRESHOLD,
    case_pattern: str | None = None,
    splits: SplitTable | None = None,
) -> Iterator[TileBatch]:
    """Reader for the ingest engine: one image and its mask (found in ``masks`` by image path) as one tile."""
    mask_path = Path(masks[str(image_path)])
    image = read_image(Path(image_path))
    mask, note = read_mask_noted(mask_path, foreground, threshold)
    try:
        tile, tile_mask = resize_pair(image, mask, size)
    except ValueError as error:
        raise ValueError(f"{image_path} and {mask_path}: {error}") from error
    case = case_key(image_path, case_pattern)
    aliases = (Path(image_path).stem, Path(image_path).name)
    split = group_split(case, splits, val_fraction, test_fraction, aliases=aliases)
    yield TileBatch(
        tile.transpose(2, 0, 1)[None],
        index={"label": np.array([int(tile_mask.any())]), "split": np.array([split])},
        companions={
            "mask": tile_mask[None, None].astype(np.uint8),
            "source_shape": np.array([image.shape[:2]], np.int32),
        },
        # where the full-size mask is, so evaluation can also score at each image's own size
        source_meta={
            "mask": str(mask_path),
            "foreground": list(foreground) if foreground else None,
            "mask_threshold": threshold,
            "mask_note": note,
            "group": case,
        },
    )


def segmentation_spec(size: int) -> StoreSpec:
    """The store spec of image + binary-mask pairs at ``size x size``."""
    return StoreSpec(
        "segmentation",
        (3, size, size),
        "uint8",
        [{"name": c} for c in ("R", "G", "B")],
        value_scaling={"tiles": "uint8 RGB; models read x / 127.5 - 1", "mask": "0 background, 1 foreground"},
        label_names=["no_foreground", "foreground"],
        companions={"mask": Companion((1, size, size), "uint8"), "source_shape": Companion((2,), "int32")},
    )


def ingest_pairs(
    images: Path,
    masks: Path,
    out: Path,
    size: int = 224,
    foreground: tuple[int, ...] | None = None,
    allow_unpaired: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    mask_threshold: int = DEFAULT_THRESHOLD,
    case_pattern: str | None = None,
    splits: Path | None = None,
) -> tuple[IngestSummary, Pairing]:
    """Pairs images with masks and ingests the pairs (see the module docstring).

    Unpaired files are refused before anything is written, unless ``allow_unpaired``; then they are
    listed in the returned pairing (and by the CLI) and recorded in the store's ``unpaired`` attribute.
    Files that are not 2-D pictures are skipped and listed (``pairing.skipped``); when nothing else is
    there, the error names them instead of "no mask". ``splits`` is a CSV of case (or stem) -> split.
    """
    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.splits import read_splits_csv

    if case_pattern:
        try:
            re.compile(case_pattern)
        except re.error as error:
            raise PairingError(f"--case_pattern {case_pattern!r} is not a regular expression: {error}") from error
    table = read_splits_csv(splits) if splits else None
    pairing = find_pairs(images, masks)
    if not pairing.pairs and pairing.skipped:
        first, reason = next(iter(pairing.skipped.items()))
        raise MaskError(
            f"no image/mask pair of 2-D pictures in {images} and {masks}: {len(pairing.skipped)} file(s) skipped, "
            f"e.g. {first}: {reason}"
        )
    if not pairing.pairs:
        raise PairingError(f"no image in {images} has a mask in {masks} with the same stem\n{pairing.report()}")
    if not pairing.complete and not allow_unpaired:
        raise PairingError(
            f"{pairing.report()}\nNothing was written. Add the missing files, or pass --allow-unpaired "
            "to ingest the pairs and record the rest."
        )
    mask_of = {str(image): str(mask) for image, mask in pairing.pairs}
    reader = partial(
        read_pair,
        masks=mask_of,
        size=size,
        foreground=foreground,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        threshold=mask_threshold,
        case_pattern=case_pattern,
        splits=table,
    )
    sources = [image for image, _ in pairing.pairs]
    for image in sources:  # every case named by the pattern and listed in --splits, before anything is written
        group_split(case_key(image, case_pattern), table, aliases=(Path(image).stem, Path(image).name))
    summary = ingest(
        sources,
        out,
        segmentation_spec(size),
        reader,
        "segmentation.image_mask_pairs",
        READER_VERSION,
        workers,
        scheduler,
        processes,
        overwrite,
        progress,
        attrs={
            "unpaired": {
                "images_without_mask": [str(p) for p in pairing.images_without_mask],
                "masks_without_image": [str(p) for p in pairing.masks_without_image],
            }
        },
    )
    return summary, pairing


def mask_notes(store: Path) -> list[str]:
    """The notes of masks that were not clean, as recorded per source by the reader."""
    import zarr

    sources = zarr.open_group(store, mode="r").attrs.get("sources", [])
    return [note for source in sources if (note := (source.get("meta") or {}).get("mask_note"))]
