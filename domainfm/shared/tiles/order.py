"""Epoch order of a tile stream: shard shuffle, window shuffle, per-rank parts, and the shard-load plan.

Shards are the unit of reading, so an epoch shuffles the shard order, then shuffles tiles within windows
of a few consecutive shards (a block-shuffle, as WebDataset/LitData do), seeded by ``(seed, epoch)``.
The epoch order is cut into ``world_size`` contiguous equal parts, one per rank, so each rank reads
about ``1 / world_size`` of the shards; when the tile count does not divide, the order is padded by
repeating its start (as ``torch.utils.data.DistributedSampler`` does) or truncated with ``drop_last``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def epoch_order(
    tile_ids: np.ndarray, shard_rows: int, *, shuffle: bool, seed: int, epoch: int, window_shards: int
) -> np.ndarray:
    """All selected tile ids of one epoch, in reading order."""
    tile_ids = np.sort(np.asarray(tile_ids, dtype=np.int64))
    if not shuffle or len(tile_ids) == 0:
        return tile_ids
    rng = np.random.default_rng([seed, epoch])
    shards = tile_ids // shard_rows
    boundaries = np.flatnonzero(np.diff(shards)) + 1
    groups = np.split(tile_ids, boundaries)
    order = rng.permutation(len(groups))
    parts = []
    for start in range(0, len(order), window_shards):
        window = np.concatenate([groups[g] for g in order[start : start + window_shards]])
        parts.append(rng.permutation(window))
    return np.concatenate(parts)


def rank_part(order: np.ndarray, rank: int, world_size: int, drop_last: bool) -> np.ndarray:
    """This rank's contiguous part of the epoch order (equal length on every rank)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    if world_size == 1:
        return order
    if drop_last:
        per = len(order) // world_size
    else:
        per = -(-len(order) // world_size)
        if per * world_size > len(order) and len(order):
            order = np.concatenate([order, np.resize(order, per * world_size - len(order))])
    return order[rank * per : (rank + 1) * per]


@dataclass
class ShardLoad:
    """One read of a shard, delivering ``rows`` (local to the shard) to order ``positions``."""

    shard: int
    rows: np.ndarray
    positions: np.ndarray

    def batches(self, batch_size: int) -> tuple[int, int]:
        """First and last batch this load writes into."""
        return int(self.positions.min()) // batch_size, int(self.positions.max()) // batch_size


def load_plan(order: np.ndarray, shard_rows: int, gap: int) -> list[ShardLoad]:
    """Shard reads in order of first need: every position of ``order`` is covered by exactly one load.

    Consecutive uses of a shard at most ``gap`` positions apart share one read; a shard needed again
    later (the padding at the end of an epoch) is read anew.
    """
    shards = order // shard_rows
    by_shard = np.argsort(shards, kind="stable")  # positions grouped by shard, ascending within a shard
    starts = np.flatnonzero(np.diff(shards[by_shard])) + 1
    loads: list[ShardLoad] = []
    for positions in np.split(by_shard, starts):
        if not len(positions):
            continue
        shard = int(shards[positions[0]])
        breaks = np.flatnonzero(np.diff(positions) > gap) + 1
        for run in np.split(positions, breaks):
            loads.append(ShardLoad(shard, order[run] - shard * shard_rows, run))
    loads.sort(key=lambda load: int(load.positions[0]))
    return loads
