"""``domainfm remote-sensing ...``: ingest, pretrain, eval and train.

SatVision-TOA (NASA GSFC, arXiv 2411.17000): 14-band MODIS L1B top-of-atmosphere chips, SimMIM on SwinV2,
and 3D cloud retrieval. Every training command saves its resolved config beside its outputs.

The group's study verbs (phantom, study) are in :mod:`domainfm.studies.remote_sensing.commands`.
"""

from __future__ import annotations

import json as json_module
from pathlib import Path
from typing import Any, Literal

from domainfm.shared.config import (
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
)


def ingest(
    files: list[Path],
    /,
    out: Path,
    chip: PositiveInt = 128,
    bands: list[str] | None = None,
    min_valid: Probability = 0.9,
    curtains: bool = False,
    labels: Path | None = None,
    splits: Path | None = None,
    workers: PositiveInt = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
) -> int:
    """Chip MODIS L1B granules (.hdf) or GDAL rasters (GeoTIFF/COG, band sets split over files) into a tile store.

    Chips of one scene (granule, band set, or Sentinel-2 datatake) share a split; an empty split is warned about.

    Args:
        files: Granules, raster files (``<stem>_B02.tif``-style single-band files are grouped by stem), or
            folders of them.
        out: Store folder.
        chip: Chip side in pixels, a multiple of 32 that fits the sources (SatVision-TOA: 128; 120-pixel
            BigEarthNet patches: 32, 64 or 96).
        bands: Band subset by name (MODIS: B01, B02, ..., B33; rasters: file band names).
        min_valid: Drop chips with a smaller fraction of valid (non-fill, non-nodata) pixels.
        curtains: MODIS: add each chip's 91x40 cloud curtain and cloud mask from FILE.truth.npz.
        labels: Rasters: CSV of ``name`` (source stem) and 0/1 label columns (multi-label scenes), or
            BigEarthNet ``*_labels_metadata.json`` (one file, or a folder searched for them).
        splits: CSV of scene (or patch or file name) -> split (train, val, test); scenes hash when unset.
        workers: Local parallel tasks.
        scheduler: A dask.distributed scheduler address; local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other sources.
    """
    from domainfm.domains.remote_sensing.data import ingest_chips
    from domainfm.shared.tiles.split_counts import warn_empty_splits

    summary = ingest_chips(
        [Path(f) for f in files], Path(out), chip, bands, min_valid, curtains, Path(labels) if labels else None,
        workers, scheduler, processes, overwrite, splits=Path(splits) if splits else None,
    )  # fmt: skip
    print(summary.report())
    warn_empty_splits(Path(out))
    return 0 if summary.ok else 1


def pretrain(
    store: Path,
    out: Path,
    backbone: str = "test_swinv2",
    mask_patch: PositiveInt = 8,
    mask_ratio: OpenFraction = 0.6,
    epochs: PositiveInt = 40,
    batch_size: PositiveInt = 16,
    lr: PositiveFloat = 1e-3,
    weight_decay: NonNegativeFloat = 0.05,
    warmup_epochs: NonNegativeInt = 2,
    seed: Seed = 0,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: PositiveInt = 1,
    precision: str | None = None,
    fsdp: dict[str, Any] | None = None,
    init: Path | None = None,
) -> int:
    """SimMIM pretraining of a SwinV2 encoder on a chip store; writes OUT/simmim.safetensors.

    A killed run resumes from OUT/resume/last.ckpt when rerun with the same command. With several processes
    the loss is averaged over the masked valid pixels of every process (docs/distributed.md); the giant
    SwinV2 trains with FSDP (configs/remote_sensing/satvision_giant_fsdp.yaml).

    Args:
        store: A store from ``remote-sensing ingest`` (train split).
        out: Output folder.
        backbone: A SwinV2 backbone of the shared registry (``satvision_toa_giant`` for real use).
        mask_patch: Masked cell side in pixels (SatVision: 8).
        mask_ratio: Fraction of cells masked (SatVision: 0.6).
        epochs: Training epochs.
        batch_size: Chips per step and process.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not on 1-D parameters or the mask token).
        warmup_epochs: Linear warm-up epochs before the cosine decay.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (the kind of device when ``devices`` > 1).
        devices: Processes (devices) per machine: a count, or ``auto`` for every GPU.
        strategy: ``auto`` (one device, else DDP), ``ddp`` or ``fsdp`` (GPUs; each SwinV2 block sharded).
        num_nodes: Machines (launch with torchrun or SLURM; docs/distributed.md).
        precision: Lightning precision, e.g. ``bf16-mixed`` (SatVision's); 32-bit when unset.
        fsdp: With ``--strategy fsdp``: activation_checkpointing (default true), sharding_strategy
            (FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD), cpu_offload, state_dict_type (full or sharded).
        init: Continue a converted SimMIM release (``domainfm models convert satvision_toa_giant``): encoder,
            mask token, decoder and band scaling come from it; ``backbone`` is ignored. The checkpoint keeps
            the scaling record for ``remote-sensing train --checkpoint``.
    """
    from domainfm.domains.remote_sensing.pretrain import pretrain as run
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.engine.distributed import is_launch_zero
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out), lead=is_launch_zero()):  # one run per folder; never a folder of other files
        if is_launch_zero():
            save_resolved_config(Path(out))
        result = run(
            Path(store), Path(out), backbone, mask_patch, mask_ratio, epochs, batch_size, lr, weight_decay,
            warmup_epochs, seed, device, devices=devices, strategy=strategy, num_nodes=num_nodes,
            precision=precision, fsdp=fsdp, init=Path(init) if init else None,
        )  # fmt: skip
    if is_launch_zero():
        print(f"wrote {result['checkpoint']}: loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}")
    return 0


