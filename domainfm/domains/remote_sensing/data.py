"""Chipping MODIS granules and GDAL rasters into a remote-sensing tile store (``remote-sensing ingest``).

Chips are ``[C, chip, chip]`` float32 on a regular grid over each source, in row-major order. MODIS chips
hold SatVision-TOA's [0, 1] scaling of reflectance (%) and brightness temperature (K) (arXiv 2411.17000;
band table in :mod:`.bands`); raster chips hold the file's values. Invalid pixels (L1B fill and saturation
codes, raster nodata) are stored as 0 and flagged in the ``valid`` companion (``[C, chip, chip]``, 1 =
valid), are left out of the store's statistics, and a chip with less than ``min_valid`` valid pixels is
dropped. Band names, wavelengths and scalings go into the store's channel table. Extra companions:
``curtain`` (91 x 40 cloud curtain) and ``cloud_mask`` (per pixel), when the granules carry cloud
ground truth (``--curtains``), ``transform`` (the chip's
affine transform) and ``crs`` (rasters), ``labels`` (multi-hot, rasters with a labels CSV or BigEarthNet
``labels_metadata.json`` files).

Splits are decided per scene (:func:`.scenes.scene_key`: the granule, the band set, or a Sentinel-2 datatake),
from a ``--splits`` CSV or a stable hash of the scene, and each source records its ``group`` (scene) key in
the sources table. The chip size is checked against the encoders' geometry before anything is written, and
an ingest that writes no chip is an error naming the cause.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np

from domainfm.domains.remote_sensing.bands import select_bands
from domainfm.domains.remote_sensing.curtain import CURTAIN_SHAPE, curtain
from domainfm.domains.remote_sensing.scenes import (
    HDF_SUFFIXES,
    RemoteSensingInputError,
    check_chip,
    expand_inputs,
    patch_name,
    read_label_csv,
    read_labels,
    scene_key,
)
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import TEXT, Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.splits import SplitTable, group_split

READER_VERSION = "2"  # 2: splits per scene (was per chip), group key recorded per source
# Contact-sheet composites, first that the bands allow: true colour (red, green, blue); for SatVision's 14
# MODIS bands, which lack B04 (green), NASA Worldview's 7-2-1 false colour.
DISPLAY_BANDS = {"raster": [("B04", "B03", "B02")], "modis": [("B01", "B04", "B03"), ("B07", "B02", "B01")]}
__all__ = ["HDF_SUFFIXES", "ingest_chips", "read_label_csv"]


def source_split(path: str | Path, splits: SplitTable | None, modis: bool) -> tuple[int, str]:
    """``(split id, scene key)`` of one source: the CSV's entry (scene, patch or file name) or the scene's hash."""
    scene = scene_key(path, modis)
    aliases = (patch_name(path), Path(path).name, Path(path).stem)
    return group_split(scene, splits, aliases=aliases), scene


def chip_origins(height: int, width: int, chip: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``chip`` x ``chip`` windows that fit."""
    return [(y, x) for y in range(0, height - chip + 1, chip) for x in range(0, width - chip + 1, chip)]


def _batches(
    values: np.ndarray,
    valid: np.ndarray,
    chip: int,
    min_valid: float,
    source: str,
    pixel_size: float,
    split: tuple[int, str],
    **companions: object,
) -> Iterator[TileBatch]:
    yield TileBatch(np.zeros((0, values.shape[0], chip, chip), np.float32), source_meta={"group": split[1]})
    for y, x in chip_origins(values.shape[1], values.shape[2], chip):
        window = (slice(None), slice(y, y + chip), slice(x, x + chip))
        ok = valid[window]
        if ok.mean() < min_valid:
            continue
        tile = np.where(ok, np.nan_to_num(values[window]), 0).astype(np.float32)
        chip_companions = {"valid": ok[None].astype(np.uint8)}
        for name, make in companions.items():
            chip_companions[name] = make(y, x)  # type: ignore[operator]
        yield TileBatch(
            tile[None],
            index={
                "x": np.array([x]),
                "y": np.array([y]),
                "scale": np.array([pixel_size]),
                "split": np.array([split[0]]),
            },
            companions=chip_companions,
            valid=ok.all(axis=0)[None, None],
        )


