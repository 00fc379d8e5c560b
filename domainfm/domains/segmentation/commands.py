"""``domainfm segmentation ...``: ingest, train-vae, train and eval.

GMS (Huo et al., "Generative Medical Segmentation", AAAI 2025, arXiv 2403.18198) with a MONAI UNet
baseline. Every command saves its resolved config beside its outputs, so a run can be repeated.

The group's study verbs (phantom, compare) are in :mod:`domainfm.studies.segmentation.commands`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from jsonargparse.typing import restricted_number_type

from domainfm.shared.config import (
    HoldOutFraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
)

MaskThreshold = restricted_number_type("DomainfmMaskThreshold", int, [(">=", 0), ("<=", 254)])  # value > t: foreground


def ingest(
    images: Path,
    masks: Path,
    out: Path,
    size: PositiveInt = 224,
    foreground: list[int] | None = None,
    mask_threshold: MaskThreshold = 127,
    allow_unpaired: bool = False,
    val_fraction: HoldOutFraction = 0.15,
    test_fraction: HoldOutFraction = 0.15,
    case_pattern: str | None = None,
    splits: Path | None = None,
    workers: PositiveInt = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
) -> int:
    r"""Ingest PNG/JPEG/TIFF image + mask pairs (paired by file stem) into a segmentation tile store.

    Args:
        images: Folder of images.
        masks: Folder of masks (same stems, optionally ending in _mask, _segmentation, _seg, _label, _gt).
        out: Store folder.
        size: Side of the stored square tiles (GMS: 224).
        foreground: Label values counted as foreground in label masks (default: every nonzero label of a PNG
            label map or palette image, else value > ``mask_threshold``).
        mask_threshold: 8-bit (and JPEG) masks: foreground is value > this; masks with values between
            black and white (lossy JPEG) are named in a warning. Exact label maps ignore it.
        allow_unpaired: Ingest the pairs even if some files have no partner (they are listed and recorded).
        val_fraction: Fraction of cases in the val split (by a stable hash of the case).
        test_fraction: Fraction of cases in the test split.
        case_pattern: A regular expression on the image stem whose first group is the case (all images of
            a case share a split), e.g. ``^(patient\d+)_``; the stem is the case when unset.
        splits: CSV of case (or image stem or file name) -> split (train, val, test); every case listed.
        workers: Local parallel tasks.
        scheduler: A dask.distributed scheduler address; local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other sources.
    """
    from domainfm.domains.segmentation.data import ingest_pairs, mask_notes
    from domainfm.shared.tiles.split_counts import warn_empty_splits

    summary, pairing = ingest_pairs(
        Path(images),
        Path(masks),
        Path(out),
        size,
        tuple(foreground) if foreground else None,
        allow_unpaired,
        val_fraction,
        test_fraction,
        workers,
        scheduler,
        processes,
        overwrite,
        mask_threshold=mask_threshold,
        case_pattern=case_pattern,
        splits=Path(splits) if splits else None,
    )
    if not pairing.complete or pairing.skipped:
        print(pairing.report())
    print(summary.report())
    if summary.ok:
        for note in mask_notes(Path(out)):
            print(f"warning: {note}", file=sys.stderr)
        warn_empty_splits(Path(out))
    return 0 if summary.ok else 1


def train_vae(
    store: Path,
    out: Path,
    vae: dict[str, Any] | None = None,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 16,
    lr: PositiveFloat = 1e-3,
    kl_weight: NonNegativeFloat = 1e-4,
    shape_fraction: Probability = 0.5,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """Train the small SD-layout VAE on a store's images (unlabelled) plus random shapes; write OUT/vae.safetensors.

    Args:
        store: A segmentation tile store (its train split is used; masks are not).
        out: Output folder.
        vae: VAE shape: channels, num_res_blocks, latent_channels, norm_num_groups (tiny default).
        epochs: Training epochs.
        batch_size: Batch size.
        lr: AdamW learning rate.
        kl_weight: Weight of the KL term (per latent element) against the L1 reconstruction.
        shape_fraction: Fraction of each batch replaced by random binary shapes.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.domains.segmentation.models import save_vae
    from domainfm.domains.segmentation.train import train_vae as fit_vae
    from domainfm.domains.segmentation.train import write_history
    from domainfm.domains.segmentation.vae import TINY_VAE, VAEConfig
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder
    from domainfm.shared.tiles.store import TileStore

    out = Path(out)
    with run_folder(out):  # one run per folder; never a folder of other files
        save_resolved_config(out)
        config = VAEConfig.from_dict({**TINY_VAE.to_dict(), **(vae or {})})
        trained, config, history = fit_vae(
            TileStore(store), config, epochs, batch_size, lr, kl_weight, shape_fraction, seed, device
        )
        path = save_vae(trained, config, out / "vae.safetensors", trained_on=str(store), epochs=epochs)
        write_history(history, out / "history.json")
    print(f"wrote {path} (scaling factor {config.scaling_factor:.4f})")
    return 0


