"""SimMIM pretraining on a remote-sensing tile store, encoder checkpoints, and loading them onto other bands.

Recipe after SatVision-TOA (arXiv 2411.17000; ``shared/methods/satvision.md`` section 3): AdamW (0.9,
0.999), weight decay 0.05 except on 1-D parameters and the mask token, linear warm-up then cosine decay
(SatVision: multistep), mask patch 8 and ratio 0.6, random resized crops (area 0.67-1, aspect 3/4-4/3)
and no flips. MODIS stores are already in SatVision's [0, 1] scaling; other stores are standardised
with their statistics.

A checkpoint stores the encoder, the reconstruction head and the band table (name, quantity, wavelength).
:func:`load_encoder` puts the encoder onto another band set by name: bands present in the checkpoint keep
their patch-embedding filters exactly; a new band gets the mean filter of the checkpoint's bands of the
same quantity (reflectance or brightness temperature; all bands when none match), so that it starts as
an average of its physical neighbours rather than as noise.

Scale: several processes (Lightning DDP, or FSDP for the giant SwinV2 as SatVision shards it with
DeepSpeed ZeRO) each read their part of the store; the loss is averaged over the masked valid pixels of
the global batch (:mod:`.simmim`), and each chip's crop and mask come from its own generator, seeded by
(seed, epoch, tile id), so a DDP step over N processes equals one process on the global batch (tested).
``configs/remote_sensing/satvision_giant_fsdp.yaml`` and ``docs/distributed.md`` show the FSDP setting.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.remote_sensing.simmim import MaskGenerator, SimMIM
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.distributed import tile_generators, tile_uniforms
from domainfm.shared.engine.training import (
    fit,
    fsdp_strategy,
    resumable_trainer,
    step_task,
    trained_state,
    trainer_device,
)
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import standardise
from domainfm.shared.tasks.schedule import adamw_warmup_cosine
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

METADATA_KEY = "domainfm_simmim"
PATCH_EMBED = "model.patch_embed.proj.weight"


def input_transform(store: TileStore) -> dict[str, list[float]] | None:
    """``None`` for SatVision-scaled MODIS stores, else per-band mean/std to standardise with."""
    if all("scaling" in c for c in store.spec.channels):
        return None
    return {"mean": list(store.stats["mean"]), "std": [max(float(s), 1e-6) for s in store.stats["std"]]}


def prepare(tiles: torch.Tensor, transform: dict[str, list[float]] | None) -> torch.Tensor:
    """Float chips as the model reads them."""
    if transform is None:
        return tiles.float()
    return standardise(tiles, transform["mean"], transform["std"])


def random_resized_crop(
    images: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SatVision's crop (area 0.67-1, aspect 3/4-4/3) resized back, applied alike to chips and validity.

    Args:
        images: Chips ``[B, C, H, W]``.
        valid: Their validity ``[B, C, H, W]``.
        generator: One generator for the batch, or one per chip (a chip's crop then depends on its own only).
    """
    b = len(images)
    if isinstance(generator, torch.Generator):
        u = [torch.rand(b, generator=generator) for _ in range(4)]
    elif len(generator) != b:
        raise ValueError(f"{len(generator)} generators for {b} chips")
    else:
        u = list(tile_uniforms(generator, 4).T)
    area = u[0] * 0.33 + 0.67
    aspect = torch.exp(u[1] * (math.log(4 / 3) * 2) - math.log(4 / 3))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    tx, ty = (u[2] * 2 - 1) * (1 - sx), (u[3] * 2 - 1) * (1 - sy)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1).to(images)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    crop = nn.functional.grid_sample(images, grid, mode="bilinear", align_corners=False)
    crop_valid = nn.functional.grid_sample(valid.float(), grid, mode="nearest", align_corners=False)
    return crop, crop_valid


def save_simmim(
    model: SimMIM | dict[str, torch.Tensor], bands: list[dict[str, Any]], meta: dict[str, Any], path: Path
) -> Path:
    """Encoder + head + band table (of a model, or of its state dict) in one safetensors file, atomically."""
    from domainfm.shared.tasks.checkpoint import save_checkpoint

    source = model if isinstance(model, dict) else model.state_dict()
    return save_checkpoint(path, source, {METADATA_KEY: {**meta, "bands": bands}})


