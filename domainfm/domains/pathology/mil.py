"""Slide-level multiple-instance learning on tile embeddings: gated-attention ABMIL and attention heat-maps.

Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning", ICML 2018 (arXiv 1802.04712),
gated variant (their eq. 9): ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``, the bag embedding is
``z = sum_k a_k h_k`` and a linear classifier maps ``z`` to slide logits. As in kaiko's eva
(``src/eva/vision/models/networks/abmil.py``) the tile embeddings are first projected to 128 dimensions, which
keeps attention scores from concentrating when the foundation model's width is large. Training follows eva's
slide protocol (``shared/methods/pluto.md`` section 2): frozen tile embeddings, AdamW, cross-entropy, one bag
per step; evaluation reports accuracy, balanced accuracy and AUROC.

The heat-map colours each tile's footprint on the slide thumbnail by its (min-max scaled) attention, the
usual ABMIL/CLAM visualisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORMAP = "inferno"
ALPHA = 0.5
FIGURE_LONG_SIDE_PX = 800
DPI = 100


class GatedABMIL(nn.Module):
    """Gated-attention MIL pooling with a linear slide classifier.

    Args:
        in_dim: Width of the tile embeddings.
        n_classes: Number of slide classes (2 for a binary task; logits are always ``n_classes`` wide).
        hidden: Width of the input projection (``Linear + ReLU + Dropout``) and of the pooled bag embedding.
        attention_dim: Width of the gated attention branches ``V`` (tanh) and ``U`` (sigmoid).
        dropout: Dropout after the input projection.
    """

    def __init__(
        self, in_dim: int, n_classes: int, hidden: int = 128, attention_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        self.in_dim, self.n_classes = in_dim, n_classes
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden, n_classes)
        self.history: list[float] = []

    def attention_scores(self, h: torch.Tensor) -> torch.Tensor:
        """Unnormalised gated attention ``w^T (tanh(V h) * sigmoid(U h))`` of projected tiles ``[..., hidden]``."""
        gated = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        return self.attention_w(gated).squeeze(-1)

    def forward(self, bag: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Slide logits and attention weights of one bag or a padded batch of bags.

        Args:
            bag: ``[N, D]`` tile embeddings of one slide, or ``[B, N, D]`` padded bags.
            mask: ``[B, N]`` (or ``[N]``) booleans, ``True`` for real tiles; ``None`` means all tiles are real.

        Returns:
            ``(logits, attention)``: ``[n_classes]`` and ``[N]`` for one bag, ``[B, n_classes]`` and ``[B, N]``
            for a batch. Attention sums to 1 over each bag's real tiles and is exactly 0 on padded positions.
        """
        single = bag.dim() == 2
        bags, real = _batched(bag, mask, self.in_dim)
        h = self.project(bags.to(self.classifier.weight.dtype))
        h = h.masked_fill(~real[..., None], 0.0)
        scores = self.attention_scores(h).masked_fill(~real, float("-inf"))
        attention = torch.softmax(scores, dim=1)
        logits = self.classifier(torch.bmm(attention.unsqueeze(1), h).squeeze(1))
        return (logits[0], attention[0]) if single else (logits, attention)


