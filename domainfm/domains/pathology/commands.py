"""``domainfm pathology ...``: tile, pretrain, embed, probe, train and mil.

PLUTO (Juyal et al. 2024, arXiv 2405.07905): whole-slide tiling at several microns per pixel,
self-supervised pretraining, and tile- and slide-level heads. Every training command saves its resolved
config beside its outputs.

The group's study verbs (phantom, study) are in :mod:`domainfm.studies.pathology.commands`.
"""

from __future__ import annotations

import json as json_module
import sys
from pathlib import Path
from typing import Any

from domainfm.shared.config import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
)


def tile(
    slides: list[Path],
    /,
    out: Path,
    mpp: list[PositiveFloat] | None = None,
    tile_size: PositiveInt = 224,
    overlap: NonNegativeInt = 0,
    assume_mpp: PositiveFloat | None = None,
    min_tissue: Probability = 0.5,
    truth_labels: bool = False,
    labels: Path | None = None,
    label_overlap: Fraction = 0.5,
    label_downsample: PositiveFloat = 1.0,
    splits: Path | None = None,
    allow_upsample: bool = False,
    threads: PositiveInt = 2,
    workers: PositiveInt = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
) -> int:
    """Tile whole slides (any OpenSlide format) or plain images at one or more resolutions into a tile store.

    Rerunning the same command after a kill resumes; a corrupt slide is reported and the others are tiled
    (exit status 1 when any slide failed). A QC picture per slide goes to OUT/qc/. Tile labels come from
    ``--labels`` (GeoJSON/QuPath polygons, label masks, a CSV; docs/data/pathology.md), from class
    subfolders of a folder argument, or from a ``masks/`` folder beside the images.

    Args:
        slides: Slide files, plain images (PNG, JPEG, TIFF, BMP; need ``--assume-mpp``) or folders of them.
        out: Store folder.
        mpp: Target microns per pixel, one or more (default 0.5).
        tile_size: Tile side in pixels at the target resolution.
        overlap: Pixels (at the target resolution) shared by neighbouring tiles.
        assume_mpp: Level-0 mpp for slides that record none (never used when the slide has one).
        min_tissue: Keep tiles with at least this tissue fraction.
        truth_labels: Phantom slides: label tiles by their ground-truth class (FILE.truth.npz).
        labels: Annotations: a GeoJSON/QuPath, mask or CSV file (one slide, or a CSV for all), or a folder of
            files named by slide stem.
        label_overlap: A tile takes a polygon's class when the class covers at least this fraction of it.
        label_downsample: Level-0 pixels per pixel of the label masks.
        splits: CSV of slide,split rows (key column slide, source or group; split train/val/test in any
            case) that every slide must be listed in; a stable hash of each slide's name when unset.
        allow_upsample: Tile at an mpp finer than the scan's (refused otherwise; warned about when allowed).
        threads: Region-reading threads per slide.
        workers: Slides tiled in parallel.
        scheduler: A dask.distributed scheduler address; local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other slides.
    """
    from domainfm.domains.pathology.annotations import collect_labels
    from domainfm.domains.pathology.inputs import expand_inputs
    from domainfm.domains.pathology.tiling import TilingParams, tile_slides, tiling_warnings
    from domainfm.domains.pathology.tissue import TissueParams
    from domainfm.shared.errors import DomainfmError
    from domainfm.shared.tiles.splits import read_splits_csv

    split_table = read_splits_csv(Path(splits)) if splits else None
    inputs = expand_inputs([Path(s) for s in slides])
    source = Path(labels) if labels else inputs.masks
    classes = {} if labels else inputs.image_classes  # explicit annotations win over class folders
    tile_labels = None
    if source is not None or classes:
        if truth_labels:
            raise DomainfmError("give either --labels (or labelled folders) or --truth_labels, not both")
        tile_labels = collect_labels(inputs.files, source, label_overlap, label_downsample, classes)
    params = TilingParams(
        tuple(mpp or [0.5]), tile_size, overlap, assume_mpp, TissueParams(min_tissue=min_tissue), threads,
        truth_labels=truth_labels, splits=split_table, labels=tile_labels, allow_upsample=allow_upsample,
    )  # fmt: skip
    summary = tile_slides(inputs.files, Path(out), params, workers, scheduler, processes, overwrite)
    print(summary.report())
    if tile_labels is not None:
        print(f"classes: {', '.join(tile_labels.names)}")
    for warning in tiling_warnings(Path(out)):
        print(f"warning: {warning}", file=sys.stderr)
    return 0 if summary.ok else 1


def pretrain(
    store: Path,
    out: Path,
    backbone: str = "test_vit",
    objective: dict[str, Any] | None = None,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 5e-4,
    weight_decay: NonNegativeFloat = 0.04,
    warmup_epochs: NonNegativeInt = 1,
    teacher_momentum: OpenFraction = 0.996,
    seed: Seed = 0,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: PositiveInt = 1,
) -> int:
    """PLUTO-style pretraining (DINO + masked tokens + MAE + Fourier) on a tile store; writes OUT/encoder.safetensors.

    A killed run resumes from OUT/resume/last.ckpt when rerun with the same command. With several processes
    the teacher centres use the batch mean of every process (docs/distributed.md).

    Args:
        store: A store from ``pathology tile`` (every tile outside the test split; every mpp level mixed).
        out: Output folder.
        backbone: A ViT/FlexiViT of the shared registry (``flexivit_small`` is PLUTO's).
        objective: PLUTO objective options (crop sizes, loss weights; see docs/pathology.md).
        epochs: Training epochs.
        batch_size: Tiles per step and process.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay on weight matrices.
        warmup_epochs: Linear warm-up epochs before the cosine decay.
        teacher_momentum: Initial EMA momentum of the teacher (cosine schedule to 1).
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (the kind of device when ``devices`` > 1).
        devices: Processes (devices) per machine: a count, or ``auto`` for every GPU.
        strategy: ``auto`` (one device, else DDP) or ``ddp``.
        num_nodes: Machines (launch with torchrun or SLURM; docs/distributed.md).
    """
    from domainfm.domains.pathology.pretrain import pretrain as run
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.engine.distributed import is_launch_zero
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out), lead=is_launch_zero()):  # one run per folder; never a folder of other files
        if is_launch_zero():
            save_resolved_config(Path(out))
        result = run(
            Path(store), Path(out), backbone, objective, epochs, batch_size, lr, weight_decay, warmup_epochs,
            teacher_momentum, seed, device, devices=devices, strategy=strategy, num_nodes=num_nodes,
        )  # fmt: skip
    if is_launch_zero():
        print(
            f"wrote {result['checkpoint']}: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f} "
            f"on {result['tiles']} tiles of split(s) {', '.join(result['splits'])} (test held out)"
        )
    return 0


