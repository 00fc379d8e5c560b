"""The GMS-vs-UNet phantom study.

The study mirrors the GMS paper's two experiments (Huo et al., AAAI 2025, arXiv 2403.18198): in-domain
Dice/IoU on one site, and cross-domain (train on one site, test on the other), with trainable parameters
beside each model. Every step writes its output atomically and is skipped when rerun with the same
settings, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainfm.domains.segmentation.fitting import _reusable, evaluate_checkpoint, fit
from domainfm.domains.segmentation.models import save_vae
from domainfm.domains.segmentation.train import train_vae, write_history
from domainfm.domains.segmentation.vae import TINY_VAE, VAEConfig
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import markdown_table
from domainfm.shared.tiles.store import TileStore

SITES = ("site_a", "site_b")


def compare_on_phantom(
    out: Path,
    n: int = 160,
    size: int = 64,
    vae: dict[str, Any] | None = None,
    vae_epochs: int = 10,
    mapper: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup_epochs: int = 2,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    vae_weights: Path | None = None,
) -> list[dict[str, Any]]:
    """GMS and the UNet trained on site A, scored on the test splits of site A and site B.

    The VAE is trained on site A's images unless ``vae_weights`` (e.g. local SD weights) are given.
    """
    from domainfm.domains.segmentation.data import ingest_pairs
    from domainfm.studies.segmentation.phantom import write_phantom

    out = Path(out)
    phantom_dir = out / "phantom"
    phantom_settings = {"n": n, "size": size, "seed": seed}
    manifest = phantom_dir / "phantom.json"
    rewritten = not (
        manifest.is_file() and {k: json.loads(manifest.read_text())[k] for k in phantom_settings} == phantom_settings
    )
    if rewritten:
        write_phantom(phantom_dir, n, size, seed)
    stores = {}
    for site in SITES:
        summary, _ = ingest_pairs(
            phantom_dir / site / "images",
            phantom_dir / site / "masks",
            out / f"{site}.zarr",
            size,
            progress=progress,
            overwrite=rewritten,
        )
        if not summary.ok:
            raise DomainfmError(summary.report())
        stores[site] = out / f"{site}.zarr"
    vae_config = VAEConfig.from_dict({**TINY_VAE.to_dict(), **(vae or {})})
    vae_path = Path(vae_weights) if vae_weights else out / "vae" / "vae.safetensors"
    vae_settings = {"vae": vae_config.to_dict(), "epochs": vae_epochs, "seed": seed, "store": str(stores["site_a"])}
    if vae_weights:
        vae_settings = {"weights": str(vae_path)}
    elif not _reusable(vae_path, vae_settings):
        trained, trained_config, history = train_vae(
            TileStore(stores["site_a"]), vae_config, vae_epochs, seed=seed, device=device, progress=progress
        )
        save_vae(trained, trained_config, vae_path, settings=vae_settings)
        write_history(history, vae_path.with_name("history.json"))
    rows = []
    for kind in ("gms", "unet"):
        settings = {"mapper": mapper, "unet": unet, "epochs": epochs, "batch": batch_size, "lr": lr, "seed": seed}
        settings["vae"] = vae_settings
        checkpoint = out / kind / "model.safetensors"
        if not _reusable(checkpoint, settings):
            fit(
                kind,
                stores["site_a"],
                out / kind,
                vae_path,
                mapper,
                unet,
                epochs,
                batch_size,
                lr,
                warmup_epochs,
                seed,
                device,
                progress,
                extra={"settings": settings},
            )
        same = evaluate_checkpoint(checkpoint, stores["site_a"], "test", out / kind, device)
        cross = evaluate_checkpoint(checkpoint, stores["site_b"], "test", out / kind, device)
        rows.append(
            {
                "model": kind,
                "trainable_parameters": same["trainable_parameters"],
                "dice_a_to_a": same["dice_mean"],
                "iou_a_to_a": same["iou_mean"],
                "hd95_a_to_a": same["hd95_mean"],
                "dice_a_to_b": cross["dice_mean"],
                "iou_a_to_b": cross["iou_mean"],
                "hd95_a_to_b": cross["hd95_mean"],
                "test_images": same["images"],
            }
        )
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    header = (
        f"GMS vs UNet on the phantom ({n} images per site, {size} px; trained on site A for {epochs} epochs, "
        f"batch {batch_size}, AdamW {lr}, seed {seed}; "
        + (f"VAE weights {vae_path}). " if vae_weights else f"VAE {vae_epochs} epochs on site A images). ")
        + "Test split of each site; Dice/IoU per image, mean; HD95 in pixels."
    )
    (out / "results.md").write_text(header + "\n\n" + markdown_table(rows) + "\n")
    return rows
