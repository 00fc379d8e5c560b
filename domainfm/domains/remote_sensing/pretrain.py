"""SimMIM pretraining on a remote-sensing tile store, encoder checkpoints, and loading them onto other bands.

Recipe after SatVision-TOA (arXiv 2411.17000; ``shared/methods/satvision.md`` section 3): AdamW (0.9,
0.999), weight decay 0.05 except on 1-D parameters and the mask token, linear warm-up then cosine decay
(SatVision: multistep), mask patch 8 and ratio 0.6, random resized crops (area 0.67-1, aspect 3/4-4/3)
and no flips. MODIS stores are already in SatVision's [0, 1] scaling; other stores are standardised
with their statistics.

Continuing a published model (``init``): a file from ``domainfm models convert satvision_toa_giant``
(SatVision-TOA's release) gives the encoder, the SimMIM mask token and the reconstruction head (a 1 x 1
convolution to ``stride^2 x bands`` and PixelShuffle, as pytorch-caney's decoder), and its input
transform replaces the store's statistics: the release's band scaling, composed with the store's own
(a MODIS store already holds SatVision's [0, 1] values, so the composition is the identity there). The
checkpoint then carries that record (``transform``) and the encoder's build arguments, so downstream
tasks rebuild the same encoder and preprocess as it was pretrained.

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
from domainfm.shared.model import InputTransform, standardise
from domainfm.shared.tasks.schedule import adamw_warmup_cosine
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.split_counts import pretraining_tiles
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


def encoder_args(meta: dict[str, Any]) -> dict[str, Any]:
    """``create_backbone`` arguments of a checkpoint's encoder, without channels and size (older files: the name)."""
    args = dict(meta.get("encoder") or {"name": meta["backbone"]})
    args.pop("in_chans", None)
    args.pop("img_size", None)
    return args


def build_encoder(meta: dict[str, Any], in_chans: int) -> nn.Module:
    """A random-initialised encoder of a checkpoint's architecture for ``in_chans`` bands."""
    args = encoder_args(meta)
    return create_backbone(args.pop("name"), in_chans=in_chans, img_size=meta["image_size"], **args)