def embed(
    store: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    batch_size: PositiveInt = 64,
    seed: Seed = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> int:
    """Per-tile embeddings of a tile store into zarr, keyed by slide and level-0 coordinates.

    Args:
        store: A store from ``pathology tile``.
        out: Embedding store folder (zarr).
        checkpoint: An encoder from ``pathology pretrain``, or a converted foundation checkpoint
            (``domainfm models convert``, e.g. uni: tiles run through its own transform record); a
            random-initialised ``backbone`` when unset.
        backbone: Backbone for the random-initialised baseline.
        batch_size: Tiles per forward pass.
        seed: Seed of the random initialisation.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overwrite: Replace an existing embedding store.
    """
    from domainfm.domains.pathology.embed import embed_store

    path = embed_store(
        Path(store), Path(out), Path(checkpoint) if checkpoint else None, backbone, batch_size, seed, device, overwrite
    )
    print(f"wrote {path}")
    return 0


def probe(
    embeddings: Path, mpp: PositiveFloat | None = None, labelled: Fraction = 1.0, seed: Seed = 0, json: bool = False
) -> int:
    """Linear probe of tile labels on an embedding store (train split -> test split).

    Args:
        embeddings: An embedding store from ``pathology embed`` of a labelled tile store.
        mpp: Only tiles at this resolution (all when unset).
        labelled: Fraction of the labelled train tiles used.
        seed: Random seed.
        json: Print JSON.
    """
    from domainfm.domains.pathology.embed import read_embeddings
    from domainfm.domains.pathology.heads import linear_probe

    result = linear_probe(read_embeddings(Path(embeddings)), mpp, labelled, seed)
    print(json_module.dumps(result, indent=2) if json else ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0


def train(
    store: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    peft: str = "linear",
    peft_options: dict[str, Any] | None = None,
    labelled: PositiveInt | None = None,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 1e-3,
    seed: Seed = 0,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Train a tile classifier with any PEFT method; writes OUT/tile_classifier.safetensors and test scores.

    Args:
        store: A labelled tile store (``pathology tile --truth_labels`` on phantom slides).
        out: Output folder.
        checkpoint: An encoder from ``pathology pretrain``, or a converted foundation checkpoint
            (``domainfm models convert``, e.g. uni); random-initialised ``backbone`` when unset.
        backbone: Backbone when training from scratch.
        peft: A shared PEFT method: linear (frozen encoder), full, bitfit, lora, dvpt, ...
        peft_options: The method's options.
        labelled: Labelled train tiles used (all when unset).
        epochs: Training epochs.
        batch_size: Tiles per step.
        lr: AdamW learning rate.
        seed: Random seed (also picks the labelled tiles).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    from domainfm.domains.pathology.heads import train_tile_classifier
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)):  # one run per folder; never a folder of other files
        save_resolved_config(Path(out))
        result = train_tile_classifier(
            Path(store), Path(out), Path(checkpoint) if checkpoint else None, backbone, peft, peft_options, labelled,
            epochs, batch_size, lr, seed, device, progress=not json,
        )  # fmt: skip
        (Path(out) / "scores.json").write_text(json_module.dumps(result, indent=2))
    print(json_module.dumps(result, indent=2) if json else ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0


def mil(
    embeddings: Path,
    out: Path,
    labels: str = "truth",
    mpp: PositiveFloat | None = None,
    epochs: PositiveInt = 50,
    lr: PositiveFloat = 2e-4,
    seed: Seed = 0,
    json: bool = False,
) -> int:
    """Slide-level gated-attention MIL (ABMIL) on an embedding store, with attention heat-maps of test slides.

    Args:
        embeddings: An embedding store from ``pathology embed``.
        out: Output folder (mil.json, heat-map PNGs, test_predictions.csv, and slide_classifier.safetensors:
            the encoder and the ABMIL head, for ``pathology predict``).
        labels: A CSV with columns slide,label; ``tiles:CLASS`` (from the tiles' annotation labels: CLASS
            present in a slide or not; slides without labelled tiles are left out); or ``truth`` (phantom
            slides: tumour present or not).
        mpp: Bag tiles at this resolution (the finest in the store when unset).
        epochs: Training epochs (one slide per step).
        lr: AdamW learning rate.
        seed: Random seed.
        json: Print JSON.
    """
    from domainfm.domains.pathology.embed import read_embeddings
    from domainfm.domains.pathology.slide_heads import run_mil
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)):  # one run per folder; never a folder of other files
        save_resolved_config(Path(out))
        result = run_mil(read_embeddings(Path(embeddings)), labels, Path(out), mpp, epochs, lr, seed)
    print(json_module.dumps(result, indent=2) if json else ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0