def _batched(bag: torch.Tensor, mask: torch.Tensor | None, in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``bag`` as ``[B, N, D]`` with a ``[B, N]`` boolean mask, after checking shapes and empty bags."""
    if bag.dim() not in (2, 3) or bag.shape[-1] != in_dim:
        raise ValueError(f"bag must be [N, {in_dim}] or [B, N, {in_dim}], got {tuple(bag.shape)}")
    bags = bag.unsqueeze(0) if bag.dim() == 2 else bag
    if mask is None:
        real = torch.ones(bags.shape[:2], dtype=torch.bool, device=bags.device)
    else:
        real = mask.to(device=bags.device, dtype=torch.bool)
        real = real.unsqueeze(0) if real.dim() == 1 else real
        if real.shape != bags.shape[:2]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match bag {tuple(bag.shape)}")
    if not bool(real.any(dim=1).all()):
        raise ValueError("every bag needs at least one real tile (empty bag or all-padding mask)")
    return bags, real


@dataclass
class MILResult:
    """A trained slide classifier, its training curve and its scores on the evaluation bags.

    Attributes:
        model: The trained :class:`GatedABMIL` (eval mode).
        history: Mean training loss per epoch.
        metrics: ``accuracy``, ``balanced_accuracy``, ``auroc`` and ``n_slides`` on the evaluation bags.
    """

    model: GatedABMIL
    history: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def _check_bags(bags: list[torch.Tensor], labels: list[int], n_classes: int | None = None) -> None:
    """Refuses mismatched lengths, non-2-D or empty bags, differing widths and out-of-range labels."""
    if not bags or len(bags) != len(labels):
        raise ValueError(f"need as many labels as bags (>0), got {len(bags)} bags and {len(labels)} labels")
    widths = {b.shape[-1] for b in bags}
    if any(b.dim() != 2 or b.shape[0] == 0 for b in bags) or len(widths) != 1:
        raise ValueError("every bag must be a non-empty [N, D] tensor with the same D")
    if n_classes is not None and not all(0 <= int(y) < n_classes for y in labels):
        raise ValueError(f"labels must lie in [0, {n_classes}), got {sorted(set(labels))}")


def _subsample(bag: torch.Tensor, max_tiles: int | None, generator: torch.Generator) -> torch.Tensor:
    """At most ``max_tiles`` tiles of ``bag``, drawn without replacement (the whole bag when it fits)."""
    if max_tiles is None or bag.shape[0] <= max_tiles:
        return bag
    keep = torch.randperm(bag.shape[0], generator=generator)[:max_tiles]
    return bag[keep.to(bag.device)]


def _train_epoch(
    model: GatedABMIL,
    optimizer: torch.optim.Optimizer,
    bags: list[torch.Tensor],
    labels: list[int],
    max_tiles: int | None,
    generator: torch.Generator,
) -> float:
    """One pass over the bags in a seeded random order, one bag per step; returns the mean loss."""
    device = model.classifier.weight.device
    total = 0.0
    for i in torch.randperm(len(bags), generator=generator).tolist():
        bag = _subsample(bags[i], max_tiles, generator).to(device)
        logits, _ = model(bag)
        loss = F.cross_entropy(logits.unsqueeze(0), torch.tensor([int(labels[i])], device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / len(bags)


def train_mil(
    bags: list[torch.Tensor],
    labels: list[int],
    n_classes: int,
    epochs: int = 50,
    lr: float = 2e-4,
    weight_decay: float = 1e-4,
    seed: int = 0,
    hidden: int = 128,
    max_tiles: int | None = None,
    progress: bool = False,
) -> GatedABMIL:
    """Trains a :class:`GatedABMIL` on slide bags (eva protocol: AdamW, cross-entropy, one bag per step).

    Initialisation, the per-epoch shuffle, tile subsampling and dropout all derive from ``seed``, so a seed
    gives the same model on the same device; the caller's global RNG state is left untouched. The model is
    trained on the device of ``bags[0]``.

    Args:
        bags: Tile embeddings per slide, each ``[N_i, D]``.
        labels: Slide labels in ``[0, n_classes)``.
        n_classes: Number of classes.
        epochs: Passes over the bags.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: Seed of everything random in training.
        hidden: Width of the input projection and pooled bag embedding.
        max_tiles: If set, each step uses a random subset of at most this many tiles of the bag.
        progress: Show a progress bar with the running loss.

    Returns:
        The trained model in eval mode; its per-epoch mean training losses are in ``model.history``.
    """
    _check_bags(bags, labels, n_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GatedABMIL(bags[0].shape[1], n_classes, hidden=hidden).to(bags[0].device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        model.train()
        history = _run_epochs(model, optimizer, bags, labels, epochs, max_tiles, generator, progress)
    model.history = history
    return model.eval()


def _run_epochs(
    model: GatedABMIL,
    optimizer: torch.optim.Optimizer,
    bags: list[torch.Tensor],
    labels: list[int],
    epochs: int,
    max_tiles: int | None,
    generator: torch.Generator,
    progress: bool,
) -> list[float]:
    """Runs ``epochs`` training epochs, optionally under a rich progress bar; returns the loss per epoch."""
    from rich.progress import Progress

    history: list[float] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("ABMIL", total=epochs)
        for _ in range(epochs):
            history.append(_train_epoch(model, optimizer, bags, labels, max_tiles, generator))
            bar.update(task, advance=1, description=f"ABMIL loss {history[-1]:.4f}")
    return history


@torch.no_grad()
def predict_mil(model: GatedABMIL, bags: list[torch.Tensor]) -> torch.Tensor:
    """Class probabilities ``[n_slides, n_classes]`` (CPU, float32) of each bag, in eval mode."""
    model.eval()
    device = model.classifier.weight.device
    return torch.stack([torch.softmax(model(bag.to(device))[0].float(), dim=-1).cpu() for bag in bags])


def evaluate_mil(model: GatedABMIL, bags: list[torch.Tensor], labels: list[int]) -> dict[str, float]:
    """Slide-level scores of ``model`` on labelled bags.

    Args:
        model: A trained :class:`GatedABMIL`.
        bags: Tile embeddings per slide, each ``[N_i, D]``.
        labels: True slide labels.

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean per-class recall over classes seen in labels or predictions),
        ``auroc`` (binary, or macro one-vs-rest over the classes present; NaN if only one class is present)
        and ``n_slides``.
    """
    from torchmetrics.functional.classification import multiclass_accuracy

    from domainfm.shared.tasks.metrics import multiclass_macro_auroc

    _check_bags(bags, labels, model.n_classes)
    probs = predict_mil(model, bags)
    target = torch.tensor([int(y) for y in labels])
    preds = probs.argmax(dim=1)
    n = model.n_classes
    return {
        "accuracy": float(multiclass_accuracy(preds, target, num_classes=n, average="micro")),
        "balanced_accuracy": float(multiclass_accuracy(preds, target, num_classes=n, average="macro")),
        "auroc": multiclass_macro_auroc(probs, target, n),
        "n_slides": float(len(bags)),
    }


def fit_mil(
    train_bags: list[torch.Tensor],
    train_labels: list[int],
    eval_bags: list[torch.Tensor],
    eval_labels: list[int],
    n_classes: int,
    **train_kwargs: Any,
) -> MILResult:
    """Trains on one set of bags and scores on another (``train_kwargs`` go to :func:`train_mil`)."""
    model = train_mil(train_bags, train_labels, n_classes, **train_kwargs)
    return MILResult(model, list(model.history), evaluate_mil(model, eval_bags, eval_labels))


def _rgb(thumbnail: np.ndarray) -> np.ndarray:
    """The thumbnail as ``H x W x 3`` uint8 (grey is repeated, an alpha channel dropped)."""
    image = np.asarray(thumbnail)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"thumbnail must be an H x W x 3 uint8 array, got {image.shape} {image.dtype}")
    return image[..., :3]


def _footprints(coords: np.ndarray, tile_level0: float, thumb_downsample: float, shape: tuple[int, int]) -> np.ndarray:
    """Thumbnail pixel boxes ``[N, 4]`` (x0, y0, x1, y1; end-exclusive, at least one pixel, clipped) of tiles."""
    xy = np.asarray(coords, dtype=np.float64).reshape(-1, 2) / thumb_downsample
    start = np.round(xy).astype(np.int64)
    end = np.maximum(np.round(xy + tile_level0 / thumb_downsample).astype(np.int64), start + 1)
    height, width = shape
    limits = np.array([width, height, width, height])
    return np.clip(np.concatenate([start, end], axis=1), 0, limits)


def _scaled(attention: np.ndarray) -> np.ndarray:
    """Min-max scaling of the finite attention values to [0, 1] (0.5 when all are equal; NaN stays NaN)."""
    values = np.asarray(attention, dtype=np.float64).ravel()
    finite = np.isfinite(values)
    if not finite.any():
        return np.full_like(values, np.nan)
    low, high = values[finite].min(), values[finite].max()
    scaled = (values - low) / (high - low) if high > low else np.full_like(values, 0.5)
    return np.where(finite, scaled, np.nan)


def _box_average(boxes: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean of ``values`` over the boxes covering it and the coverage mask (summed-area tables)."""
    height, width = shape
    total = np.zeros((height + 1, width + 1))
    count = np.zeros((height + 1, width + 1))
    x0, y0, x1, y1 = boxes.T
    for grid, weight in ((total, values), (count, np.ones_like(values))):
        np.add.at(grid, (y0, x0), weight)
        np.add.at(grid, (y0, x1), -weight)
        np.add.at(grid, (y1, x0), -weight)
        np.add.at(grid, (y1, x1), weight)
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = np.rint(count.cumsum(0).cumsum(1)[:height, :width])
    covered = count > 0
    return np.where(covered, total / np.maximum(count, 1), 0.0), covered


