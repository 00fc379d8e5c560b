"""What a person wants to see of a store: counts, channels, statistics, sources, and a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from domainfm.shared.tiles.store import TileStore


def describe(store: TileStore) -> dict[str, Any]:
    """Counts per source, split and label; channels; statistics; layout."""
    index = store.index
    splits = {
        name: int((index["split"] == code).sum())
        for name, code in (("unassigned", -1), ("train", 0), ("val", 1), ("test", 2))
    }
    labels = np.bincount(index["label"][index["label"] >= 0]) if len(store) else np.array([], int)
    names = store.spec.label_names
    return {
        "path": str(store.path),
        "status": store.attrs.get("status"),
        "domain": store.spec.domain,
        "n_tiles": len(store),
        "tile_shape": list(store.spec.tile_shape),
        "dtype": store.spec.dtype,
        "channels": store.spec.channels,
        "value_scaling": store.spec.value_scaling,
        "stats": {k: v for k, v in store.stats.items() if k != "m2"},
        "layout": store.attrs.get("layout"),
        "splits": {k: v for k, v in splits.items() if v},
        "labels": {(names[i] if i < len(names) else str(i)): int(c) for i, c in enumerate(labels) if c},
        "companions": list(store.spec.companions),
        "sources": [
            {k: s.get(k) for k in ("path", "status", "n_tiles", "size", "reader", "reader_version", "error")}
            for s in store.sources
        ],
    }


def _display_channels(store: TileStore) -> list[int]:
    """The channels shown: the spec's ``display_channels``, else R/G/B by name, else the first three (or one).

    A multispectral store names its true-colour bands in ``value_scaling["display_channels"]``.
    """
    names = [c["name"].lower() for c in store.spec.channels]
    wanted = [str(n).lower() for n in store.spec.value_scaling.get("display_channels", [])]
    if wanted and set(wanted) <= set(names):
        return [names.index(n) for n in wanted]
    if {"r", "g", "b"} <= set(names):
        return [names.index(c) for c in "rgb"]
    if {"red", "green", "blue"} <= set(names):
        return [names.index(c) for c in ("red", "green", "blue")]
    return [0] if len(names) < 3 else [0, 1, 2]


def contact_sheet(store: TileStore, out: Path, n: int = 64, seed: int = 0) -> Path:
    """A PNG grid of ``n`` sample tiles (seeded), each labelled with tile id and source row.

    Values are scaled per channel by the store's min and max, or, when the spec's ``value_scaling`` holds
    ``display_stretch`` (``[2, 98]``), by those percentiles of each channel over the sampled tiles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(n, len(store))
    ids = np.sort(np.random.default_rng(seed).choice(len(store), size=count, replace=False)) if count else []
    channels = _display_channels(store)
    stats = store.stats
    columns = max(1, int(np.ceil(np.sqrt(max(count, 1)))))
    rows = max(1, int(np.ceil(max(count, 1) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.75 * rows), squeeze=False)
    data = store.read(ids) if count else {"tiles": np.zeros((0,)), "source": []}
    for ax in axes.flat:
        ax.axis("off")
    stretch = store.spec.value_scaling.get("display_stretch")  # [low, high] percentiles over the sampled tiles
    if stretch and count:
        sample = np.asarray(data["tiles"])[:, channels].astype(np.float32)
        low_high = np.percentile(sample.transpose(1, 0, 2, 3).reshape(len(channels), -1), stretch, axis=1)
    for ax, tile_id, tile, source in zip(axes.flat, ids, data["tiles"], data["source"], strict=False):
        image = tile[channels].astype(np.float32)
        if stretch:
            lo, hi = low_high[0].astype(np.float32), low_high[1].astype(np.float32)
        else:
            lo = np.array([stats["min"][c] if stats.get("min") else image.min() for c in channels], np.float32)
            hi = np.array([stats["max"][c] if stats.get("max") else image.max() for c in channels], np.float32)
        image = np.clip((image - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
        ax.imshow(
            image.transpose(1, 2, 0) if len(channels) == 3 else image[0], cmap=None if len(channels) == 3 else "gray"
        )
        ax.set_title(f"#{tile_id} src {source}", fontsize=6)
    names = ", ".join(store.spec.channels[c]["name"] for c in channels)
    how = f", {stretch[0]}-{stretch[1]} % stretch" if stretch else ""
    fig.suptitle(f"{store.path.name}: {count} of {len(store)} tiles (channels {names}{how})", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
