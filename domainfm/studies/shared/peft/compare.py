"""``domainfm peft compare``: a method x label-fraction grid on one downstream task, measured alike.

Every run starts from the same frozen backbone weights, adapts it with one method, trains a linear head
with AdamW on a label fraction of the train split (stratified, seeded) through TileStream and Lightning,
and is evaluated on the val split: accuracy, macro AUROC and quadratic-weighted Kappa (torchmetrics),
trainable parameters and their fraction of the backbone, median training-step time, peak memory (CUDA
allocator, or process RSS on the CPU) and the size of the adapter-only file. Each adapter file is then
re-attached to a fresh copy of the frozen backbone and must reproduce the trained embeddings.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.backbones import create_backbone, save_backbone
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.memory import peak_memory_mb, reset_peak_memory
from domainfm.shared.peft.methods import apply_peft, count_parameters, load_adapter, save_adapter
from domainfm.shared.tasks.metrics import multiclass_macro_auroc
from domainfm.shared.tasks.subsets import label_fraction
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream, flip_rotate


def label_subset(store: TileStore, fraction: float, seed: int) -> np.ndarray:
    """Tile ids of a stratified ``fraction`` of the labelled train tiles (at least one tile per class)."""
    train = np.flatnonzero((store.index["split"] == SPLITS["train"]) & (store.index["label"] >= 0))
    return label_fraction(train, fraction, seed, labels=store.index["label"][train])


def _train(
    backbone: nn.Module, head: nn.Module, stream: TileStream, epochs: int, lr: float, device: torch.device
) -> list[float]:
    """Plain AdamW on the trainable parameters; returns per-step seconds."""
    import logging

    import lightning

    for name in ("lightning.pytorch", "lightning.fabric"):  # no banner per run of the grid
        logging.getLogger(name).setLevel(logging.WARNING)

    class Task(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head, self.step_times = backbone, head, []

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.head(self.backbone(batch["tiles"])), batch["label"].long())

        def on_train_batch_start(self, batch: Any, _: int) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, outputs: Any, batch: Any, _: int) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.step_times.append(time.perf_counter() - self._start)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)

    task = Task()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=stream)
    return task.step_times


@torch.no_grad()
def _evaluate(backbone: nn.Module, head: nn.Module, stream: TileStream, classes: int) -> dict[str, float]:
    import torchmetrics.functional as metrics

    backbone.eval()
    head.eval()
    logits, labels = [], []
    for batch in stream:
        logits.append(head(backbone(batch["tiles"])).float().cpu())
        labels.append(batch["label"].long().cpu())
    scores, target = torch.cat(logits), torch.cat(labels)
    return {
        "accuracy": float(metrics.accuracy(scores, target, task="multiclass", num_classes=classes)),
        "auroc": multiclass_macro_auroc(scores, target, classes),
        "kappa": float(
            metrics.cohen_kappa(scores.argmax(1), target, task="multiclass", num_classes=classes, weights="quadratic")
        ),
    }


def run_grid(
    store: TileStore,
    backbone_name: str,
    methods: list[str],
    fractions: list[float],
    out: Path,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: str,
    method_options: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Runs every method x fraction and returns the result rows (also saving the adapters)."""
    torch_device = resolve_device(device)
    classes = len(store.spec.label_names) or int(store.index["label"].max()) + 1
    torch.manual_seed(seed)
    base = save_backbone(create_backbone(backbone_name, img_size=store.spec.tile_shape[-1]), out / "base.safetensors")
    rows = []
    for method in methods:
        for fraction in fractions:
            torch.manual_seed(seed)
            backbone = apply_peft(
                create_backbone(backbone_name, img_size=store.spec.tile_shape[-1], checkpoint=base),
                method,
                **method_options.get(method, {}),
            )
            head = nn.Linear(backbone.embed_dim, classes)
            train_ids = label_subset(store, fraction, seed)
            train = TileStream(
                store, batch_size, indices=train_ids, seed=seed, device=torch_device, augment=flip_rotate
            )
            reset_peak_memory(torch_device)
            steps = _train(backbone, head, train, epochs, lr, torch_device)
            peak = peak_memory_mb(torch_device)
            backbone.to(torch_device)
            head.to(torch_device)
            labelled_val = np.flatnonzero((store.index["split"] == SPLITS["val"]) & (store.index["label"] >= 0))
            if not len(labelled_val):
                raise ValueError(f"{store.path} has no labelled tiles in its val split")
            val = TileStream(store, 64, indices=labelled_val, shuffle=False, device=torch_device)
            scores = _evaluate(backbone, head, val, classes)
            adapter = save_adapter(backbone.cpu(), out / "adapters" / f"{method}_{fraction:g}.safetensors")
            reattached = load_adapter(
                adapter, create_backbone(backbone_name, img_size=store.spec.tile_shape[-1], checkpoint=base)
            ).eval()
            probe = next(iter(TileStream(store, 16, indices=labelled_val, shuffle=False, device="cpu")))["tiles"]
            with torch.no_grad():
                reattach_diff = float((backbone.eval()(probe) - reattached(probe)).abs().max())
            counts = count_parameters(backbone)
            rows.append(
                {
                    "method": method,
                    "label_fraction": fraction,
                    "train_tiles": len(train_ids),
                    **scores,
                    "trainable": counts["trainable"],
                    "fraction_of_backbone": counts["fraction_of_backbone"],
                    "step_ms": 1e3 * statistics.median(steps[1:] or steps),
                    "peak_memory_mb": peak,
                    "adapter_kb": adapter.stat().st_size / 1024,
                    "reattach_max_abs_diff": reattach_diff,
                }
            )
            print(
                f"[peft compare] {method:12s} {fraction:>5g}: acc {scores['accuracy']:.3f} "
                f"kappa {scores['kappa']:.3f} trainable {counts['trainable']}",
                flush=True,
            )
    return rows


def write_results(rows: list[dict[str, Any]], out: Path, header: str) -> None:
    """``results.json`` and ``results.md`` (one table, methods x label fractions)."""
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    columns = [
        "method",
        "label_fraction",
        "train_tiles",
        "accuracy",
        "auroc",
        "kappa",
        "trainable",
        "fraction_of_backbone",
        "step_ms",
        "peak_memory_mb",
        "adapter_kb",
    ]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for column in columns:
            value = row[column]
            if column == "fraction_of_backbone":
                cells.append(f"{100 * value:.2f} %")
            elif isinstance(value, float):
                cells.append(f"{value:.3f}" if value < 10 else f"{value:.0f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
