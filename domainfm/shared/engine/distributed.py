"""Helpers that keep an objective exact under data parallelism (Lightning DDP over N processes).

Under DDP every process computes its loss on its own part of the global batch and the gradients are
averaged over the processes (Li et al., "PyTorch Distributed", VLDB 2020, arXiv 2006.15704). A loss that is
a mean of per-sample terms over equal parts then gives the single-process gradient of the global batch as
is. A loss that couples samples does not, and uses one of these:

* :func:`gather_with_grad`: the rows of every process, concatenated, for a contrastive loss whose negatives
  must be the global batch (ConVIRT, CLIP; open_clip's ``gather_features`` does the same). Its backward sums
  the gradients that every process's loss sends to this process's rows, so when every process computes the
  same global loss, DDP's average equals the single-process gradient with no further scaling.
* :func:`global_masked_mean`: a mean over a data-dependent count (SimMIM's masked valid pixels) divided by
  the count summed over the processes, not a mean of per-process means.
* :func:`all_reduce_mean`: batch statistics, such as DINO's teacher centre (Caron et al., arXiv 2104.14294,
  whose reference code all-reduces the batch centre the same way).

Randomness: :func:`tile_generators` gives every tile its own generator, seeded by ``(seed, epoch, tile
id)``, so a tile's crops and masks depend neither on the process that reads it nor on its batch
neighbours. A run then sees the same views for any number of processes, and a resumed epoch repeats them.

Every helper is a plain local computation when ``torch.distributed`` is not initialised (one process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import distributed as dist


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_launch_zero() -> bool:
    """Whether this process is global rank zero, also before ``torch.distributed`` is initialised.

    Before initialisation the launcher's environment tells: torchrun's ``RANK``, SLURM's ``SLURM_PROCID``,
    and the ``NODE_RANK``/``LOCAL_RANK`` of the processes Lightning starts itself. A plain process is rank
    zero. Used to let one process write files that every process would otherwise write at once.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(int(os.environ.get(name, "0")) == 0 for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over every process (a detached copy; the tensor itself when not distributed)."""
    total = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(total)
    return total


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over every process (detached); each process must pass the same shape."""
    return all_reduce_sum(tensor) / world_size()


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (parts may differ in length); backward: all-reduce, then this rank's rows."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        count = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c) for c in counts]
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        ctx.sizes, ctx.rank = sizes, dist.get_rank()  # type: ignore[attr-defined]
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.contiguous().clone()
        dist.all_reduce(total)  # every process's loss sends gradient to every row
        sizes, rank_ = ctx.sizes, ctx.rank  # type: ignore[attr-defined]
        start = sum(sizes[:rank_])
        return total[start : start + sizes[rank_]]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Rows ``[N_0 + ... + N_{w-1}, ...]`` of every process in rank order, differentiable; ``tensor`` alone.

    The backward pass returns, for this process's rows, the sum of the gradients every process's loss sent
    to them. When every process computes the same loss on the gathered rows, DDP's gradient average then
    equals the gradient of that loss in one process holding the whole batch.

    Args:
        tensor: This process's rows ``[N_rank, ...]``; the row counts may differ between processes.
    """
    if not is_distributed():
        return tensor
    return _GatherRows.apply(tensor)


def global_masked_mean(total: torch.Tensor, count: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``sum(total) / (sum(count) + eps)`` over every process, as a loss DDP averages correctly.

    The value returned is that global mean on every process. Its gradient is this process's ``total``
    divided by the global count and multiplied by the number of processes, so DDP's average of the
    gradients over the processes is the gradient of the global mean: every counted element weighs the same
    however the elements are spread over the processes.

    Args:
        total: This process's sum of the per-element losses (differentiable).
        count: This process's number (or summed weight) of elements; not differentiated.
        eps: Added to the global count (SimMIM: 1e-5).
    """
    if not is_distributed():
        return total / (count.detach() + eps)
    sums = all_reduce_sum(torch.stack([total.detach(), count.detach().to(total.dtype)]).double())
    denominator = sums[1] + eps
    share = total * world_size() / denominator.to(total.dtype)
    value = (sums[0] / denominator).to(total.dtype)
    return share + (value - share).detach()


def _mix(*words: int) -> int:
    """A 64-bit seed from non-negative integers, mixed by NumPy's ``SeedSequence``."""
    state = np.random.SeedSequence([w % 2**63 for w in words]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def tile_seed(seed: int, epoch: int, tile_id: int) -> int:
    """The 64-bit seed of a tile's draws in an epoch, from ``(seed, epoch, tile_id)``."""
    return _mix(seed, epoch, tile_id)


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator for draws shared by the whole step (the same in every process), from its position."""
    return torch.Generator().manual_seed(_mix(seed, epoch, step, 1))


def tile_generators(tile_ids: torch.Tensor | Sequence[int], seed: int, epoch: int) -> list[torch.Generator]:
    """One CPU generator per tile, seeded by :func:`tile_seed`: a tile's draws depend on nothing else.

    Args:
        tile_ids: Tile ids of the batch (a stream batch's ``tile_id``).
        seed: The run's seed.
        epoch: The training epoch (so a tile gets new views every epoch).
    """
    ids = tile_ids.tolist() if isinstance(tile_ids, torch.Tensor) else list(tile_ids)
    return [torch.Generator().manual_seed(tile_seed(seed, epoch, int(i))) for i in ids]


def tile_uniforms(generators: Sequence[torch.Generator], k: int) -> torch.Tensor:
    """``[len(generators), k]`` uniform draws in ``[0, 1)``, row ``i`` from ``generators[i]`` (on the CPU)."""
    if not generators:
        return torch.empty(0, k)
    return torch.stack([torch.rand(k, generator=g) for g in generators])


__all__ = [
    "all_reduce_mean",
    "all_reduce_sum",
    "gather_with_grad",
    "global_masked_mean",
    "is_distributed",
    "is_launch_zero",
    "rank",
    "step_generator",
    "tile_generators",
    "tile_seed",
    "tile_uniforms",
    "world_size",
]
