"""A phantom classification task for PEFT comparisons: oriented textures of K classes in a tile store.

Each class is a stripe texture with its own orientation and frequency under strong noise and random
phase, contrast and brightness, so a linear probe on random features is not enough. Tiles carry labels
and a fixed train/val/test split and go through the ingest engine like any domain's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.schema import StoreSpec, TileBatch
from domainfm.shared.tiles.store import TileStore


def texture_tiles(n: int, classes: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tiles uint8 [n, 3, size, size], labels, splits)`` with a 70/15/15 split."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    yy, xx = np.mgrid[0:size, 0:size] / size
    tiles = np.empty((n, 3, size, size), np.uint8)
    for i, label in enumerate(labels):
        angle = np.pi * label / classes + rng.normal(0, 0.08)
        frequency = 6 + 3 * label + rng.normal(0, 0.5)
        wave = np.sin(2 * np.pi * frequency * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
        image = 128 + rng.uniform(20, 60) * wave + rng.normal(0, 45, (size, size)) + rng.uniform(-30, 30)
        tint = np.array([1.0, 0.8, 0.9])[:, None, None] * rng.uniform(0.85, 1.15, (3, 1, 1))
        tiles[i] = np.clip(image[None] * tint, 0, 255).astype(np.uint8)
    splits = np.where(rng.random(n) < 0.7, 0, np.where(rng.random(n) < 0.5, 1, 2))
    return tiles, labels, splits


def read_phantom(path: Path) -> Iterator[TileBatch]:
    """Reader for the ``.npz`` files written by :func:`build_phantom_store`."""
    with np.load(path) as data:
        tiles, labels, splits = data["tiles"], data["labels"], data["splits"]
    for start in range(0, len(tiles), 64):
        part = slice(start, start + 64)
        yield TileBatch(
            tiles[part], index={"label": labels[part], "split": splits[part], "x": np.arange(len(tiles))[part]}
        )


def build_phantom_store(out: Path, n: int = 600, classes: int = 4, size: int = 64, seed: int = 0) -> TileStore:
    """Writes the phantom texture task as a tile store at ``out`` (reused when it already exists)."""
    out = Path(out)
    source = out.with_name(out.name + ".source.npz")
    if not (out / "zarr.json").is_file():
        tiles, labels, splits = texture_tiles(n, classes, size, seed)
        np.savez(source, tiles=tiles, labels=labels, splits=splits)
        spec = StoreSpec(
            "generic",
            (3, size, size),
            "uint8",
            [{"name": c} for c in ("R", "G", "B")],
            label_names=[f"texture_{k}" for k in range(classes)],
        )
        summary = ingest([source], out, spec, read_phantom, "peft.phantom_textures", progress=False)
        if not summary.ok:
            raise RuntimeError(summary.report())
        source.unlink()
    return TileStore(out)
