"""Shared phantom data for the segmentation tests: stores of both sites and a trained tiny VAE."""

from pathlib import Path

import pytest

from domainfm.domains.segmentation.data import ingest_pairs
from domainfm.studies.segmentation.phantom import write_phantom


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("segmentation_phantom")
    write_phantom(out, n=100, size=64, seed=0)
    return out


@pytest.fixture(scope="session")
def site_stores(phantom_dir: Path) -> dict[str, Path]:
    stores = {}
    for site in ("site_a", "site_b"):
        summary, _ = ingest_pairs(
            phantom_dir / site / "images",
            phantom_dir / site / "masks",
            phantom_dir / f"{site}.zarr",
            64,
            progress=False,
        )
        assert summary.ok, summary.report()
        stores[site] = phantom_dir / f"{site}.zarr"
    return stores


@pytest.fixture(scope="session")
def trained_vae(site_stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VAE trained briefly on site A's images (no masks) and random shapes."""
    from domainfm.domains.segmentation.models import save_vae
    from domainfm.domains.segmentation.train import train_vae
    from domainfm.domains.segmentation.vae import TINY_VAE
    from domainfm.shared.tiles.store import TileStore

    vae, config, _ = train_vae(TileStore(site_stores["site_a"]), TINY_VAE, epochs=8, device="cpu", progress=False)
    return save_vae(vae, config, tmp_path_factory.mktemp("vae") / "vae.safetensors")