def read_granule_chips(
    path: Path, chip: int, bands: list[str] | None, min_valid: float, curtains: bool, splits: SplitTable | None = None
) -> Iterator[TileBatch]:
    """Reader for the ingest engine: SatVision-scaled chips of one L1B granule."""
    from domainfm.domains.remote_sensing.modis import read_l1b

    granule = read_l1b(Path(path), bands)
    scaled = np.stack([band.scale(plane) for band, plane in zip(granule.bands, granule.values, strict=True)])
    extra = {}
    if curtains:
        truth_path = Path(str(path) + ".truth.npz")
        if not truth_path.is_file():
            raise ValueError(f"{path}: no cloud-height truth {truth_path.name} beside it (needed for --curtains)")
        with np.load(truth_path) as truth:
            top, base = truth["cloud_top_km"], truth["cloud_base_km"]
        extra["curtain"] = lambda y, x: curtain(top[y : y + chip, x : x + chip], base[y : y + chip, x : x + chip])[None]
        extra["cloud_mask"] = lambda y, x: (~np.isnan(top[y : y + chip, x : x + chip]))[None, None].astype(np.uint8)
    split = source_split(path, splits, modis=True)
    yield from _batches(scaled, granule.valid, chip, min_valid, str(path), 1000.0, split, **extra)


def read_raster_chips(
    path: Path, groups: dict[str, list[str]], chip: int, bands: list[str] | None, min_valid: float,
    labels: dict[str, list[int]] | None = None, splits: SplitTable | None = None,
) -> Iterator[TileBatch]:  # fmt: skip
    """Reader for the ingest engine: chips of one raster band set (grouped files resampled to one grid)."""
    from domainfm.domains.remote_sensing.rasters import read_stack

    files = [Path(f) for f in groups[str(path)]]
    stack = read_stack(files, bands)
    a, b, c, d, e, f = stack.transform
    extra = {
        "transform": lambda y, x: np.array([[a, b, c + a * x + b * y, d, e, f + d * x + e * y]], np.float64),
        "crs": lambda y, x: [stack.crs],
    }
    if labels is not None:
        key = patch_name(path) if len(files) > 1 else Path(path).stem
        if key not in labels:
            raise RemoteSensingInputError(f"{path}: no labels for {key!r} (no CSV row or {key}_labels_metadata.json)")
        extra["labels"] = lambda y, x: np.asarray([labels[key]], np.uint8)
    split = source_split(path, splits, modis=False)
    yield from _batches(stack.values, stack.valid, chip, min_valid, str(path), stack.resolution, split, **extra)


def modis_spec(chip: int, bands: list[str] | None, curtains: bool) -> StoreSpec:
    """Store spec of SatVision-scaled MODIS chips."""
    selected = select_bands(bands)
    channels = [
        {
            "name": b.name,
            "band": b.number,
            "wavelength_um": b.wavelength_um,
            "quantity": b.quantity,
            "unit": "%" if b.quantity == "reflectance" else "K",
            "scaling": [b.low, b.high],
        }
        for b in selected
    ]
    companions = {"valid": Companion((len(selected), chip, chip), "uint8")}
    if curtains:
        companions["curtain"] = Companion(CURTAIN_SHAPE, "uint8")
        companions["cloud_mask"] = Companion((1, chip, chip), "uint8")
    scaling = {
        "tiles": "SatVision-TOA: (x - low) / (high - low) per band, not clipped; invalid = 0, see valid",
        **display((b.name for b in selected), "modis"),
    }
    return StoreSpec("remote_sensing", (len(selected), chip, chip), "float32", channels, scaling, [], companions)


