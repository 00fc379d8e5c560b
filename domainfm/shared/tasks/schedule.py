"""AdamW with linear warm-up then cosine decay, stepped per epoch (the pretraining and segmentation recipe)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def warmup_cosine(epochs: int, warmup: int) -> Callable[[int], float]:
    """Learning-rate factor per epoch: linear warm-up over ``warmup`` epochs, then cosine to zero at ``epochs``."""

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warmup) / max(1, epochs - warmup))))

    return factor


def _ndim(parameter: nn.Parameter) -> int:
    """A parameter's number of dimensions before any FSDP sharding (recorded by ``step_task``)."""
    return getattr(parameter, "_domainfm_ndim", parameter.ndim)


def adamw_warmup_cosine(
    lr: float, weight_decay: float, epochs: int, warmup: int, decay_vectors: bool = False
) -> Callable[[list[nn.Parameter]], dict]:
    """AdamW (0.9, 0.999), linear warm-up then cosine decay per epoch, as Lightning's optimizer config.

    Weight decay applies to matrices only (biases and norms excluded: the SimMIM/SatVision and DINO/PLUTO
    recipe), or to every parameter with ``decay_vectors`` (plain ``AdamW``). ``warmup`` is capped below
    ``epochs``.
    """
    warmup = min(warmup, max(0, epochs - 1))

    def optimizers(parameters: list[nn.Parameter]) -> dict:
        if decay_vectors:
            groups: list[dict] = [{"params": parameters, "weight_decay": weight_decay}]
        else:
            decay = [p for p in parameters if _ndim(p) > 1]
            rest = [p for p in parameters if _ndim(p) <= 1]
            groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(epochs, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    return optimizers