def attention_overlay(
    thumbnail: np.ndarray, coords: np.ndarray, tile_level0: float, thumb_downsample: float, attention: np.ndarray
) -> np.ndarray:
    """The thumbnail with each tile's footprint blended with its attention colour.

    A tile at level-0 top-left ``(x, y)`` covers thumbnail pixels ``round(x / d) .. round((x + s) / d)``
    (end-exclusive, at least one pixel) with ``d = thumb_downsample`` and ``s = tile_level0``, likewise in y.
    Attention is min-max scaled over the finite values, overlapping footprints are averaged, and the
    ``inferno`` colour is blended with alpha 0.5: ``round(0.5 * thumbnail + 0.5 * colour)``. Pixels outside
    every footprint, and tiles whose attention is NaN, keep the thumbnail's values exactly.

    Args:
        thumbnail: ``H x W x 3`` uint8 slide thumbnail.
        coords: ``[N, 2]`` level-0 top-left tile coordinates ``(x, y)``.
        tile_level0: Side of a tile in level-0 pixels.
        thumb_downsample: Level-0 pixels per thumbnail pixel.
        attention: ``[N]`` attention per tile (NaN: no attention, left uncoloured).

    Returns:
        The blended ``H x W x 3`` uint8 image.
    """
    import matplotlib

    image = _rgb(thumbnail)
    scaled = _scaled(attention)
    coords = np.asarray(coords).reshape(-1, 2)
    if len(scaled) != len(coords):
        raise ValueError(f"{len(coords)} tile coordinates but {len(scaled)} attention values")
    keep = np.isfinite(scaled)
    boxes = _footprints(coords[keep], tile_level0, thumb_downsample, image.shape[:2])
    mean, covered = _box_average(boxes, scaled[keep], image.shape[:2])
    colour = matplotlib.colormaps[COLORMAP](mean)[..., :3] * 255.0
    blended = np.rint((1 - ALPHA) * image + ALPHA * colour).clip(0, 255).astype(np.uint8)
    return np.where(covered[..., None], blended, image)


