"""``domainfm segmentation phantom`` and ``domainfm segmentation compare``: phantom pairs and the GMS-vs-UNet study.

Verbs of the domain's CLI group (``domainfm/domains/segmentation/cli.py`` names them); the library's own
verbs are in :mod:`domainfm.domains.segmentation.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.shared.config import NonNegativeInt, PositiveFloat, PositiveInt, Seed


def phantom(out: Path, n: PositiveInt = 120, size: PositiveInt = 64, seed: Seed = 0, overwrite: bool = False) -> int:
    """Write phantom image/mask pairs for two sites (``OUT/site_a``, ``OUT/site_b``).

    Args:
        out: Output folder.
        n: Images per site.
        size: Image side in pixels.
        seed: Random seed.
        overwrite: Replace a phantom folder written earlier (any other folder at ``out`` is refused).
    """
    from domainfm.studies.segmentation.phantom import write_phantom
    from domainfm.studies.shared.outputs import phantom_folder

    with phantom_folder(out, "phantom folder", overwrite) as folder:
        written = write_phantom(folder, n, size, seed)
    for site in written["sites"]:
        print(f"{site}: {n} images in {Path(out) / site / 'images'}, masks in {Path(out) / site / 'masks'}")
    return 0


def compare(
    out: Path,
    n: PositiveInt = 160,
    size: PositiveInt = 64,
    vae: dict[str, Any] | None = None,
    vae_epochs: PositiveInt = 10,
    vae_weights: Path | None = None,
    mapper: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 8,
    lr: PositiveFloat = 2e-3,
    warmup_epochs: NonNegativeInt = 2,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """GMS against the UNet on the phantom: same site and across sites, with trainable parameters.

    Writes the phantom, both stores, the VAE, both models, results.json, results.md and QC pictures.

    Args:
        out: Output folder.
        n: Phantom images per site.
        size: Image side in pixels.
        vae: VAE shape (tiny default).
        vae_epochs: VAE training epochs (on site A's images, no masks).
        vae_weights: Use these VAE weights (e.g. local Stable-Diffusion weights) instead of training one.
        mapper: Latent mapper options.
        unet: UNet options.
        epochs: Epochs of both segmenters (the same budget).
        batch_size: Batch size of both segmenters.
        lr: AdamW learning rate of both.
        warmup_epochs: Warm-up epochs of both.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.studies.segmentation.workflow import compare_on_phantom

    out = Path(out)
    from domainfm.shared.outputs import run_folder

    with run_folder(out):  # new, empty or an earlier run of domainfm: never a folder of other files
        save_resolved_config(out)
        rows = compare_on_phantom(
            out,
            n,
            size,
            vae,
            vae_epochs,
            mapper,
            unet,
            epochs,
            batch_size,
            lr,
            warmup_epochs,
            seed,
            device,
            vae_weights=Path(vae_weights) if vae_weights else None,
        )
        print((out / "results.md").read_text())
        return 0 if rows else 1
