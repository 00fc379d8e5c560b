"""What a remote-sensing ingest must decide before chipping: inputs, scenes, labels and the chip size.

* **Inputs**: folders expand to the rasters (``.tif``, ``.tiff``, ``.jp2``) or MODIS granules (``.hdf``) under
  them; arrays (``.npy``/``.npz``) and other files are refused by name.
* **Scenes** (the split group): chips of one scene share a split, or train and test see the same ground.
  A MODIS granule is its file. A raster band set is its stem (``<stem>_B02.tif`` -> ``<stem>``), except that
  Sentinel-2 names are grouped by datatake: ``S2A_MSIL2A_20170613T101031_87_48`` (a BigEarthNet patch: the
  datatake, then the patch's row and column) and ``S2A_MSIL1C_20170613T101031_N0205_..._T33UUP_...`` (a
  product) both belong to scene ``S2A_MSIL2A_20170613T101031`` / ``S2A_MSIL1C_20170613T101031``. Patches cut
  from one datatake thus never straddle train and test. A ``--splits`` CSV may list scenes, patch names or
  file names.
* **Labels**: a CSV (``name`` + 0/1 columns), or BigEarthNet ``*_labels_metadata.json`` files (one file, or a
  folder searched for them): the patch name is the file name without ``_labels_metadata.json``, the label
  names the sorted union of every file's ``labels``.
* **Chip size**: the SwinV2 encoders reduce by :data:`CHIP_MULTIPLE` (patch 4, three merges: SatVision-TOA)
  and SimMIM masks 8-pixel cells, so a chip must be a multiple of 32 and fit in the source.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from domainfm.domains.remote_sensing.rasters import BAND_SUFFIX
from domainfm.shared.errors import DomainfmError

HDF_SUFFIXES = (".hdf", ".hdf4", ".h4")
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
ARRAY_SUFFIXES = (".npy", ".npz")
CHIP_MULTIPLE = 32
BIGEARTHNET_LABELS = "_labels_metadata.json"
SENTINEL2_SCENE = re.compile(r"^(?P<scene>S2[A-D]_MSIL(?:1C|2A)_\d{8}T\d{4,6})(?:_|$)", re.IGNORECASE)


class RemoteSensingInputError(DomainfmError, ValueError):
    """Remote-sensing inputs, labels or options that cannot be used; the message names the file and the fix."""


def expand_inputs(files: list[Path]) -> list[Path]:
    """Files as given, folders replaced by the rasters and granules under them (sorted); others refused."""
    expanded: list[Path] = []
    for path in map(Path, files):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*RASTER_SUFFIXES, *HDF_SUFFIXES)
            )
            if not found:
                raise RemoteSensingInputError(
                    f"{path}: folder holds no raster ({', '.join(RASTER_SUFFIXES)}) or MODIS granule (.hdf)"
                )
            expanded += found
        elif path.suffix.lower() in ARRAY_SUFFIXES:
            raise RemoteSensingInputError(
                f"{path}: a NumPy array is not a raster; give GeoTIFF/JP2 band files or MODIS .hdf granules "
                "(already-tiled arrays go through `domainfm tiles ingest`)"
            )
        else:
            expanded.append(path)
    return expanded


def patch_name(path: str | Path) -> str:
    """The band set's name: the file stem without a ``_B02``-style band suffix."""
    stem = Path(path).stem
    match = BAND_SUFFIX.match(stem)
    return match["stem"] if match else stem


def scene_key(path: str | Path, modis: bool = False) -> str:
    """The split group of a source (see the module docstring)."""
    if modis:
        return Path(path).name
    name = patch_name(path)
    match = SENTINEL2_SCENE.match(name)
    return match["scene"].upper() if match else name


def check_chip(chip: int, height: int | None = None, width: int | None = None, source: str = "") -> None:
    """Refuses a chip that the SwinV2/SimMIM geometry cannot use or that does not fit the source, naming valid sizes."""
    side = min(height, width) if height and width else None
    valid = [s for s in range(CHIP_MULTIPLE, (side or 4 * CHIP_MULTIPLE) + 1, CHIP_MULTIPLE)]
    where = f"{source}: " if source else ""
    sizes = ", ".join(map(str, valid)) if valid else "none (the source is smaller than 32 pixels)"
    if chip % CHIP_MULTIPLE:
        raise RemoteSensingInputError(
            f"{where}--chip {chip} does not fit the SwinV2 encoders (patch 4, three merges) and SimMIM's 8-pixel "
            f"mask cells: use a multiple of {CHIP_MULTIPLE}"
            + (f"; sizes that fit {height} x {width}: {sizes}" if side else "")
        )
    if side is not None and chip > side:
        raise RemoteSensingInputError(
            f"{where}--chip {chip} is larger than the source ({height} x {width} pixels), so no chip fits; "
            f"use --chip {sizes}"
        )


def read_label_csv(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """``(label names, source stem -> multi-hot)`` from a CSV with a ``name`` column and 0/1 columns."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "name" not in rows[0]:
        raise RemoteSensingInputError(
            f"{path}: a labels CSV needs a name column (the source's stem) and 0/1 label columns"
        )
    names = [k for k in rows[0] if k != "name"]
    return names, {r["name"]: [int(float(r[n] or 0) > 0) for n in names] for r in rows}


def read_bigearthnet_labels(files: list[Path]) -> tuple[list[str], dict[str, list[int]]]:
    """``(label names, patch name -> multi-hot)`` from BigEarthNet ``*_labels_metadata.json`` files."""
    per_patch: dict[str, list[str]] = {}
    for path in files:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            labels = record["labels"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RemoteSensingInputError(
                f"{path}: not a BigEarthNet labels file (a JSON object with a 'labels' list): {error}"
            ) from error
        if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
            raise RemoteSensingInputError(f"{path}: 'labels' must be a list of class names")
        per_patch[Path(path).name[: -len(BIGEARTHNET_LABELS)]] = labels
    names = sorted({label for labels in per_patch.values() for label in labels})
    return names, {patch: [int(n in labels) for n in names] for patch, labels in per_patch.items()}


def read_labels(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """Scene labels from a CSV, one BigEarthNet labels JSON, or a folder searched for them."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob(f"*{BIGEARTHNET_LABELS}"))
        if not found:
            raise RemoteSensingInputError(f"{path}: no BigEarthNet *{BIGEARTHNET_LABELS} file under this folder")
        return read_bigearthnet_labels(found)
    if not path.is_file():
        raise RemoteSensingInputError(f"{path}: labels file not found")
    if path.name.endswith(BIGEARTHNET_LABELS) or path.suffix.lower() == ".json":
        if not path.name.endswith(BIGEARTHNET_LABELS):
            raise RemoteSensingInputError(
                f"{path}: a labels JSON must be BigEarthNet's <patch>{BIGEARTHNET_LABELS} (the name gives the patch)"
            )
        return read_bigearthnet_labels([path])
    return read_label_csv(path)
