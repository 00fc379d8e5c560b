"""The global-batch helpers on unequal parts, under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Rank 0 holds 3 rows and rank 1 holds 5 rows of one 8-row batch. Each process computes, from its own rows
and the helpers, a contrastive loss (``gather_with_grad``) and a masked mean (``global_masked_mean``)
over weights ``w`` with a different count per process; the gradients are then averaged over the processes
as DDP does. Rank 0 writes the averaged gradients, the loss values, an all-reduced mean and, as a control, the mean of
the two processes' own masked means to ``OUT.pt``, for the test to compare with one process on the whole
batch.
"""

from __future__ import annotations

import sys

import torch
from torch import distributed as dist

from domainfm.shared.engine.distributed import all_reduce_mean, gather_with_grad, global_masked_mean

SPLIT = (3, 5)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole batch: features, targets and per-element weights (the same in every process)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SPLIT), 6, generator=generator)
    y = torch.randn(sum(SPLIT), 6, generator=generator)
    w = (torch.rand(sum(SPLIT), 6, generator=generator) < 0.5).float()
    return x, y, w


def losses(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A contrastive loss over the gathered rows and a masked mean with the global count."""
    v = torch.nn.functional.normalize(gather_with_grad(layer(x)), dim=-1)
    u = torch.nn.functional.normalize(gather_with_grad(y), dim=-1)
    contrastive = torch.nn.functional.cross_entropy(v @ u.T / 0.1, torch.arange(len(v)))
    masked = global_masked_mean((layer(x) - y).abs().mul(w).sum(), w.sum(), eps=1e-5)
    return contrastive, masked


def main(out: str) -> None:
    """Runs the two losses on this rank's rows and writes the DDP-averaged gradients from rank 0."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y, w = batch()
    start = sum(SPLIT[:rank])
    rows = slice(start, start + SPLIT[rank])
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 6)
    record = {}
    for name, index in (("contrastive", 0), ("masked", 1)):
        layer.zero_grad()
        loss = losses(layer, x[rows], y[rows], w[rows])[index]
        loss.backward()
        grad = layer.weight.grad.clone()
        dist.all_reduce(grad)
        record[name] = {"loss": float(loss.detach()), "grad": grad / world}
    record["mean"] = all_reduce_mean(torch.tensor([float(rank)]))
    with torch.no_grad():  # the per-process form a DDP run would average without the global count
        own = (layer(x[rows]) - y[rows]).abs().mul(w[rows]).sum() / (w[rows].sum() + 1e-5)
    record["per_process_masked"] = float(all_reduce_mean(own))
    if rank == 0:
        torch.save(record, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
