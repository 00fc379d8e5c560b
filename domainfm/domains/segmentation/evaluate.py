"""Predicting and scoring a segmenter on a split of a segmentation tile store, and a QC figure.

Scores follow GMS's protocol (arXiv 2403.18198, section "Experiments"): per-image Dice and IoU after a
0.5 threshold at the store's resolution, mean and standard deviation over images; HD95 is added, and the
empty-mask conventions are those of :mod:`.metrics`. Cross-domain evaluation is the same call with a store
from another site. ``native=True`` also scores what the deployed model gives a user: each probability
map resized back to its image's own size by the model contract (:func:`~domainfm.shared.model.map_to_input`,
exactly as ``predict`` and the bundle return it) against the original full-size mask file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.segmentation.metrics import dice_iou, hd95, summarise
from domainfm.domains.segmentation.models import to_model_range
from domainfm.shared.engine import resolve_device
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

THRESHOLD = 0.5


def split_ids(store: TileStore, split: str | None) -> np.ndarray:
    """Tile ids of ``split`` (all tiles for ``None``/``all``), refusing an empty selection by name."""
    if split in (None, "all"):
        return np.arange(len(store))
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {[*SPLITS, 'all']}")
    ids = np.flatnonzero(store.index["split"] == SPLITS[split])
    if not len(ids):
        raise ValueError(f"{store.path} has no tiles in its {split} split; evaluate with --split all")
    return ids


@torch.no_grad()
def predict(
    model: nn.Module, store: TileStore, ids: np.ndarray, batch_size: int = 16, device: str | torch.device = "auto"
) -> dict[str, torch.Tensor]:
    """Probabilities, masks and tiles of ``ids`` in store order (CPU tensors)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    model = model.to(device).eval()
    stream = TileStream(
        store, batch_size, indices=ids, shuffle=False, device=device, normalize=False, companions=("mask",)
    )
    parts: dict[str, list[torch.Tensor]] = {"probability": [], "mask": [], "tiles": [], "tile_id": []}
    for batch in stream:
        parts["probability"].append(model(to_model_range(batch["tiles"])).float().cpu())
        parts["mask"].append(batch["mask"].bool().cpu())
        parts["tiles"].append(batch["tiles"].cpu())
        parts["tile_id"].append(batch["tile_id"].cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def score(probability: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image Dice, IoU and HD95 of thresholded probabilities."""
    prediction = probability > THRESHOLD
    dice, iou = dice_iou(prediction, mask)
    return {"dice": dice, "iou": iou, "hd95": hd95(prediction, mask)}


def native_scores(store: TileStore, predictions: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Dice, IoU and HD95 at each image's own size against its full-size mask file (see the module docstring).

    Returns ``{"native": summary}``, or ``{"native": None, "native_missing": reason}`` when the store does
    not record the mask files (stores ingested before they did) or one of them is gone.
    """
    from domainfm.domains.segmentation.data import image_transform, read_mask
    from domainfm.shared.model import map_to_input

    transform = image_transform(int(store.spec.tile_shape[-1]))
    sources, rows = store.sources, store.index["source"]
    values: dict[str, list[torch.Tensor]] = {"dice": [], "iou": [], "hd95": []}
    for probability, tile_id in zip(predictions["probability"], predictions["tile_id"].tolist(), strict=True):
        source = sources[int(rows[tile_id])]
        recorded = source.get("meta", {})
        mask_path = recorded.get("mask")
        if not mask_path or not Path(mask_path).is_file():
            return {"native": None, "native_missing": f"mask file of {source.get('path')} not recorded or gone"}
        mask = torch.from_numpy(
            read_mask(Path(mask_path), recorded.get("foreground"), recorded.get("mask_threshold", 0))
        )[None, None]
        native = map_to_input(probability[None].float(), tuple(mask.shape[-2:]), transform)
        for name, value in score(native, mask).items():
            values[name].append(value)
    return {"native": summarise({k: torch.cat(v) for k, v in values.items()})}


def evaluate(
    model: nn.Module,
    store: TileStore,
    split: str | None = "test",
    batch_size: int = 16,
    device: str = "auto",
    native: bool = False,
) -> dict[str, Any]:
    """Summary metrics of ``model`` on ``split`` of ``store`` (Dice, IoU, HD95: mean and std; images).

    ``native``: also score at each image's own size (``result["native"]``, see :func:`native_scores`).
    """
    predictions = predict(model, store, split_ids(store, split), batch_size, device)
    summary = summarise(score(predictions["probability"], predictions["mask"]))
    result = {"store": str(store.path), "split": split or "all", "images": len(predictions["mask"]), **summary}
    if native:
        result.update(native_scores(store, predictions))
    return result


def qc_figure(predictions: dict[str, torch.Tensor], path: Path, title: str, n: int = 8) -> Path:
    """Image, ground truth (green) and prediction (magenta) outlines for the first ``n`` images, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(predictions["mask"]))
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    scores = score(predictions["probability"][:n], predictions["mask"][:n])
    for i in range(n):
        image = predictions["tiles"][i].permute(1, 2, 0).numpy()
        truth, prob = predictions["mask"][i, 0].numpy(), predictions["probability"][i, 0].numpy()
        axes[0, i].imshow(image)
        axes[0, i].contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
        axes[0, i].contour(prob, levels=[THRESHOLD], colors="magenta", linewidths=0.8)
        axes[0, i].set_title(f"Dice {float(scores['dice'][i]):.2f}", fontsize=7)
        axes[1, i].imshow(prob, vmin=0, vmax=1, cmap="magma")
        for ax in axes[:, i]:
            ax.set_axis_off()
    axes[1, 0].set_title("probability", fontsize=7)
    fig.suptitle(title + "  (green: ground truth, magenta: prediction)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