def raster_spec(first: list[Path], chip: int, bands: list[str] | None, label_names: list[str]) -> StoreSpec:
    """Store spec of raster chips, from the first band set."""
    from domainfm.domains.remote_sensing.rasters import read_stack

    stack = read_stack(first, bands)
    check_chip(chip, *stack.values.shape[1:], source=str(first[0]))
    channels = [{"name": name} for name in stack.band_names]
    companions = {
        "valid": Companion((len(channels), chip, chip), "uint8"),
        "transform": Companion((6,), "float64"),
        "crs": Companion((), TEXT),
    }
    if label_names:
        companions["labels"] = Companion((len(label_names),), "uint8")
    scaling = {
        "tiles": "values as stored in the rasters; invalid (nodata) = 0, see valid",
        "resolution": stack.resolution,
        **display(stack.band_names, "raster"),
    }
    return StoreSpec(
        "remote_sensing", (len(channels), chip, chip), "float32", channels, scaling, label_names, companions
    )


def display(band_names: Iterable[str], kind: str) -> dict[str, object]:
    """The contact sheet's composite (:data:`DISPLAY_BANDS` of ``kind``: raster or modis) and its 2-98 % stretch."""
    names = {n.upper() for n in band_names}
    rgb = next((list(bands) for bands in DISPLAY_BANDS[kind] if set(bands) <= names), None)
    return ({"display_channels": rgb} if rgb else {}) | {"display_stretch": [2, 98]}


def ingest_chips(
    files: list[Path],
    out: Path,
    chip: int = 128,
    bands: list[str] | None = None,
    min_valid: float = 0.9,
    curtains: bool = False,
    labels: Path | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    splits: Path | None = None,
) -> IngestSummary:
    """Chips MODIS L1B granules (``.hdf``) or GDAL rasters into one store (all sources of one kind).

    Folders expand to their rasters or granules; ``splits`` is a CSV of scene (or patch or file name) ->
    split. Raises :class:`RemoteSensingInputError` for a chip size the encoders cannot use, and when no chip
    was written.
    """
    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.splits import read_splits_csv

    files = expand_inputs([Path(f) for f in files])
    table = read_splits_csv(splits) if splits else None
    kinds = {f.suffix.lower() in HDF_SUFFIXES for f in files}
    if len(kinds) != 1:
        raise DomainfmError("give either MODIS L1B granules (.hdf) or GDAL rasters in one ingest, not both")
    if kinds == {True}:
        check_chip(chip)  # granules are read whole by the reader; rasters are checked against their size below
        spec = modis_spec(chip, bands, curtains)
        reader = partial(
            read_granule_chips, chip=chip, bands=bands, min_valid=min_valid, curtains=curtains, splits=table
        )
        sources, name = files, "remote_sensing.modis_l1b"
    else:
        from domainfm.domains.remote_sensing.rasters import group_band_files

        groups = group_band_files(files)
        label_names, label_map = read_labels(labels) if labels else ([], None)
        spec = raster_spec(next(iter(groups.values())), chip, bands, label_names)
        reader = partial(
            read_raster_chips, groups={str(k): [str(p) for p in v] for k, v in groups.items()}, chip=chip,
            bands=bands or spec_band_names(spec), min_valid=min_valid, labels=label_map, splits=table,
        )  # fmt: skip
        sources, name = list(groups), "remote_sensing.gdal_raster"
    for source in sources:  # a scene missing from --splits is refused before anything is written
        source_split(source, table, modis=kinds == {True})
    summary = ingest(
        sources, out, spec, reader, name, READER_VERSION, workers, scheduler, processes, overwrite, progress
    )
    if summary.ok and summary.n_tiles == 0:
        raise RemoteSensingInputError(
            f"{out}: no chip written from {len(sources)} source(s): every {chip} x {chip} chip had less than "
            f"--min_valid {min_valid} valid pixels, or the sources are smaller than the chip; lower --min_valid "
            "or --chip"
        )
    return summary


def spec_band_names(spec: StoreSpec) -> list[str]:
    """Channel names of a store spec."""
    return [c["name"] for c in spec.channels]
