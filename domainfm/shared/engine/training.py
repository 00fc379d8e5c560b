"""Lightning plumbing shared by every domain's training.

A quiet trainer, a task around a step function, and resumable fitting.

Domains write a ``step(batch) -> loss`` closure over their model and pick an optimiser; these helpers run
it under ``lightning.Trainer``, record the loss of every step, and resume from a ``last.ckpt`` loaded with
``weights_only=True``. :func:`make_trainer` runs on one device by default and takes Lightning's
``strategy``, ``devices`` and ``num_nodes`` for data-parallel runs: DDP (Li et al., VLDB 2020, arXiv
2006.15704) in processes started by Lightning itself, torchrun or SLURM, and FSDP (Zhao et al., VLDB 2023,
arXiv 2304.11277) through :func:`fsdp_strategy`; ``docs/distributed.md`` shows the launches. Objectives
that couple samples use :mod:`.distributed` so that a step over N processes equals one process on the
global batch.
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


# strategies that start their processes by pickling (spawn) or forking the trainer: the tasks and streams
# here hold closures and threads, and the results of the run would stay in the children
_STARTS_BY_SPAWN = ("spawn", "fork", "notebook")


def make_trainer(
    epochs: int,
    device: torch.device,
    progress: bool = True,
    callbacks: list | None = None,
    *,
    devices: int | str | list[int] = 1,
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
) -> Any:
    """A ``lightning.Trainer`` without loggers or banners; checkpointing only if a ModelCheckpoint is given.

    Args:
        epochs: Training epochs.
        device: The accelerator kind (and, for one CUDA device, which one); see :func:`trainer_device`.
        progress: Show Lightning's progress bar.
        callbacks: Lightning callbacks.
        devices: Devices (processes) per node: a count, ``-1`` or ``"auto"`` for all, or a list of ids.
        strategy: Lightning strategy: ``auto`` (one device, else DDP), ``ddp``, ``fsdp`` or a strategy
            object (:func:`fsdp_strategy`). Strategies that start processes by spawn or fork are refused.
        num_nodes: Machines (Lightning reads the rank of each from torchrun or SLURM).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ...); Lightning's default when ``None``.
    """
    import lightning

    from domainfm.shared.errors import DomainfmError

    if isinstance(strategy, str) and any(word in strategy for word in _STARTS_BY_SPAWN):
        raise DomainfmError(
            f"strategy {strategy!r} is not supported: use 'ddp' (Lightning starts the other processes by rerunning "
            "the command), or launch the processes with torchrun or SLURM (docs/distributed.md)"
        )
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    callbacks = callbacks or []
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    if device.type == "cuda" and device.index is not None and devices == 1 and num_nodes == 1:
        devices = [device.index]  # the CUDA device asked for, not Lightning's first
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        sync_batchnorm=accelerator == "gpu",  # BatchNorm over the global batch under DDP (no-op on one device)
        logger=False,
        enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        callbacks=callbacks,
        enable_progress_bar=progress,
        enable_model_summary=False,
        **({"precision": precision} if precision is not None else {}),
    )


def resumable_trainer(
    out: Path, epochs: int, device: torch.device, progress: bool = True, callbacks: list | None = None, **options: Any
) -> tuple[Any, Path]:
    """:func:`make_trainer` that saves ``OUT/resume/last.ckpt`` after every epoch, and that folder.

    Pass ``folder / "last.ckpt"`` to :func:`fit` so that a rerun of the same command resumes; delete the folder
    once the run's outputs are written. ``options`` go to :func:`make_trainer` (devices, strategy, ...).
    """
    resume = Path(out) / "resume"
    return make_trainer(epochs, device, progress, [epoch_checkpoint(resume), *(callbacks or [])], **options), resume


def epoch_checkpoint(folder: Path) -> Any:
    """A ``ModelCheckpoint`` that writes ``folder/last.ckpt`` at the end of every epoch, replacing the last one.

    ``save_top_k=0, save_last=True`` looks like this but, in Lightning 2.6, writes ``last.ckpt`` only when
    training ends (``save_last`` follows a top-k save, and there is none), so a run killed in its third epoch
    started again from the first. Here the one top-k checkpoint *is* ``last.ckpt`` (no monitor: the newest
    is kept; no version counter: it is replaced, not joined by ``last-v1.ckpt``).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=folder, filename="last", save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )


def trainer_device(trainer: Any) -> torch.device:
    """The device this process trains on (under DDP each process has its own, e.g. ``cuda:LOCAL_RANK``)."""
    return trainer.strategy.root_device


def data_parallel_only(strategy: str | Any, command: str) -> None:
    """Refuses sharded strategies (FSDP, DeepSpeed) for objectives written for replicated models.

    Args:
        strategy: The strategy asked for.
        command: The command's name, for the message.
    """
    from domainfm.shared.errors import DomainfmError

    name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
    if "fsdp" in name or "deepspeed" in name:
        raise DomainfmError(
            f"{command} runs with one device or DDP (--strategy ddp); sharded strategies ({strategy}) are set up "
            "only for SimMIM pretraining of the giant SwinV2, whose command docs/distributed.md names"
        )


