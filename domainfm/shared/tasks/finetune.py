"""Fine-tuning an encoder (any PEFT state) and its head over a tile store, and predicting with it.

The loop every domain's supervised ``train`` command runs: a Lightning fit of ``loss(model(prepare(tiles)),
batch)`` with AdamW (weight decay 0.01 unless another optimizer is given) over a seeded ``TileStream`` of
the chosen train tiles, un-normalised (``prepare`` normalises as the encoder was trained), then the model's
outputs on other tiles in store order. Building the model (encoder, ``apply_peft``, head), choosing the
tiles, scoring and saving stay with the domain.

With ``resume_dir`` the fit is resumable: Lightning writes
``resume_dir/last.ckpt`` (weights, optimiser, epoch, callback states) after every epoch and a rerun continues
from it. :func:`~domainfm.shared.engine.training.fit` hands the trainer's epoch to the stream, so a resumed
run sees the batches an uninterrupted one would and, on a deterministic device, ends with the same weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.engine.training import OptimizerFactory, epoch_checkpoint, fit, make_trainer, step_task
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

Prepare = Callable[[torch.Tensor], torch.Tensor]


def finetune(
    model: nn.Module,
    store: TileStore,
    train: np.ndarray,
    loss: Callable[[torch.Tensor, dict], torch.Tensor],
    prepare: Prepare,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    progress: bool = False,
    companions: Sequence[str] = (),
    optimizer: OptimizerFactory | None = None,
    resume_dir: Path | None = None,
    callbacks: Sequence[Any] = (),
) -> nn.Module:
    """Trains ``model``'s trainable parameters on the ``train`` tiles; returns it in eval mode.

    Args:
        model: Encoder and head, already on ``device``.
        store: The tile store.
        train: Tile ids to train on.
        loss: ``loss(outputs, batch)``: the batch holds ``tiles``, ``tile_id`` and the ``companions``.
        prepare: Turns a batch's raw tiles into the model's input.
        epochs: Passes over ``train``.
        batch_size: Tiles per step.
        lr: Learning rate of the default optimizer.
        seed: Seed of the stream's shuffling.
        device: Where to train.
        progress: Show Lightning's progress bar.
        companions: Companion arrays the loss reads from the batch.
        optimizer: An optimizer factory for ``step_task``; default AdamW(``lr``, weight decay 0.01).
        resume_dir: Where ``last.ckpt`` is written after every epoch and resumed from (module docstring).
        callbacks: Extra Lightning callbacks (their ``state_dict`` is saved in ``last.ckpt``).

    Raises:
        DomainfmError: ``train`` is empty (nothing to learn from: a wrong split or a damaged index), so no
            untrained model is ever saved as if it had been trained.
    """
    if len(train) == 0:
        raise DomainfmError(
            f"{store.path}: no training tiles were selected (no labelled tiles in the train split); "
            f"if the store should have some, `domainfm tiles verify {store.path}` checks it"
        )

    def step(batch: dict) -> torch.Tensor:
        return loss(model(prepare(batch["tiles"])), batch)

    optimizers = optimizer or (lambda parameters: torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01))
    stream = TileStream(
        store, batch_size, indices=train, seed=seed, device=device, normalize=False, companions=tuple(companions)
    )
    extra: list[Any] = [*callbacks]  # fit tells the stream each epoch's number, also after a resume
    if resume_dir is not None:
        extra.append(epoch_checkpoint(Path(resume_dir)))
    last = Path(resume_dir) / "last.ckpt" if resume_dir is not None else None
    with warnings.catch_warnings():  # the resume folder may hold the caller's records beside last.ckpt
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        fit(make_trainer(epochs, device, progress, extra), step_task(step, model, optimizers), stream, last)
    return model.eval()


@torch.no_grad()
def predict(
    model: nn.Module,
    store: TileStore,
    ids: np.ndarray,
    prepare: Prepare,
    device: torch.device,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """``activation(model(prepare(tiles)))`` of the ``ids`` tiles (sorted ids: rows in their order), on the CPU."""
    model.eval()
    outputs = []
    for batch in TileStream(store, batch_size, indices=ids, shuffle=False, device=device, normalize=False):
        output = model(prepare(batch["tiles"]))
        outputs.append((activation(output) if activation else output).cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0)
