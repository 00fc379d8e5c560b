"""``domainfm pathology instances-tile|instances-train|instances-eval``: nuclei and glands (``predict`` applies them).

PLUTO's cell-scale head (issue 21): instance-labelled pictures into a tile store (:mod:`.instance_data`),
the HoVer-Net-style head on any encoder (:mod:`.instances`, :mod:`.instance_train`), PQ/AJI scores, and
instance maps with QuPath-importable GeoJSON polygons (:mod:`.instance_geojson`).
"""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Any

from domainfm.shared.config import Fraction, NonNegativeInt, PositiveFloat, PositiveInt, Probability, Seed


def _print(result: Any, json: bool) -> None:
    if json:
        print(json_module.dumps(result, indent=2, default=float))
        return
    flat = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    print(", ".join(f"{k} {round(v, 4) if isinstance(v, float) else v}" for k, v in flat.items()))
    for name, scores in (result.get("per_class") or {}).items():
        print(f"  {name}: " + ", ".join(f"{k} {round(float(scores[k]), 4)}" for k in ("pq", "aji", "true_count")))


def instances_tile(
    images: Path,
    out: Path,
    labels: Path | None = None,
    polygons: Path | None = None,
    classes: Path | None = None,
    tile_size: PositiveInt = 256,
    overlap: NonNegativeInt = 0,
    mpp: PositiveFloat | None = None,
    assume_mpp: PositiveFloat | None = None,
    min_tissue: Probability = 0.5,
    max_instances: PositiveInt = 1024,
    splits: Path | None = None,
    workers: PositiveInt = 2,
    overwrite: bool = False,
) -> int:
    """Tile instance-annotated pictures or slides (nuclei, glands) into a store with instance-id maps per tile.

    Two kinds of annotation: instance label images (``--labels``, as MoNuSeg/PanNuke/Lizard/GlaS ship them)
    or QuPath/GeoJSON polygons on slides (``--polygons``). Objects cut by a tile edge are clipped, not
    dropped; ids are renumbered 1..n per tile and the source id of each is kept (``instance_source_id``).
    Rerunning after a kill resumes.

    Args:
        images: With --labels, a folder of RGB pictures; with --polygons, a slide (any OpenSlide format, or a
            plain picture with --assume-mpp) or a folder of them.
        out: Store folder.
        labels: Folder of instance label images paired by stem (one integer id per object, 0 background).
        polygons: A GeoJSON/QuPath file (one slide) or a folder of SLIDE_STEM.geojson files.
        classes: With --labels: CSV ``image,id,class`` naming each object's class (all ``nucleus`` when unset).
        tile_size: Tile side in pixels.
        overlap: Pixels shared by neighbouring tiles.
        mpp: With --labels, the pictures' microns per pixel (recorded); with --polygons, the tiles' (default 0.5).
        assume_mpp: With --polygons, the level-0 mpp of slides that record none.
        min_tissue: With --polygons, keep tiles with at least this tissue fraction.
        max_instances: Most objects one tile may hold.
        splits: CSV of image (or slide),split rows; a stable hash of each name when unset.
        workers: Pictures or slides read in parallel.
        overwrite: Replace an existing store of other inputs.
    """
    from domainfm.shared.errors import DomainfmError

    if not Path(images).exists():
        raise DomainfmError(f"{images} does not exist")
    if (labels is None) == (polygons is None):
        raise DomainfmError(
            f"{images}: give exactly one of --labels (a folder of instance label images) and --polygons (GeoJSON)"
        )
    if labels is not None:
        from domainfm.domains.pathology.instance_data import ingest_instances

        summary = ingest_instances(
            Path(images), Path(labels), Path(out), Path(classes) if classes else None, tile_size, overlap, mpp,
            max_instances, Path(splits) if splits else None, workers, overwrite,
        )  # fmt: skip
    else:
        from domainfm.domains.pathology.inputs import expand_inputs
        from domainfm.domains.pathology.instance_slides import ingest_slide_instances
        from domainfm.domains.pathology.tiling import TilingParams
        from domainfm.domains.pathology.tissue import TissueParams
        from domainfm.shared.tiles.splits import read_splits_csv

        tiling = TilingParams(
            (mpp or 0.5,), tile_size, overlap, assume_mpp, TissueParams(min_tissue=min_tissue),
            splits=read_splits_csv(Path(splits)) if splits else None,
        )  # fmt: skip
        slides = expand_inputs([Path(images)]).files
        summary = ingest_slide_instances(slides, Path(polygons), Path(out), tiling, max_instances, workers, overwrite)
    print(summary.report())
    return 0 if summary.ok else 1


def instances_train(
    store: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    peft: str = "linear",
    peft_options: dict[str, Any] | None = None,
    labelled: Fraction = 1.0,
    epochs: PositiveInt = 20,
    batch_size: PositiveInt = 8,
    lr: PositiveFloat = 1e-3,
    width: PositiveInt = 64,
    seed: Seed = 0,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Train the nuclei/gland instance head (HoVer-Net-style) on an encoder; writes OUT/instances.safetensors.

    Args:
        store: An instance store (``pathology instances-tile``).
        out: Output folder.
        checkpoint: An encoder from ``pathology pretrain`` or a converted foundation checkpoint; a
            random-initialised ``backbone`` when unset.
        backbone: Backbone when training from scratch.
        peft: A shared PEFT method for the encoder: linear (frozen), full, bitfit, lora, dvpt, ...
        peft_options: The method's options.
        labelled: Fraction of the train tiles used (seeded).
        epochs: Training epochs.
        batch_size: Tiles per step.
        lr: AdamW learning rate.
        width: Decoder channels.
        seed: Random seed (also picks the labelled tiles).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    from domainfm.domains.pathology.instance_train import train_instances
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)):
        save_resolved_config(Path(out))
        result = train_instances(
            Path(store), Path(out), Path(checkpoint) if checkpoint else None, backbone, peft, peft_options, labelled,
            epochs, batch_size, lr, width, seed, device, progress=not json,
        )  # fmt: skip
        (Path(out) / "train.json").write_text(json_module.dumps(result, indent=2))
    _print(result, json)
    return 0


def instances_eval(
    checkpoint: Path,
    store: Path,
    split: str = "test",
    min_size: PositiveInt = 6,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Score a segmenter on a split's tiles: PQ (= DQ x SQ), AJI, object Dice, count error; overall and per class.

    Args:
        checkpoint: ``OUT/instances.safetensors`` of ``pathology instances-train``.
        store: An instance store with the same classes.
        split: train, val or test.
        min_size: Smallest object kept (pixels).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    from domainfm.domains.pathology.instance_train import evaluate_instances

    _print(evaluate_instances(Path(checkpoint), Path(store), split, min_size, device), json)
    return 0
