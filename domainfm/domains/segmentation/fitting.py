"""End-to-end segmentation runs: fit a segmenter and evaluate a checkpoint (``train`` and ``evaluate``).

The GMS-vs-UNet phantom study built on them is :mod:`domainfm.studies.segmentation.workflow`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.segmentation.evaluate import evaluate, predict, qc_figure, split_ids
from domainfm.domains.segmentation.models import (
    TINY_UNET,
    GMSSegmenter,
    SegmentationCheckpointError,
    UNetSegmenter,
    load_segmenter,
    load_vae,
    read_metadata,
    save_segmenter,
)
from domainfm.domains.segmentation.train import train_segmenter, write_history
from domainfm.shared.engine.distributed import is_launch_zero, world_size
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.split_counts import require_splits
from domainfm.shared.tiles.store import TileStore


def build_model(kind: str, vae: Path | None, mapper: dict[str, Any] | None, unet: dict[str, Any] | None) -> nn.Module:
    """A fresh GMS (around the frozen VAE at ``vae``) or UNet segmenter."""
    if kind == "gms":
        if vae is None:
            raise DomainfmError(
                "GMS needs a frozen VAE: train one with `domainfm segmentation train-vae --config "
                "configs/segmentation/vae_tiny.yaml`, or pass --vae PATH to local Stable-Diffusion VAE weights"
            )
        autoencoder, config = load_vae(vae)
        return GMSSegmenter(autoencoder, config, mapper)
    if kind == "unet":
        return UNetSegmenter(**{**TINY_UNET, **(unet or {})})
    raise DomainfmError(f"unknown model {kind!r}; choose gms or unet")


def _check_size(model: nn.Module, store: TileStore) -> None:
    """GMS needs tiles whose side is a multiple of the VAE's down-sampling factor."""
    if isinstance(model, GMSSegmenter):
        factor, side = model.vae_config.downsampling, store.spec.tile_shape[-1]
        if side % factor:
            raise DomainfmError(f"{store.path} holds {side} px tiles; this VAE needs a multiple of {factor} px")


def fit(
    kind: str,
    store_path: Path,
    out: Path,
    vae: Path | None = None,
    mapper: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup_epochs: int = 5,
    seed: int = 2333,
    device: str = "auto",
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    *,
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
) -> dict[str, Any] | None:
    """Trains one segmenter; writes ``model.safetensors``, ``history.json`` and ``val_predictions.png``.

    ``extra`` is recorded in the checkpoint's metadata. With several processes (``devices``, ``num_nodes``,
    ``strategy``; docs/distributed.md) every process trains and global rank zero writes the outputs; the
    others return ``None``.
    """
    store = TileStore(store_path)
    require_splits(store, ("train", "val"), "segmentation training (it keeps the epoch with the best val Dice)")
    model = build_model(kind, vae, mapper, unet)
    _check_size(model, store)
    resume_dir = Path(out) / "resume"  # last.ckpt after every epoch: a killed run continues from there
    history = train_segmenter(
        model, store, epochs, batch_size, lr, warmup_epochs, seed, device, progress, resume_dir,
        devices=devices, strategy=strategy, num_nodes=num_nodes,
    )  # fmt: skip
    if not is_launch_zero():
        return None
    checkpoint = save_segmenter(
        model,
        Path(out) / "model.safetensors",
        image_size=store.spec.tile_shape[-1],
        trained_on=str(store.path),
        vae_source=str(vae) if vae else None,
        epochs=epochs,
        best_epoch=history["best_epoch"],
        best_val_dice=history["best_val_dice"],
        **(extra or {}),
    )
    write_history(history, Path(out) / "history.json")
    shutil.rmtree(resume_dir, ignore_errors=True)
    ids = split_ids(store, "val")[: 8 * world_size()]  # the stream gives this process the first part
    predictions = predict(model, store, ids, device=device)
    qc = qc_figure(predictions, Path(out) / "val_predictions.png", f"{kind} on {store.path.name} (val)")
    return {"checkpoint": checkpoint, "qc": qc, **{k: v for k, v in history.items() if k != "losses"}}


def evaluate_checkpoint(
    checkpoint: Path, store_path: Path, split: str = "test", out: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Scores a trained segmenter on a store; ``out`` also gets a QC picture."""
    model, meta = load_segmenter(checkpoint)
    store = TileStore(store_path)
    if meta.get("image_size") and meta["image_size"] != store.spec.tile_shape[-1]:
        raise SegmentationCheckpointError(
            f"{checkpoint} was trained on {meta['image_size']} px tiles but {store.path} holds "
            f"{store.spec.tile_shape[-1]} px tiles; ingest the images again with --size {meta['image_size']}"
        )
    _check_size(model, store)
    result = {
        "model": meta["kind"],
        "checkpoint": str(checkpoint),
        **evaluate(model, store, split, device=device, native=True),
    }
    result["trainable_parameters"] = meta["trainable_parameters"]
    if out is not None:
        predictions = predict(model, store, split_ids(store, split)[:8], device=device)
        result["qc"] = str(
            qc_figure(
                predictions,
                Path(out) / f"{store.path.stem}_{split}.png",
                f"{meta['kind']} on {store.path.name} ({split})",
            )
        )
    return result


def _reusable(path: Path, settings: dict[str, Any]) -> bool:
    """True when ``path`` is a checkpoint written with exactly ``settings`` (so a rerun can skip it)."""
    try:
        return path.is_file() and read_metadata(path).get("settings") == settings
    except SegmentationCheckpointError:
        return False