def load_encoder(path: Path, target_bands: list[dict[str, Any]] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained SwinV2 encoder for ``target_bands`` (the checkpoint's own bands when ``None``)."""
    producer = "domainfm remote-sensing pretrain"
    state, meta = read_simmim(Path(path))
    try:
        bands = target_bands or meta["bands"]
        backbone = build_encoder(meta, len(bands))
        encoder = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        encoder[PATCH_EMBED] = remap_patch_embedding(encoder[PATCH_EMBED], meta["bands"], bands)
        result = backbone.load_state_dict(encoder, strict=False)
    except (KeyError, TypeError, AttributeError, IndexError) as cause:
        raise DomainfmError(
            f"{path}: its {METADATA_KEY} metadata or tensors lack or mistype a field ({type(cause).__name__}: "
            f"{cause}); recreate it with `{producer}`"
        ) from cause
    except RuntimeError as cause:  # reshaped tensors
        details = " ".join(line.strip() for line in str(cause).splitlines()[1:3])[:400]
        raise DomainfmError(
            f"{path}: its tensors do not fit the encoder its metadata describes ({details}); "
            f"recreate it with `{producer}`"
        ) from cause
    if result.missing_keys or result.unexpected_keys:
        raise DomainfmError(f"{path}: encoder keys do not fit: {result.missing_keys[:5]} {result.unexpected_keys[:5]}")
    return backbone, meta


def continued_transform(
    record: InputTransform, channels: list[dict[str, Any]], size: int, source: Path
) -> InputTransform:
    """``record`` (on physical band values) re-expressed on a store's chips, bands matched by name and order.

    A store channel with a ``scaling`` ``[low, high]`` holds ``(x - low) / (high - low)`` of the physical
    value ``x`` (MODIS stores, SatVision's scaling), so the record's ``(x * scale - mean) / std`` becomes
    ``(chip - mean') / std'`` with ``mean' = (mean - low * scale) / ((high - low) * scale)`` and
    ``std' = std / ((high - low) * scale)``: the identity when both scalings are SatVision's. Other
    channels hold physical values and keep the record's numbers.
    """
    names = [str(c["name"]) for c in channels]
    if names != list(record.channels):
        raise DomainfmError(
            f"the store's bands {names} are not {source}'s {list(record.channels)} in its order; the encoder's "
            "patch embedding and the SimMIM decoder are per band: ingest the store with exactly these bands "
            "(`domainfm remote-sensing ingest ... --bands " + " ".join(record.channels) + "`)"
        )
    mean, std, units = [], [], []
    for channel, m, sd in zip(channels, record.mean, record.std, strict=True):
        if "scaling" in channel:
            low, high = (float(v) for v in channel["scaling"])
            width = (high - low) * record.scale
            mean.append((m - low * record.scale) / width)
            std.append(sd / width)
            units.append("scaled")
        else:
            mean.append(m / record.scale)
            std.append(sd / record.scale)
            units.append("physical")
    details = {
        **record.details,
        "chip_units": "the store's: (x - low) / (high - low) per band (SatVision's scaling)"
        if set(units) == {"scaled"}
        else f"the store's, per band: {dict(zip(names, units, strict=True))}",
        "from": str(source),
    }
    return InputTransform(
        channels=names, size=[size, size], geometry="exact", scale=1.0, mean=mean, std=std,
        input_range=record.input_range, details=details,
    )  # fmt: skip


def _as_standardisation(record: InputTransform) -> dict[str, list[float]] | None:
    """What :func:`prepare` takes: ``None`` when the record leaves the chips as they are."""
    if all(m == 0.0 for m in record.mean) and all(s == 1.0 for s in record.std):
        return None
    return {"mean": list(record.mean), "std": list(record.std)}


def init_from_converted(model: SimMIM, path: Path) -> None:
    """The mask token and the reconstruction head of a converted release (``extra.`` tensors) into ``model``."""
    from domainfm.shared.foundation.convert import read_extras

    extras = read_extras(path)
    missing = sorted({"mask_token", "decoder.0.weight", "decoder.0.bias"} - set(extras))
    if missing:
        raise DomainfmError(
            f"{path} keeps no SimMIM {', '.join(missing)} beside its encoder; continue pretraining from a "
            "converted SimMIM release (`domainfm models convert satvision_toa_giant ...`)"
        )
    token = extras["mask_token"].reshape(-1)
    conv = model.head[0]
    expected = {"mask_token": tuple(model.mask_token.shape), "decoder.0.weight": tuple(conv.weight.shape),
                "decoder.0.bias": tuple(conv.bias.shape)}  # fmt: skip
    found = {"mask_token": tuple(token.shape), "decoder.0.weight": tuple(extras["decoder.0.weight"].shape),
             "decoder.0.bias": tuple(extras["decoder.0.bias"].shape)}  # fmt: skip
    if found != expected:
        raise DomainfmError(
            f"{path}: the released SimMIM decoder does not fit this model (found {found}, the model needs "
            f"{expected}); domainfm's head is a 1x1 conv to stride^2 x bands + PixelShuffle(stride), as "
            "pytorch-caney's, so the bands or the encoder width differ from the release's"
        )
    with torch.no_grad():
        model.mask_token.copy_(token)
        conv.weight.copy_(extras["decoder.0.weight"])
        conv.bias.copy_(extras["decoder.0.bias"])


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
    init: Path | None = None,
) -> dict[str, Any]:
    """SimMIM on every chip outside the test split; writes ``simmim.safetensors`` and ``history.json``.

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
        init: A converted SimMIM release (``domainfm models convert satvision_toa_giant``) to continue:
            encoder, mask token, decoder and input transform come from it (``backbone`` is then ignored).
    """
    store, out = TileStore(store_path), Path(out)
    if "valid" not in store.spec.companions:
        raise DomainfmError(f"{store.path} has no valid companion: ingest it with `domainfm remote-sensing ingest`")
    channels, size = store.spec.tile_shape[0], store.spec.tile_shape[-1]
    ids, used = pretraining_tiles(store.path, store.index["split"], group="scene")  # every chip outside test
    if size % mask_patch:
        raise DomainfmError(
            f"{store.path}: chips of {size} px do not divide into --mask_patch {mask_patch} cells; use a mask patch "
            f"that divides {size}, or re-ingest with --chip a multiple of 32"
        )
    torch.manual_seed(seed)
    record = None
    if init is None:
        model = SimMIM(create_backbone(backbone, in_chans=channels, img_size=size), size)
        transform = input_transform(store)
    else:
        model, record = _continued_model(Path(init), store, size)
        backbone = model.backbone.name
        transform = _as_standardisation(record)
    if size % model.stride or mask_patch % model.patch_size:
        raise DomainfmError(
            f"{store.path}: {backbone} reduces chips by {model.stride} and cuts {model.patch_size}-px patches, so "
            f"{size}-px chips with {mask_patch}-px mask cells do not fit; re-ingest with --chip a multiple of "
            f"{math.lcm(model.stride, mask_patch)} (and --mask_patch a multiple of {model.patch_size})"
        )
    trainer, resume = resumable_trainer(
        out, epochs, resolve_device(device), progress, callbacks, devices=devices,
        strategy=_strategy(strategy, fsdp, model.backbone), num_nodes=num_nodes, precision=precision,
    )  # fmt: skip
    torch_device = trainer_device(trainer)
    if strategy != "fsdp":  # FSDP moves each unit to the device as it shards it
        model.to(torch_device)
    masks = MaskGenerator(size, mask_patch, model.patch_size, mask_ratio)

    def step(batch: dict) -> torch.Tensor:
        generators = tile_generators(batch["tile_id"], seed, trainer.current_epoch)
        images, valid = random_resized_crop(prepare(batch["tiles"], transform), batch["valid"], generators)
        return model(images, masks(len(images), generators).to(images.device), valid)

    task = step_task(step, model, adamw_warmup_cosine(lr, weight_decay, epochs, warmup_epochs))
    stream = TileStream(
        store, batch_size, indices=ids, seed=seed, device=torch_device, normalize=False, companions=("valid",)
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
        "splits": used,
        "encoder": model.backbone.build_args,
    }
    if record is not None:
        meta.update(transform=record.to_dict(), init=str(init))
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs, "splits": used}
    checkpoint = out / "simmim.safetensors"
    if trainer.is_global_zero:
        save_simmim(state, store.spec.channels, meta, checkpoint)
        (out / "history.json").write_text(json.dumps(history, indent=2))
        shutil.rmtree(resume, ignore_errors=True)
    return {"checkpoint": checkpoint, **history}


def _continued_model(path: Path, store: TileStore, size: int) -> tuple[SimMIM, InputTransform]:
    """SimMIM from a converted release, and its input transform on the store's chips."""
    from domainfm.shared.backbones import load_backbone
    from domainfm.shared.foundation.convert import foundation_transform

    record = foundation_transform(path)
    if record is None:
        raise DomainfmError(
            f"--init {path} is not a converted foundation checkpoint; convert the release first: "
            "`domainfm models convert satvision_toa_giant --input mp_rank_00_model_states.pt --config "
            "RELEASE_CONFIG.yaml --out satvision.safetensors`"
        )
    transform = continued_transform(record, store.spec.channels, size, path)
    model = SimMIM(load_backbone(path, in_chans=len(store.spec.channels), img_size=size), size)
    init_from_converted(model, path)
    return model, transform


@torch.no_grad()
def heldout_loss(checkpoint: Path, store_path: Path, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Masked L1 of the checkpoint on ``split`` against predicting each band's train mean, same masks."""
    state, meta = read_simmim(Path(checkpoint))
    store = TileStore(store_path)
    size = meta["image_size"]
    model = SimMIM(build_encoder(meta, len(meta["bands"])), size)
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
