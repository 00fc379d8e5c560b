"""``domainfm remote-sensing predict``: cloud masks as COGs, cloud curtains as NetCDF, scene labels as CSV.

Inputs are read exactly as ``remote-sensing ingest`` and the deployed model read them
(:data:`.deploy.INPUT_READERS`): MODIS L1B granules (``.hdf``, pyhdf; the card's bands, SatVision-TOA
scaled, invalid pixels 0), GeoTIFFs holding the card's bands by name (band descriptions; nodata 0) and
``.npy`` chips ``[C, H, W]`` in the store's units. Where each result lies comes from :mod:`.geofiles`.
For each input ``NAME.EXT``, by the model's kind:

* **cloud mask** (``remote_sensing.cloud_mask``, window geometry: a sliding window of the chip size over
  inputs of any size, Gaussian-blended, as the deployed network does): ``masks/NAME.tif``, a uint8
  Cloud-Optimised GeoTIFF (0 clear, 1 cloud where the probability is at least ``threshold``; a colour
  table in the overlay's colours) with the GeoTIFF input's CRS and transform, or a swath's tie points as
  GCPs (EPSG:4326), or no georeference for ``.npy`` chips; with ``probabilities`` also
  ``probabilities/NAME.tif`` (float32 COG, same georeference); ``overlays/NAME.png``, the mask tinted and
  outlined over the input's false-colour 7-2-1 composite (:func:`domainfm.shared.explain.overlay.display_rgb`).
* **cloud curtain** (``remote_sensing.curtain``, SatVision-TOA's 3D-cloud task, arXiv 2411.17000): the
  model takes one chip and gives 91 along-track samples x 40 height bins under the chip's central column
  (:mod:`.curtain`). The track is the input's central pixel column: chips of the model's size centred on
  it, from the top, one after another (rows that do not fill a last chip are left out, as ingest's chip
  grid leaves them), their curtains joined along track. ``curtains/NAME.nc`` (CF-NetCDF: probabilities and
  the thresholded mask, each sample's input row, column and chip, and its latitude/longitude when the
  input is georeferenced) and ``curtains/NAME.png`` (section plot).
* **scene labels** (``remote_sensing.scenes``): the model takes one chip of its size; the row of
  ``predictions.csv`` holds each label's probability and the labels at or above ``threshold``.

With ``explain``, ``explanations/NAME.png`` is the ``domainfm explain`` overlay of the input (integrated
gradients of the summed cloud probability, or of the top scene label; docs/explain.md), pixel for pixel
the picture ``explain`` writes; for curtains one per chip of the track, ``explanations/NAME_chipK.png``
(``NAME.png`` for a one-chip input).
Inputs too large to hold are read region by region (:mod:`.strips`): a cloud mask of a GeoTIFF or ``.npy``
whose bands exceed :data:`.strips.MEMORY_BUDGET` is predicted strip by strip with the same values as a whole
read, a curtain reads only its track's column of chips, and a scene model's wrong-sized input is refused
before it is read. MODIS granules are read whole (a 1-km granule's 14 bands are about 150 MB as float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domains.remote_sensing.scenes import HDF_SUFFIXES
from domainfm.shared.config import Fraction, PositiveInt
from domainfm.shared.deploy.card import Deployable, predict_array
from domainfm.shared.predict import InputFile, Outputs, PredictError
from domainfm.shared.predict.explanations import explain_overlay

SUFFIXES = (*HDF_SUFFIXES, ".tif", ".tiff", ".npy")
KINDS = ("remote_sensing.cloud_mask", "remote_sensing.curtain", "remote_sensing.scenes")


def _read(
    deployable: Deployable, item: InputFile, region: tuple[tuple[int, int], tuple[int, int]] | None = None
) -> np.ndarray:
    """The input's bands ``[C, H, W]``, or only rows ``[r0, r1)`` and columns ``[c0, c1)`` of them."""
    from domainfm.domains.remote_sensing.rasters import BAND_SUFFIX, RasterError
    from domainfm.domains.remote_sensing.strips import read_region
    from domainfm.shared.deploy import read_input
    from domainfm.shared.deploy.inputs import InputError

    try:
        if region is not None:
            return read_region(item.path, deployable.card, *region)
        return read_input(item.path, deployable.card)[0].numpy()
    except (InputError, RasterError) as error:
        match = BAND_SUFFIX.match(item.path.stem)
        if match is None or deployable.card.in_channels == 1 or item.path.suffix.lower() not in (".tif", ".tiff"):
            raise
        raise PredictError(
            f"{error}. {item.path.name} looks like one band of a band set split over files "
            f"({match['stem']}_B..{item.path.suffix}); predict reads one file per input: stack the bands "
            f"{', '.join(deployable.card.channel_names)} into one GeoTIFF with those band descriptions"
        ) from error