def evaluate(checkpoint: Path, store: Path, split: str = "test", seed: Seed = 0, json: bool = False) -> int:
    """Masked-reconstruction L1 of a SimMIM checkpoint on a split, against the per-band mean predictor.

    Args:
        checkpoint: A checkpoint from ``remote-sensing pretrain``.
        store: A chip store with the checkpoint's bands.
        split: ``train``, ``val`` or ``test``.
        seed: Seed of the masks.
        json: Print JSON.
    """
    from domainfm.domains.remote_sensing.pretrain import heldout_loss

    result = heldout_loss(Path(checkpoint), Path(store), split, seed)
    if json:
        print(json_module.dumps(result, indent=2))
    else:
        print(f"masked L1 {result['masked_l1']:.4f}; mean predictor {result['mean_predictor_l1']:.4f}")
    return 0


def train(
    store: Path,
    task: Literal["curtain", "segment", "multilabel"] = "curtain",
    checkpoint: Path | None = None,
    backbone: str = "test_swinv2",
    peft: str = "full",
    peft_options: dict[str, Any] | None = None,
    labelled: PositiveInt | None = None,
    epochs: PositiveInt = 40,
    batch_size: PositiveInt = 16,
    lr: PositiveFloat = 3e-4,
    seed: Seed = 0,
    device: str = "auto",
    out: Path | None = None,
    json: bool = False,
) -> int:
    """Train a downstream task (3D cloud curtain, per-pixel cloud mask, multi-label scenes) with any PEFT method.

    Args:
        store: A chip store with the task's target (``--curtains`` MODIS store, or rasters with ``--labels``).
        task: ``curtain`` (91x40), ``segment`` (per-pixel) or ``multilabel``.
        checkpoint: A SimMIM checkpoint (bands matched by name); from scratch when unset.
        backbone: Backbone when training from scratch.
        peft: A shared PEFT method: linear (frozen encoder), full, bitfit, lora, dvpt, ...
        peft_options: The method's options.
        labelled: Labelled train chips used (all when unset).
        epochs: Training epochs.
        batch_size: Chips per step.
        lr: AdamW learning rate.
        seed: Random seed (also picks the labelled chips).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        out: Folder for the trained model (``TASK.safetensors``, for `domainfm export bundle` and `explain`).
        json: Print JSON.
    """
    import contextlib

    from domainfm.domains.remote_sensing.downstream import train_task
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)) if out else contextlib.nullcontext():  # one run per folder; never other files
        result = train_task(
            Path(store), task, Path(checkpoint) if checkpoint else None, backbone, peft, peft_options, labelled,
            epochs, batch_size, lr, seed, device, progress=not json, out=Path(out) if out else None,
        )  # fmt: skip
    print(json_module.dumps(result, indent=2) if json else ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0
