"""Lightning plumbing shared by every domain's training.

A quiet trainer, a task around a step function, and resumable fitting.

Domains write a ``step(batch) -> loss`` closure over their model and pick an optimiser; these helpers run
it under ``lightning.Trainer`` (single device here; DDP/FSDP strategies arrive with the deployment issue),
record the loss of every step, and resume from a ``last.ckpt`` loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

Step = Callable[[dict], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], Any]


def make_trainer(epochs: int, device: torch.device, progress: bool = True, callbacks: list | None = None) -> Any:
    """A ``lightning.Trainer`` without loggers or banners; checkpointing only if a ModelCheckpoint is given."""
    import lightning

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    callbacks = callbacks or []
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )


def step_task(step: Step, module: nn.Module, optimizers: OptimizerFactory) -> Any:
    """A LightningModule that trains ``module``'s trainable parameters with ``step`` and ``optimizers``.

    ``optimizers(parameters)`` returns what ``configure_optimizers`` may return (an optimiser, or a dict
    with an ``lr_scheduler``). The task keeps every step's loss in ``task.losses``.
    """
    import lightning

    class Task(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.module = module
            self.losses: list[float] = []

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            loss = step(batch)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> Any:
            return optimizers([p for p in module.parameters() if p.requires_grad])

    return Task()


def fit(trainer: Any, task: Any, stream: Any, resume_from: Path | None = None) -> None:
    """``trainer.fit`` on ``stream``, resuming from ``resume_from`` when it exists (safe loading)."""
    ckpt = resume_from if resume_from is not None and Path(resume_from).is_file() else None
    with warnings.catch_warnings():  # Lightning warns about modules kept in eval mode: frozen parts, on purpose
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")
        trainer.fit(task, train_dataloaders=stream, ckpt_path=ckpt, weights_only=True)


def adamw_warmup_cosine(lr: float, weight_decay: float, epochs: int, warmup: int) -> OptimizerFactory:
    """AdamW (0.9, 0.999) with weight decay on matrices only, linear warm-up then cosine decay, per epoch.

    The recipe of SimMIM/SatVision and DINO/PLUTO pretraining; ``warmup`` is capped below ``epochs``.
    """
    import math

    warmup = min(warmup, max(0, epochs - 1))

    def optimizers(parameters: list[nn.Parameter]) -> dict:
        decay = [p for p in parameters if p.ndim > 1]
        rest = [p for p in parameters if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))

        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(1, epochs - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    return optimizers