def read_simmim(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of a SimMIM checkpoint (a clear error for other files)."""
    from domainfm.shared.tasks.checkpoint import read_checkpoint, read_checkpoint_metadata

    meta = read_checkpoint_metadata(path, METADATA_KEY, "domainfm remote-sensing pretrain")
    return read_checkpoint(path)[0], meta


def remap_patch_embedding(weight: torch.Tensor, source: list[dict], target: list[dict]) -> torch.Tensor:
    """Patch-embedding filters for ``target`` bands from those of ``source`` bands (see the module docstring)."""
    names = [b["name"] for b in source]
    out = []
    for band in target:
        if band["name"] in names:
            out.append(weight[:, names.index(band["name"])])
            continue
        same = [i for i, b in enumerate(source) if b.get("quantity") and b.get("quantity") == band.get("quantity")]
        out.append(weight[:, same or list(range(len(source)))].mean(dim=1))
    return torch.stack(out, dim=1)


def load_encoder(path: Path, target_bands: list[dict[str, Any]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained SwinV2 encoder for ``target_bands`` (the checkpoint's own bands when ``None``)."""
    state, meta = read_simmim(Path(path))
    bands = target_bands or meta["bands"]
    backbone = create_backbone(meta["backbone"], in_chans=len(bands), img_size=meta["image_size"])
    encoder = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    encoder[PATCH_EMBED] = remap_patch_embedding(encoder[PATCH_EMBED], meta["bands"], bands)
    result = backbone.load_state_dict(encoder, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DomainfmError(f"{path}: encoder keys do not fit: {result.missing_keys[:5]} {result.unexpected_keys[:5]}")
    return backbone, meta


FSDP_OPTIONS = {"activation_checkpointing": True, "sharding_strategy": "FULL_SHARD", "cpu_offload": False,
                "state_dict_type": "full"}  # fmt: skip


def _strategy(strategy: str, fsdp: dict[str, Any] | None, backbone: nn.Module) -> Any:
    """``strategy`` as Lightning takes it: ``fsdp`` becomes an FSDP strategy wrapping each SwinV2 block."""
    unknown = sorted(set(fsdp or {}) - set(FSDP_OPTIONS))
    if unknown:
        raise DomainfmError(f"unknown fsdp option(s) {unknown}; choose from {sorted(FSDP_OPTIONS)}")
    if strategy != "fsdp":
        if fsdp:
            raise DomainfmError(f"fsdp options were given but the strategy is {strategy!r}; use --strategy fsdp")
        return strategy
    blocks = {type(block) for block in backbone.transformer_blocks()}
    return fsdp_strategy(blocks, **{**FSDP_OPTIONS, **(fsdp or {})})


def pretrain(
    store_path: Path,
    out: Path,
    backbone: str = "test_swinv2",
    mask_patch: int = 8,
    mask_ratio: float = 0.6,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 2,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    *,
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    fsdp: dict[str, Any] | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """SimMIM on the store's train split; writes ``simmim.safetensors`` and ``history.json``.

    Args:
        store_path: A store from ``remote-sensing ingest``.
        out: Output folder.
        backbone: A SwinV2 backbone of the shared registry.
        mask_patch: Masked cell side in pixels.
        mask_ratio: Fraction of cells masked.
        epochs: Training epochs.
        batch_size: Chips per step and process.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (not on 1-D parameters or the mask token).
        warmup_epochs: Linear warm-up epochs before the cosine decay.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        progress: Show Lightning's progress bar.
        devices: Processes (devices) per node; see :func:`~domainfm.shared.engine.training.make_trainer`.
        strategy: ``auto``, ``ddp`` or ``fsdp`` (each SwinV2 block one FSDP unit; GPUs only).
        num_nodes: Machines.
        precision: Lightning precision, e.g. ``bf16-mixed``; Lightning's default (32-bit) when unset.
        fsdp: FSDP options (with ``strategy: fsdp``): activation_checkpointing, sharding_strategy,
            cpu_offload, state_dict_type (defaults in ``FSDP_OPTIONS``).
        callbacks: Extra Lightning callbacks.
    """
    store, out = TileStore(store_path), Path(out)
    if "valid" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no valid companion: ingest it with `domainfm remote-sensing ingest`")
    channels, size = store.spec.tile_shape[0], store.spec.tile_shape[-1]
    torch.manual_seed(seed)
    model = SimMIM(create_backbone(backbone, in_chans=channels, img_size=size), size)
    trainer, resume = resumable_trainer(
        out, epochs, resolve_device(device), progress, callbacks, devices=devices,
        strategy=_strategy(strategy, fsdp, model.backbone), num_nodes=num_nodes, precision=precision,
    )  # fmt: skip
    torch_device = trainer_device(trainer)
    if strategy != "fsdp":  # FSDP moves each unit to the device as it shards it
        model.to(torch_device)
    masks = MaskGenerator(size, mask_patch, model.patch_size, mask_ratio)
    transform = input_transform(store)

    def step(batch: dict) -> torch.Tensor:
        generators = tile_generators(batch["tile_id"], seed, trainer.current_epoch)
        images, valid = random_resized_crop(prepare(batch["tiles"], transform), batch["valid"], generators)
        return model(images, masks(len(images), generators).to(images.device), valid)

    task = step_task(step, model, adamw_warmup_cosine(lr, weight_decay, epochs, warmup_epochs))
    stream = TileStream(
        store, batch_size, split="train", seed=seed, device=torch_device, normalize=False, companions=("valid",)
    )
    start = time.perf_counter()
    fit(trainer, task, stream, resume / "last.ckpt")
    state = trained_state(trainer, task)  # every process takes part when FSDP gathers the shards
    meta = {
        "backbone": backbone,
        "image_size": size,
        "mask_patch": mask_patch,
        "mask_ratio": mask_ratio,
        "input_transform": transform,
        "epochs": epochs,
        "trained_on": str(store.path),
    }
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs}
    checkpoint = out / "simmim.safetensors"
    if trainer.is_global_zero:
        save_simmim(state, store.spec.channels, meta, checkpoint)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        shutil.rmtree(resume, ignore_errors=True)
    return {"checkpoint": checkpoint, **history}


@torch.no_grad()
def heldout_loss(checkpoint: Path, store_path: Path, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Masked L1 of the checkpoint on ``split`` against predicting each band's train mean, same masks."""
    state, meta = read_simmim(Path(checkpoint))
    store = TileStore(store_path)
    size = meta["image_size"]
    model = SimMIM(create_backbone(meta["backbone"], in_chans=len(meta["bands"]), img_size=size), size)
    model.load_state_dict(state)
    model.eval()
    masks = MaskGenerator(size, meta["mask_patch"], model.patch_size, meta["mask_ratio"])
    generator = torch.Generator().manual_seed(seed)
    train = np.flatnonzero(store.index["split"] == SPLITS["train"])
    band_mean = torch.zeros(len(meta["bands"]))
    weight = torch.zeros(len(meta["bands"]))
    for batch in TileStream(
        store, 64, indices=train, shuffle=False, device="cpu", normalize=False, companions=("valid",)
    ):
        images, valid = prepare(batch["tiles"], meta["input_transform"]), batch["valid"].float()
        band_mean += (images * valid).sum(dim=(0, 2, 3))
        weight += valid.sum(dim=(0, 2, 3))
    band_mean = (band_mean / weight.clamp_min(1)).view(1, -1, 1, 1)
    totals = {"model": 0.0, "mean_predictor": 0.0, "pixels": 0.0}
    ids = np.flatnonzero(store.index["split"] == SPLITS[split])
    for batch in TileStream(
        store, 64, indices=ids, shuffle=False, device="cpu", normalize=False, companions=("valid",)
    ):
        images, valid = prepare(batch["tiles"], meta["input_transform"]), batch["valid"].float()
        mask = masks(len(images), generator)
        pixel = mask.repeat_interleave(model.patch_size, 1).repeat_interleave(model.patch_size, 2).unsqueeze(1)
        w = pixel * valid
        totals["model"] += float(((model.reconstruct(images, mask) - images).abs() * w).sum())
        totals["mean_predictor"] += float(((band_mean - images).abs() * w).sum())
        totals["pixels"] += float(w.sum())
    return {
        "masked_l1": totals["model"] / totals["pixels"],
        "mean_predictor_l1": totals["mean_predictor"] / totals["pixels"],
        "chips": len(ids),
    }
