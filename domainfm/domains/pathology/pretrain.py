"""PLUTO-style self-supervised pretraining on a pathology tile store (``domainfm pathology pretrain``).

Juyal et al., "PLUTO: Pathology-Universal Transformer", 2024 (arXiv 2405.07905): DINO self-distillation
with an EMA teacher and multi-crop, masked-token prediction and MAE pixel reconstruction, plus a Fourier
loss (objective in :mod:`.pluto`). Batches mix every mpp level of the store (the tiler writes all scales
into one store and the stream shuffles across them), as PLUTO samples 0.25-2 mpp tiles together.

Recipe: AdamW (0.9, 0.999) with weight decay on matrices only, linear warm-up then cosine decay, teacher
momentum on DINO's cosine schedule from ``teacher_momentum`` to 1. The teacher backbone is what is saved
(DINO's evaluation convention) as ``encoder.safetensors``: a shared-registry backbone checkpoint
(``load_backbone`` rebuilds it) whose metadata also holds the input normalisation and the tile geometry:
``transform``, the encoder's :class:`~domainfm.shared.model.InputTransform` record (RGB 0..255 tiles of
exactly the store's tile size, ``(x - mean) / std`` with the store's statistics in the same 0..255 units),
which downstream verbs apply, and ``normalization`` (the same mean/std, for older readers).
:func:`load_encoder` also opens a converted foundation checkpoint (``domainfm models convert``, e.g.
``uni``): its backbone and its own record.
A killed run resumes from ``OUT/resume/last.ckpt`` when rerun with the same command.

Several processes (Lightning DDP) each read their part of the store; the objective's batch statistics are
all-reduced (:mod:`.pluto`) and each tile's views come from its own generator, seeded by (seed, epoch,
tile id), so a step over N processes equals one process on the global batch (tested).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from domainfm.domains.pathology.data_splits import pretraining_tiles
from domainfm.shared.backbones import Backbone, create_backbone, load_backbone
from domainfm.shared.backbones.checkpoint import METADATA_KEY
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.distributed import tile_generators
from domainfm.shared.engine.training import (
    data_parallel_only,
    fit,
    resumable_trainer,
    step_task,
    trainer_device,
)
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import InputTransform, standardise
from domainfm.shared.model.encoders import fit_store, foundation_encoder, is_foundation_checkpoint, record_or
from domainfm.shared.tasks.checkpoint import read_checkpoint_metadata, save_checkpoint
from domainfm.shared.tasks.schedule import adamw_warmup_cosine
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

ENCODER_KEY = "domainfm_pathology_encoder"
RGB = ["red", "green", "blue"]


def save_encoder(backbone: Backbone, meta: dict[str, Any], path: Path) -> Path:
    """A backbone checkpoint (readable by ``load_backbone``) with the encoder's input metadata, atomically."""
    metadata = {METADATA_KEY: backbone.build_args, ENCODER_KEY: meta}
    return save_checkpoint(path, backbone.model.state_dict(), metadata)


def load_encoder(path: Path) -> tuple[Backbone, dict[str, Any]]:
    """The saved encoder and its metadata (transform record, normalisation, tile size, training record).

    A converted foundation checkpoint gives ``load_backbone(path)`` and ``{"transform": its record,
    "foundation": its model name, title and pooling}``.
    """
    if is_foundation_checkpoint(path):
        backbone, record, foundation = foundation_encoder(path)
        keep = ("model", "title", "pooling", "source")
        return backbone, {"transform": record.to_dict(), "foundation": {k: foundation.get(k) for k in keep}}
    meta = read_checkpoint_metadata(path, ENCODER_KEY, "domainfm pathology pretrain or domainfm models convert")
    return load_backbone(path), meta


def tile_transform(normalization: dict[str, list[float]], tile_px: int, mpps: list[float] | None) -> InputTransform:
    """A PLUTO encoder's record: RGB 0..255 tiles of exactly ``tile_px`` at ``mpps``, standardised (scale 1)."""
    return InputTransform(
        channels=RGB,
        size=[int(tile_px), int(tile_px)],
        geometry="exact",
        mean=normalization["mean"],
        std=normalization["std"],
        quantise="uint8",
        input_range=[0.0, 255.0],
        details={"mpps": mpps, "units": "RGB 0..255; mean/std in the same units"},
    )


def encoder_transform(meta: dict[str, Any]) -> InputTransform:
    """The record of an encoder with metadata ``meta`` (older PLUTO checkpoints: from their normalisation)."""
    return record_or(meta, lambda: tile_transform(meta["normalization"], meta["tile_px"], meta.get("mpps")))


def store_transform(meta: dict[str, Any], store: TileStore, source: Path | str) -> InputTransform:
    """The encoder's record as it runs on ``store``'s tiles (channels and size checked; ``source`` is named)."""
    channels, tile_px = store.spec.tile_shape[0], store.spec.tile_shape[-1]
    return fit_store(encoder_transform(meta), channels, tile_px, source)