def _tags(deployable: Deployable, item: InputFile, **extra: Any) -> dict[str, str]:
    return {"SOURCE": item.key, "MODEL": deployable.card.kind, "CHECKPOINT": deployable.source.name,
            "SOFTWARE": "domainfm remote-sensing predict", **{k.upper(): str(v) for k, v in extra.items()}}  # fmt: skip


def class_map(probability: np.ndarray, threshold: float) -> np.ndarray:
    """uint8 classes ``[H, W]`` of sigmoid outputs ``[K, H, W]``.

    One output: 1 where ``p >= threshold``, else 0; several: ``1 + argmax`` where the largest is at least
    ``threshold``, else 0.
    """
    if probability.shape[0] == 1:
        return (probability[0] >= threshold).astype(np.uint8)
    best = probability.argmax(axis=0)
    return np.where(probability.max(axis=0) >= threshold, best + 1, 0).astype(np.uint8)


def _predict_mask(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    threshold: float,
    probabilities: bool,
    device: torch.device,
    explain: bool = False,
) -> dict[str, Any]:
    from domainfm.domains.remote_sensing.geofiles import georeference, write_cog
    from domainfm.domains.remote_sensing.strips import input_shape, needs_strips
    from domainfm.shared.explain.overlay import display_rgb
    from domainfm.shared.predict.pictures import overlay_labels, palette, save_png

    card = deployable.card
    geo = georeference(item.path)
    names = ["clear", *(card.class_names if len(card.class_names) > 1 else ["cloud"])]
    colours = palette(len(names))
    colormap = {0: (0, 0, 0, 255), **{v: (*map(int, colours[v]), 255) for v in range(1, len(names))}}
    tags = _tags(deployable, item, threshold=threshold, classes=", ".join(f"{i}={n}" for i, n in enumerate(names)))
    shape = input_shape(item.path, card)
    if shape is not None and needs_strips(shape, len(card.class_names), int(card.spatial_shape[0])):
        return _predict_mask_in_strips(
            deployable, item, outputs, shape, threshold, probabilities, device, explain, geo, tags, colormap, names
        )
    image = _read(deployable, item)
    probability = predict_array(deployable, image[None], device)[0]
    labels = class_map(probability, threshold)
    write_cog(outputs.path("masks", ".tif"), labels[None], geo, "nearest", ["class"], tags, colormap)
    if probabilities:
        write_cog(outputs.path("probabilities", ".tif"), probability.astype(np.float32), geo, "average",
                  [f"{n} probability" for n in card.class_names], _tags(deployable, item))  # fmt: skip
    picture = (display_rgb(image, card) * 255 + 0.5).astype(np.uint8)
    save_png(overlay_labels(picture, labels.astype(np.int64), len(names)), outputs.path("overlays", ".png"))
    if explain:
        explain_overlay(
            deployable,
            image,
            f"{item.path.name} ({deployable.card.kind})",
            outputs.path("explanations", ".png"),
            device,
        )
    height, width = labels.shape
    return {"height": height, "width": width, "cloud_fraction": float((labels > 0).mean()),
            "georeference": geo.kind, "mask": f"masks/{item.stem}.tif", "strips": 1, "overlay_scale": 1}  # fmt: skip


def _predict_mask_in_strips(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    shape: tuple[int, int, int],
    threshold: float,
    probabilities: bool,
    device: torch.device,
    explain: bool,
    geo: Any,
    tags: dict[str, str],
    colormap: dict[int, tuple[int, int, int, int]],
    names: list[str],
) -> dict[str, Any]:
    """The cloud mask of an input too large to hold, strip by strip (:mod:`.strips`), as the same files."""
    import shutil

    from domainfm.domains.remote_sensing.geofiles import cog_from_tiled, open_tiled
    from domainfm.domains.remote_sensing.rasters import RasterError
    from domainfm.domains.remote_sensing.strips import predict_mask_strips
    from domainfm.shared.deploy.inputs import InputError
    from domainfm.shared.explain.overlay import display_rgb
    from domainfm.shared.predict.pictures import overlay_labels, save_png

    card = deployable.card
    _, height, width = shape
    scratch = outputs.staging / ".strips"
    scratch.mkdir(parents=True, exist_ok=True)
    writers = {"mask": open_tiled(scratch / "mask.tif", height, width, 1, "uint8", geo)}
    if probabilities:
        writers["probabilities"] = open_tiled(
            scratch / "probabilities.tif", height, width, len(card.class_names), "float32", geo
        )
    try:
        result = predict_mask_strips(deployable, item.path, shape, threshold, class_map, writers, device)
    except (InputError, RasterError) as error:
        raise PredictError(f"{item.path}: {error}") from error
    finally:
        for writer in writers.values():
            writer.close()
    cog_from_tiled(scratch / "mask.tif", outputs.path("masks", ".tif"), geo, "nearest", ["class"], tags, colormap)
    if probabilities:
        cog_from_tiled(scratch / "probabilities.tif", outputs.path("probabilities", ".tif"), geo, "average",
                       [f"{n} probability" for n in card.class_names], _tags(deployable, item))  # fmt: skip
    shutil.rmtree(scratch)
    picture = (display_rgb(result["picture"], card) * 255 + 0.5).astype(np.uint8)
    save_png(overlay_labels(picture, result["labels"].astype(np.int64), len(names)), outputs.path("overlays", ".png"))
    row = {"height": height, "width": width, "cloud_fraction": result["cloudy"] / (height * width),
           "georeference": geo.kind, "mask": f"masks/{item.stem}.tif", "strips": result["strips"],
           "overlay_scale": result["overlay_scale"]}  # fmt: skip
    if explain:  # integrated gradients of a whole scene this size would not fit either
        row["explanation"] = f"not written: a {height} x {width} px input is predicted in strips; explain a crop"
    return row


