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
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.remote_sensing.simmim import MaskGenerator, SimMIM
from domainfm.shared.backbones import create_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.training import adamw_warmup_cosine, fit, make_trainer, step_task
from domainfm.shared.errors import DomainfmError
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
    shape = (1, -1, 1, 1)
    mean = torch.tensor(transform["mean"], device=tiles.device).view(shape)
    std = torch.tensor(transform["std"], device=tiles.device).view(shape)
    return (tiles.float() - mean) / std


def random_resized_crop(
    images: torch.Tensor, valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SatVision's crop (area 0.67-1, aspect 3/4-4/3) resized back, applied alike to chips and validity."""
    b = len(images)
    area = torch.rand(b, generator=generator) * 0.33 + 0.67
    aspect = torch.exp(torch.rand(b, generator=generator) * (math.log(4 / 3) * 2) - math.log(4 / 3))
    sx, sy = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
    tx, ty = (
        (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx),
        (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy),
    )
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1).to(images)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    crop = nn.functional.grid_sample(images, grid, mode="bilinear", align_corners=False)
    crop_valid = nn.functional.grid_sample(valid.float(), grid, mode="nearest", align_corners=False)
    return crop, crop_valid


def save_simmim(model: SimMIM, bands: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> Path:
    """Encoder + head + band table in one safetensors file, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, partial, {METADATA_KEY: json.dumps({**meta, "bands": bands})})
    partial.replace(path)
    return path


def read_simmim(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """State dict and metadata of a SimMIM checkpoint (a clear error for other files)."""
    from safetensors.torch import load_file

    from domainfm.shared.backbones.checkpoint import read_checkpoint_metadata

    meta = read_checkpoint_metadata(path, METADATA_KEY, "domainfm remote-sensing pretrain")
    return load_file(str(path)), meta


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
) -> dict[str, Any]:
    """SimMIM on the store's train split; writes ``simmim.safetensors`` and ``history.json``."""
    store, out = TileStore(store_path), Path(out)
    if "valid" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no valid companion: ingest it with `domainfm remote-sensing ingest`")
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    channels, size = store.spec.tile_shape[0], store.spec.tile_shape[-1]
    model = SimMIM(create_backbone(backbone, in_chans=channels, img_size=size), size).to(torch_device)
    masks = MaskGenerator(size, mask_patch, model.patch_size, mask_ratio)
    transform = input_transform(store)
    generator = torch.Generator().manual_seed(seed)

    def step(batch: dict) -> torch.Tensor:
        images, valid = random_resized_crop(prepare(batch["tiles"], transform), batch["valid"], generator)
        return model(images, masks(len(images), generator).to(torch_device), valid)

    from lightning.pytorch.callbacks import ModelCheckpoint

    resume = out / "resume"
    task = step_task(step, model, adamw_warmup_cosine(lr, weight_decay, epochs, warmup_epochs))
    trainer = make_trainer(epochs, torch_device, progress, [ModelCheckpoint(resume, save_top_k=0, save_last=True)])
    stream = TileStream(
        store, batch_size, split="train", seed=seed, device=torch_device, normalize=False, companions=("valid",)
    )
    start = time.perf_counter()
    fit(trainer, task, stream, resume / "last.ckpt")
    meta = {
        "backbone": backbone,
        "image_size": size,
        "mask_patch": mask_patch,
        "mask_ratio": mask_ratio,
        "input_transform": transform,
        "epochs": epochs,
        "trained_on": str(store.path),
    }
    checkpoint = save_simmim(model.cpu(), store.spec.channels, meta, out / "simmim.safetensors")
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs}
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