def train(
    store: Path,
    out: Path,
    model: Literal["gms", "unet"] = "gms",
    vae: Path | None = None,
    mapper: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 8,
    lr: PositiveFloat = 2e-3,
    warmup_epochs: NonNegativeInt = 5,
    seed: Seed = 2333,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: PositiveInt = 1,
) -> int:
    """Train GMS (mapper in a frozen VAE's latent space) or the MONAI UNet baseline; write OUT/model.safetensors.

    A killed run resumes from OUT/resume/last.ckpt (written after every epoch) when rerun with the same command.
    Several processes (``--devices``, ``--num_nodes``) train with DDP; global rank zero writes the outputs.

    Args:
        store: A segmentation tile store (train split; the best val epoch is kept).
        out: Output folder.
        model: ``gms`` or ``unet``.
        vae: For GMS: a VAE from ``train-vae``, or local Stable-Diffusion VAE weights (diffusers folder or file).
        mapper: Latent mapper options: base, multipliers, groups (paper: base 32, multipliers [1, 2, 4, 4]).
        unet: UNet options: channels, strides, num_res_units.
        epochs: Training epochs (the paper: 1000 on its small sets).
        batch_size: Batch size per process (the paper: 8).
        lr: AdamW learning rate (the paper: 2e-3).
        warmup_epochs: Linear warm-up epochs before the cosine decay (the paper: 5).
        seed: Random seed (the paper: 2333).
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (the kind of device when ``devices`` > 1).
        devices: Processes (devices) per machine: a count, or ``auto`` for every GPU.
        strategy: ``auto`` (one device, else DDP) or ``ddp``.
        num_nodes: Machines (launch with torchrun or SLURM; docs/distributed.md).
    """
    from domainfm.domains.segmentation.fitting import fit
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.engine.distributed import is_launch_zero
    from domainfm.shared.outputs import run_folder

    out = Path(out)
    with run_folder(out, lead=is_launch_zero()):  # one run per folder; never a folder of other files
        if is_launch_zero():
            save_resolved_config(out)
        result = fit(
            model, Path(store), out, vae, mapper, unet, epochs, batch_size, lr, warmup_epochs, seed, device,
            devices=devices, strategy=strategy, num_nodes=num_nodes,
        )  # fmt: skip
    if result is None:  # not global rank zero: the outputs are rank zero's to write
        return 0
    print(
        f"wrote {result['checkpoint']}: best val Dice {result['best_val_dice']:.3f} at epoch {result['best_epoch']}, "
        f"{result['trainable_parameters']:,} trainable parameters; QC picture {result['qc']}"
    )
    return 0


def evaluate(
    checkpoint: Path,
    store: Path,
    split: str = "test",
    out: Path | None = None,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Dice, IoU and HD95 (mean and std over images) and trainable parameters of a trained segmenter.

    Scored at the store's size (GMS's protocol) and at each image's own size against its full-size mask,
    as ``predict`` and the exported bundle return masks.

    Args:
        checkpoint: A model from ``segmentation train``.
        store: A segmentation tile store (another site's store for cross-domain evaluation).
        split: ``train``, ``val``, ``test`` or ``all``.
        out: Folder for a QC picture of predictions (none when unset).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    import contextlib
    import json as json_module

    from domainfm.domains.segmentation.fitting import evaluate_checkpoint
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)) if out else contextlib.nullcontext():  # QC pictures never go among other files
        result = evaluate_checkpoint(Path(checkpoint), Path(store), split, Path(out) if out else None, device)
    if json:
        print(json_module.dumps(result, indent=2))
    else:
        print(
            f"{result['model']} on {result['store']} ({result['split']}, {result['images']} images): "
            f"Dice {result['dice_mean']:.3f} ± {result['dice_std']:.3f}, IoU {result['iou_mean']:.3f}, "
            f"HD95 {result['hd95_mean']:.2f} px; {result['trainable_parameters']:,} trainable parameters"
        )
        if result.get("native"):
            native = result["native"]
            print(
                f"  at each image's own size (as predict returns it): Dice {native['dice_mean']:.3f} ± "
                f"{native['dice_std']:.3f}, IoU {native['iou_mean']:.3f}, HD95 {native['hd95_mean']:.2f} px"
            )
        elif result.get("native_missing"):
            print(f"  not scored at native size: {result['native_missing']}")
    return 0