def track_chips(height: int, width: int, chip: tuple[int, int]) -> tuple[list[int], int]:
    """Top rows of the chips along the input's central column, and their left column (module docstring)."""
    rows, cols = chip
    return list(range(0, height - rows + 1, rows)), (width - cols) // 2


def _predict_curtain(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    threshold: float,
    batch: int,
    device: torch.device,
    explain: bool = False,
) -> dict[str, Any]:
    from domainfm.domains.remote_sensing.curtain import CURTAIN_TOP_KM, height_bins, track_rows
    from domainfm.domains.remote_sensing.geofiles import georeference, plot_curtain, write_curtain
    from domainfm.domains.remote_sensing.strips import input_shape

    card = deployable.card
    chip = (int(card.spatial_shape[0]), int(card.spatial_shape[1]))
    shape = input_shape(item.path, card)
    image = _read(deployable, item) if shape is None else None
    height, width = image.shape[1:] if shape is None else shape[1:]
    if height < chip[0] or width < chip[1]:
        raise PredictError(
            f"{item.path} is {height} x {width} px; the curtain model takes {chip[0]} x {chip[1]} chips: give "
            "an input at least that large"
        )
    tops, left = track_chips(height, width, chip)
    # only the track's column of chips is read (a granule is read whole)
    column = _read(deployable, item, ((0, height), (left, left + chip[1]))) if image is None else image[..., left:]
    curtains = []
    for start in range(0, len(tops), batch):
        chips = np.stack([column[:, y : y + chip[0], : chip[1]] for y in tops[start : start + batch]])
        curtains.append(predict_array(deployable, chips, device)[:, 0])
    per_chip = np.concatenate(curtains)  # [chips, samples, bins]
    n_chips, samples, bins = per_chip.shape
    probability = per_chip.reshape(n_chips * samples, bins)
    rows = np.concatenate([y + track_rows(chip[0], samples) for y in tops])
    cols = np.full(rows.shape, left + chip[1] // 2)
    geo = georeference(item.path)
    lonlat = geo.lonlat(rows, cols)
    attributes = {
        "title": f"cloud curtain of {item.key}",
        "source": f"{card.kind} model {deployable.source.name} (domainfm)",
        "history": "domainfm remote-sensing predict",
        "references": "SatVision-TOA 3D cloud retrieval, arXiv 2411.17000",
        "input": item.key,
        "track": "the input's central pixel column; chips of the model's size centred on it, from the top",
        "threshold": f"{threshold:g}",
    }
    write_curtain(outputs.path("curtains", ".nc"), probability, threshold, rows, cols,
                  np.repeat(np.arange(n_chips), samples), lonlat, attributes)  # fmt: skip
    plot_curtain(outputs.path("curtains", ".png"), probability, threshold, samples, lonlat, item.key)
    if explain:  # one overlay per chip of the track (a single-chip input: named as the input, as explain names it)
        for k, y in enumerate(tops):
            single = len(tops) == 1
            name = item.path.name if single else f"{item.path.name} chip {k}"
            explain_overlay(deployable, column[:, y : y + chip[0], : chip[1]],
                            f"{name} ({deployable.card.kind})",
                            outputs.path("explanations", ".png" if single else f"_chip{k}.png"), device)  # fmt: skip
    cloudy = probability >= threshold
    _, edges = height_bins(bins)
    top = float(edges[1:][cloudy.any(axis=0)].max()) if cloudy.any() else 0.0
    return {"height": height, "width": width, "chips": n_chips, "samples": n_chips * samples,
            "cloudy_bins": float(cloudy.mean()), "highest_cloud_km": min(top, CURTAIN_TOP_KM),
            "georeference": geo.kind, "curtain": f"curtains/{item.stem}.nc"}  # fmt: skip


def _predict_scenes(
    deployable: Deployable, item: InputFile, outputs: Outputs, threshold: float, device, explain: bool = False
) -> dict[str, Any]:
    from domainfm.domains.remote_sensing.strips import input_shape

    card = deployable.card
    shape = input_shape(item.path, card)  # a wrong size is refused before a large file is read
    image = _read(deployable, item) if shape is None or list(shape[1:]) == list(card.spatial_shape) else None
    size = image.shape[1:] if image is not None else shape[1:]
    if image is None or list(size) != list(card.spatial_shape):
        raise PredictError(
            f"{item.path} is {size[0]} x {size[1]} px; the scene model takes exactly "
            f"{card.spatial_shape[0]} x {card.spatial_shape[1]} chips: cut the input into chips of that size"
        )
    probability = predict_array(deployable, image[None], device)[0]
    row: dict[str, Any] = {name: float(p) for name, p in zip(card.class_names, probability, strict=True)}
    row["labels"] = ";".join(n for n, p in zip(card.class_names, probability, strict=True) if p >= threshold)
    if explain:
        explain_overlay(
            deployable,
            image,
            f"{item.path.name} ({deployable.card.kind})",
            outputs.path("explanations", ".png"),
            device,
        )
    return row


def predict(
    checkpoint: Path,
    input: list[Path],
    out: Path,
    threshold: Fraction = 0.5,
    probabilities: bool = False,
    explain: bool = False,
    batch: PositiveInt = 8,
    device: str = "auto",
    overwrite: bool = False,
    json: bool = False,
) -> int:
    """Predict cloud masks (COG), cloud curtains (NetCDF) or scene labels (CSV) on granules, GeoTIFFs or chips.

    Cloud masks: OUT/masks/NAME.tif (Cloud-Optimised GeoTIFF with the input's CRS and transform, or a MODIS
    swath's lat/lon as GCPs), OUT/overlays/NAME.png, optionally OUT/probabilities/NAME.tif. Curtains:
    OUT/curtains/NAME.nc (CF-NetCDF along-track x height, with the track's lat/lon) and NAME.png. Scene
    labels: a row per input in OUT/predictions.csv. Resumable (docs/predict.md, docs/predict/remote_sensing.md).

    Args:
        checkpoint: A model written by ``domainfm remote-sensing train`` (task segment, curtain or multilabel).
        input: MODIS L1B granules (.hdf), GeoTIFFs holding the model's bands (band descriptions B01, ...),
            .npy chips [C, H, W] in the store's units, or folders of them (searched recursively).
        out: The folder to write (new, empty, or an earlier ``predict`` output to resume).
        threshold: Cloud (mask, curtain bin) or label where the probability is at least this.
        probabilities: Cloud masks: also write float32 probability COGs.
        explain: Also write the ``domainfm explain`` overlay (integrated gradients) of each input, or of each
            chip of a curtain's track (slow on whole granules).
        batch: Curtains: chips per forward pass.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overwrite: Predict every input again (also needed to reuse OUT with another model or options).
        json: Print the summary as JSON instead of a table.
    """
    import json as json_module

    from domainfm.shared.engine import resolve_device
    from domainfm.shared.predict import load_for_domain, run_predictions

    torch_device = resolve_device(device)
    deployable = load_for_domain(checkpoint, "remote_sensing", KINDS)
    deployable.network.to(torch_device)
    kind = deployable.card.kind

    def predict_one(deployable: Deployable, item: InputFile, outputs: Outputs) -> dict[str, Any]:
        if kind == "remote_sensing.cloud_mask":
            return _predict_mask(deployable, item, outputs, threshold, probabilities, torch_device, explain)
        if kind == "remote_sensing.curtain":
            return _predict_curtain(deployable, item, outputs, threshold, batch, torch_device, explain)
        return _predict_scenes(deployable, item, outputs, threshold, torch_device, explain)

    options: dict[str, Any] = {"threshold": threshold, "explain": explain}
    if kind == "remote_sensing.cloud_mask":
        options["probabilities"] = probabilities
    run = run_predictions(
        deployable, input, out, predict_one, suffixes=SUFFIXES, what="MODIS granules, GeoTIFFs or .npy chips",
        options=options, overwrite=overwrite, progress=not json, title=f"remote-sensing predict ({kind})",
    )  # fmt: skip
    if json:
        print(json_module.dumps(run.to_dict(), indent=2))
    return 2 if run.failed else 0