def store_normalization(store: TileStore) -> dict[str, list[float]]:
    """Per-channel mean and std of a store's tiles (from the statistics computed while tiling)."""
    stats = store.stats
    if not stats:
        raise DomainfmError(f"{store.path} has no statistics: re-tile it with `domainfm pathology tile`")
    return {"mean": [float(m) for m in stats["mean"]], "std": [max(float(s), 1e-6) for s in stats["std"]]}


def normalise(tiles: torch.Tensor, normalization: dict[str, list[float]]) -> torch.Tensor:
    """Float tiles standardised with ``normalization`` (the model contract's standardisation)."""
    return standardise(tiles, normalization["mean"], normalization["std"])


def pretrain(
    store_path: Path,
    out: Path,
    backbone: str = "test_vit",
    objective: dict[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.04,
    warmup_epochs: int = 1,
    teacher_momentum: float = 0.996,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    *,
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """PLUTO-style pretraining on every tile outside the test split; writes ``encoder.safetensors``, ``history.json``.

    Args:
        store_path: A store from ``pathology tile``.
        out: Output folder.
        backbone: A ViT/FlexiViT of the shared registry (``flexivit_small`` is PLUTO's).
        objective: Fields of :class:`~domainfm.domains.pathology.pluto.PlutoConfig` (crop sizes, loss weights).
        epochs: Passes over the tiles outside the test split (train, val and unassigned).
        batch_size: Tiles per step and process.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay on weight matrices.
        warmup_epochs: Linear warm-up epochs before the cosine decay.
        teacher_momentum: Start of the teacher's EMA momentum (cosine schedule to 1).
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        progress: Show Lightning's progress bar.
        devices: Processes (devices) per node; see :func:`~domainfm.shared.engine.training.make_trainer`.
        strategy: ``auto`` or ``ddp``.
        num_nodes: Machines.
        callbacks: Extra Lightning callbacks.
    """
    from dataclasses import asdict, fields

    from domainfm.domains.pathology.pluto import Pluto, PlutoConfig
    from domainfm.domains.pathology.pluto import teacher_momentum as momentum_schedule

    store, out = TileStore(store_path), Path(out)
    if store.spec.domain != "pathology":
        raise DomainfmError(f"{store.path} is a {store.spec.domain} store; tile slides with `domainfm pathology tile`")
    known = {f.name for f in fields(PlutoConfig)}
    unknown = sorted(set(objective or {}) - known)
    if unknown:
        raise DomainfmError(f"unknown objective option(s) {unknown}; choose from {sorted(known)}")
    data_parallel_only(strategy, "pathology pretrain")
    trainer, resume = resumable_trainer(
        out, epochs, resolve_device(device), progress, callbacks, devices=devices, strategy=strategy,
        num_nodes=num_nodes,
    )  # fmt: skip
    torch_device = trainer_device(trainer)
    tile_px = store.spec.tile_shape[-1]
    config = PlutoConfig(**{"global_size": tile_px, **(objective or {})})
    torch.manual_seed(seed)
    model = Pluto(create_backbone(backbone, in_chans=3, img_size=tile_px), config).to(torch_device)
    normalization = store_normalization(store)
    ids, used = pretraining_tiles(store.path, store.index["split"])  # every tile outside test; none: the fix
    stream = TileStream(store, batch_size, indices=ids, seed=seed, device=torch_device, normalize=False, drop_last=True)
    steps_per_epoch = len(stream.tile_ids) // trainer.world_size // batch_size  # the stream's length per process
    if steps_per_epoch == 0:
        raise DomainfmError(
            f"{store.path}: {len(ids)} tiles outside the test split (in {', '.join(used)}), fewer than one batch "
            f"of {batch_size} in each of {trainer.world_size} processes; lower --batch_size or tile more slides"
        )
    total_steps = max(1, epochs * steps_per_epoch)

    def step(batch: dict) -> torch.Tensor:
        done = int(trainer.global_step)  # optimiser steps so far (restored on resume)
        if done > 0:  # the EMA follows the optimiser step just taken
            model.update_teacher(momentum_schedule(done, total_steps, teacher_momentum))
        generators = tile_generators(batch["tile_id"], seed, trainer.current_epoch)
        return model(normalise(batch["tiles"], normalization), generators)["loss"]

    task = step_task(step, model, adamw_warmup_cosine(lr, weight_decay, epochs, warmup_epochs))
    start = time.perf_counter()
    fit(trainer, task, stream, resume / "last.ckpt")
    model.update_teacher(momentum_schedule(int(trainer.global_step), total_steps, teacher_momentum))
    meta = {
        "objective": asdict(config),
        "transform": tile_transform(normalization, tile_px, store.spec.value_scaling.get("mpps")).to_dict(),
        "normalization": normalization,
        "tile_px": tile_px,
        "mpps": store.spec.value_scaling.get("mpps"),
        "epochs": epochs,
        "trained_on": str(store.path),
        "splits": used,
    }
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs, "splits": used}
    history["tiles"] = len(ids)
    checkpoint = out / "encoder.safetensors"
    if trainer.is_global_zero:
        save_encoder(model.encoder().cpu(), meta, checkpoint)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        shutil.rmtree(resume, ignore_errors=True)
    return {"checkpoint": checkpoint, **history}