def _figure(overlay: np.ndarray, attention: np.ndarray, title: str) -> Figure:
    """Agg figure of the overlay at a fixed layout: image left, colour bar right, title above."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    height, width = overlay.shape[:2]
    scale = FIGURE_LONG_SIDE_PX / max(height, width) / DPI
    img_w, img_h, left, right, top, bottom = width * scale, height * scale, 0.1, 1.1, 0.5, 0.1
    fig_w, fig_h = img_w + left + right, img_h + top + bottom
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, img_w / fig_w, img_h / fig_h))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    finite = np.asarray(attention, dtype=np.float64)[np.isfinite(attention)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cax = fig.add_axes(((left + img_w + 0.15) / fig_w, bottom / fig_h, 0.2 / fig_w, img_h / fig_h))
    mappable = ScalarMappable(norm=Normalize(low, high if high > low else low + 1e-12), cmap=colormaps[COLORMAP])
    fig.colorbar(mappable, cax=cax, label="attention")
    return fig


def attention_heatmap(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    tile_level0: float,
    thumb_downsample: float,
    attention: np.ndarray,
    out: Path,
    title: str = "",
) -> Path:
    """Writes a PNG of the slide thumbnail coloured by tile attention, with a colour bar and a title.

    The image part is :func:`attention_overlay` drawn with nearest-neighbour resampling, its long side
    800 px; the colour bar spans the raw attention range. The file is written atomically (temporary file,
    then ``os.replace``), with the Agg backend and no global pyplot state.

    Args:
        thumbnail: ``H x W x 3`` uint8 slide thumbnail.
        coords: ``[N, 2]`` level-0 top-left tile coordinates ``(x, y)``.
        tile_level0: Side of a tile in level-0 pixels.
        thumb_downsample: Level-0 pixels per thumbnail pixel.
        attention: ``[N]`` attention per tile (NaN: no attention).
        out: Destination PNG path (parents are created).
        title: Figure title.

    Returns:
        ``out``.
    """
    out = Path(out)
    attention = np.asarray(attention, dtype=np.float64).ravel()
    fig = _figure(attention_overlay(thumbnail, coords, tile_level0, thumb_downsample, attention), attention, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