def fsdp_strategy(
    blocks: set[type[nn.Module]],
    activation_checkpointing: bool = True,
    sharding_strategy: str = "FULL_SHARD",
    cpu_offload: bool = False,
    state_dict_type: str = "full",
) -> Any:
    """Lightning's ``FSDPStrategy`` wrapping (and optionally checkpointing) each of the ``blocks`` types.

    Args:
        blocks: Module classes that become one FSDP unit each (a transformer's blocks).
        activation_checkpointing: Recompute each block's activations in the backward pass.
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``HYBRID_SHARD`` (full
            sharding within a node, replicas across nodes) or ``NO_SHARD``.
        cpu_offload: Keep the sharded parameters and gradients in host memory.
        state_dict_type: ``full`` (one file, gathered on rank zero) or ``sharded`` (a folder, a file per
            process) for the resume checkpoints.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy=set(blocks),
        activation_checkpointing_policy=set(blocks) if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,
    )


def trained_state(trainer: Any, task: Any) -> dict[str, torch.Tensor]:
    """The trained module's full state dict (every process must call this after ``fit``).

    Under FSDP the shards are gathered onto global rank zero (host memory), and other ranks get an empty
    dict; otherwise it is the module's own state dict.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return task.module.state_dict()
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    wrapped = trainer.strategy.model
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, config):
        state = wrapped.state_dict()
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}


def step_task(step: Step, module: nn.Module, optimizers: OptimizerFactory) -> Any:
    """A LightningModule that trains ``module``'s trainable parameters with ``step`` and ``optimizers``.

    ``optimizers(parameters)`` returns what ``configure_optimizers`` may return (an optimiser, or a dict
    with an ``lr_scheduler``). The task keeps every step's loss in ``task.losses`` (this process's). Under
    several processes, each reseeds torch's global generator with ``seed + rank`` when training starts, so
    dropout and stochastic depth differ between processes; data augmentation should use
    :func:`~domainfm.shared.engine.distributed.tile_generators`.
    """
    import lightning

    for parameter in module.parameters():  # FSDP shows sharded parameters flat: keep the true rank for decay
        parameter._domainfm_ndim = parameter.ndim  # type: ignore[attr-defined]

    class Task(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.module = module
            self.losses: list[float] = []

        def on_train_start(self) -> None:
            if self.trainer.world_size > 1:  # dropout and stochastic depth differ between processes
                torch.manual_seed(torch.initial_seed() + self.global_rank)

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            loss = step(batch)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self) -> Any:
            return optimizers([p for p in module.parameters() if p.requires_grad])

    return Task()


def fit(trainer: Any, task: Any, stream: Any, resume_from: Path | None = None) -> None:
    """``trainer.fit`` on ``stream``, resuming from ``resume_from`` when it exists (safe loading).

    A stream with ``set_epoch`` (a :class:`~domainfm.shared.tiles.stream.TileStream`) is handed to Lightning
    through :class:`EpochStream`, so each epoch reads the order of the trainer's epoch, also after a resume
    (a resumed run sees the batches an uninterrupted one would).
    """
    if hasattr(stream, "set_epoch"):
        stream = EpochStream(stream, trainer)
    ckpt = resume_from if resume_from is not None and Path(resume_from).exists() else None  # FSDP: a folder
    with warnings.catch_warnings():  # Lightning warns about modules kept in eval mode: frozen parts, on purpose
        warnings.filterwarnings("ignore", message=".*in eval mode at the start of training.*")
        trainer.fit(task, train_dataloaders=stream, ckpt_path=ckpt, weights_only=True)


class EpochStream:
    """A stream as Lightning iterates it: each iteration reads the shuffle order of the trainer's epoch.

    A TileStream left to itself advances its epoch once per ``iter()``, and Lightning calls ``iter()`` once
    more than it trains (it checks that the loader is iterable before the first epoch), so an uninterrupted
    run's epoch ``k`` has always read order ``k + 2``; a resumed run would have started again from order 1.
    Here iteration asks the trainer's loop which epoch is about to run: epoch ``k`` reads order
    ``k + ORDER_OFFSET`` (the orders runs have always read, so results made before stay reproducible) whether
    or not the run was resumed.
    """

    ORDER_OFFSET = 2

    def __init__(self, stream: Any, trainer: Any) -> None:
        self.stream, self.trainer = stream, trainer

    def __iter__(self) -> Any:
        # the epoch about to run, as Lightning counts it when it sets a DistributedSampler's epoch: right also
        # while a resumed run first iterates, when ``trainer.current_epoch`` still reads 0
        epoch = self.trainer.fit_loop.epoch_progress.current.processed
        self.stream.set_epoch(epoch + self.ORDER_OFFSET)
        return iter(self.stream)

    def __len__(self) -> int:
        return len(self.stream)
