"""TileStream: batches from a tile store to the accelerator without stalls.

A producer thread walks this rank's part of the epoch order (:mod:`.order`): a thread pool maps shard
files ahead of need and decodes the inner chunks this rank needs (numcodecs releases the GIL), copying
each tile straight into its slot of a batch buffer; on CUDA those are pinned host buffers (pooled, reused
once their copy has finished), copied to the device with
``non_blocking=True`` on a side CUDA stream while the previous batch computes, and normalised (and
optionally augmented) on the device. The consumer's stream waits on the copy's event, and
``record_stream`` keeps the caching allocator from reusing the memory early. On a CPU-only machine the
same code runs without the CUDA parts. Design after PyTorch's pinned-memory tutorial
(``intermediate_source/pinmem_nonblock.py``) and torchrec's side-stream prefetcher.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.engine import resolve_device
from domainfm.shared.tiles.order import ShardLoad, epoch_order, load_plan, rank_part
from domainfm.shared.tiles.schema import SPLITS, TEXT
from domainfm.shared.tiles.store import TileStore

Batch = dict[str, Any]
_DONE = object()


def _distributed_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TileStream:
    """An iterable of batches (dicts of tensors) over a tile store, for Lightning or a plain loop.

    Args:
        store: A :class:`TileStore` or its path.
        batch_size: Tiles per batch.
        split: Only tiles of this split (``train``, ``val``, ``test``); all when ``None``.
        indices: Only these tile ids (after the split filter).
        shuffle: Shuffle shards, then tiles within windows of ``window_shards`` shards.
        seed: Seed of the order; epoch ``k`` uses ``(seed, k)``, so the same seed gives the same order.
        window_shards: Shards mixed per shuffle window (memory: about this many decoded shards).
        rank, world_size: This process's part; from ``torch.distributed`` when ``None``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        normalize: Return float tiles ``(x - mean) / std`` with the store's statistics; else raw dtype.
        augment: ``augment(batch) -> batch`` applied on the device after normalisation.
        companions: Companion arrays to include in each batch.
        threads: Shard-reading threads.
        prefetch: Batches prepared ahead of the consumer.
        drop_last: Drop a final short batch (and truncate instead of padding across ranks).
    """

    def __init__(
        self,
        store: TileStore | str | Path,
        batch_size: int,
        *,
        split: str | None = None,
        indices: np.ndarray | None = None,
        shuffle: bool = True,
        seed: int = 0,
        window_shards: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
        device: str | torch.device = "auto",
        normalize: bool = True,
        augment: Callable[[Batch], Batch] | None = None,
        companions: tuple[str, ...] = (),
        threads: int = 2,
        prefetch: int = 2,
        drop_last: bool = False,
    ) -> None:
        self.store = store if isinstance(store, TileStore) else TileStore(store)
        if batch_size < 1 or window_shards < 1:
            raise ValueError(f"batch_size and window_shards must be >= 1, got {batch_size} and {window_shards}")
        self.batch_size, self.shuffle, self.seed, self.window_shards = batch_size, shuffle, seed, window_shards
        self._rank, self._world_size = rank, world_size
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.normalize, self.augment, self.companions = normalize, augment, tuple(companions)
        self.threads, self.prefetch, self.drop_last = max(1, threads), max(1, prefetch), drop_last
        for name in self.companions:
            self.store.companion(name)  # fails early, naming the store, for an unknown companion
        ids = np.arange(len(self.store))
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
            ids = ids[self.store.index["split"] == SPLITS[split]]
        if indices is not None:
            ids = np.intersect1d(ids, np.asarray(indices, dtype=np.int64))
        self.tile_ids = ids
        self._cpu_buffers = RecyclingBuffers(limit=self._max_open_batches() + self.prefetch + 2)
        self._pinned = PinnedBuffers()
        self.epoch = 0
        self._epoch_set = False
        stats = self.store.stats
        if normalize and not stats:
            raise ValueError(f"{self.store.path} has no statistics; pass normalize=False")
        shape = (1, -1, 1, 1)
        self._mean = torch.tensor(stats.get("mean", [0.0]), dtype=torch.float32).reshape(shape).to(self.device)
        self._std = torch.tensor(stats.get("std", [1.0]), dtype=torch.float32).clamp_min(1e-8).reshape(shape)
        self._std = self._std.to(self.device)
        self._scale, self._shift = 1.0 / self._std, -self._mean / self._std

    @property
    def rank(self) -> tuple[int, int]:
        """``(rank, world_size)`` of this process."""
        auto = _distributed_rank()
        return (
            auto[0] if self._rank is None else self._rank,
            auto[1] if self._world_size is None else self._world_size,
        )

    def set_epoch(self, epoch: int) -> None:
        """Fixes the epoch whose order the next iteration uses (otherwise epochs advance per iteration)."""
        self.epoch, self._epoch_set = epoch, True

    def order(self, epoch: int | None = None) -> np.ndarray:
        """This rank's tile ids for ``epoch`` (default: the next iteration's), in reading order."""
        rank, world = self.rank
        full = epoch_order(
            self.tile_ids,
            self.store.shard_rows,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch if epoch is None else epoch,
            window_shards=self.window_shards,
        )
        part = rank_part(full, rank, world, self.drop_last)
        if self.drop_last:
            part = part[: len(part) - len(part) % self.batch_size]
        return part

    def __len__(self) -> int:
        world = self.rank[1]
        n = len(self.tile_ids)
        per = n // world if self.drop_last else -(-n // world)
        return per // self.batch_size if self.drop_last else -(-per // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self.order()
        if not self._epoch_set:
            self.epoch += 1
        self._epoch_set = False
        return self._iterate(order)

    # -- producer ---------------------------------------------------------------------------------------
    def _iterate(self, order: np.ndarray) -> Iterator[Batch]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(order, out, stop), daemon=True)
        producer.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    for value in batch.values():
                        if isinstance(value, torch.Tensor) and value.is_cuda:
                            value.record_stream(current)
                yield batch
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get_nowait()
                except queue.Empty:
                    producer.join(0.05)

    def _produce(self, order: np.ndarray, out: queue.Queue, stop: threading.Event) -> None:
        """Runs the shard loads of ``order`` on the pool and emits batches, in order, as they complete."""
        size = self.batch_size
        n_batches = -(-len(order) // size)
        plan = load_plan(order, self.store.shard_rows, gap=self.window_shards * self.store.shard_rows)
        pending = np.zeros(n_batches, np.int64)  # loads still to finish, per batch
        spans = [load.batches(size) for load in plan]
        for first, last in spans:
            pending[first : last + 1] += 1
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        buffers: dict[int, dict[str, Any]] = {}
        in_flight: collections.deque = collections.deque()
        max_open = self._max_open_batches()
        next_load = next_emit = 0
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="tilestream") as pool:
                while next_emit < n_batches:
                    if stop.is_set():
                        return
                    while next_load < len(plan) and (
                        (spans[next_load][0] < next_emit + max_open and len(in_flight) < 2 * self.threads)
                        or not in_flight
                    ):
                        for b in range(spans[next_load][0], spans[next_load][1] + 1):
                            if b not in buffers:
                                buffers[b] = self._batch_buffer(min(size, len(order) - b * size))
                        in_flight.append((next_load, pool.submit(self._run_load, plan[next_load], buffers)))
                        next_load += 1
                    if in_flight:
                        number, future = in_flight.popleft()
                        future.result()
                        first, last = spans[number]
                        pending[first : last + 1] -= 1
                    while next_emit < n_batches and pending[next_emit] == 0:
                        ids = order[next_emit * size : (next_emit + 1) * size]
                        host = self._host_batch(ids, buffers.pop(next_emit))
                        batch, event = self._to_device(host, side)
                        if event is not None:  # the pinned tile buffer is free again once its copy is done
                            self._pinned.release(host["tiles"], event)
                        while not stop.is_set():
                            try:
                                out.put((batch, event), timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        next_emit += 1
        except BaseException as error:  # handed to the consumer, which re-raises it
            out.put(error)
            return
        out.put(_DONE)

    def _max_open_batches(self) -> int:
        """Batches being filled at once: a shuffle window's span plus one (bounds host memory)."""
        return -(-self.window_shards * self.store.shard_rows // self.batch_size) + 1

    def _batch_buffer(self, rows: int) -> dict[str, Any]:
        spec = self.store.spec
        if self.device.type == "cuda":
            tiles = self._pinned.acquire((rows, *spec.tile_shape), spec.dtype)
        else:
            tiles = self._cpu_buffers.acquire((rows, *spec.tile_shape), spec.dtype)
        buffer: dict[str, Any] = {"tiles": tiles}
        for name in self.companions:
            companion = spec.companions[name]
            buffer[name] = (
                np.empty(rows, object)
                if companion.dtype == TEXT
                else np.empty((rows, *companion.shape), companion.dtype)
            )
        return buffer

    def _run_load(self, load: ShardLoad, buffers: dict[int, dict[str, Any]]) -> None:
        """Decodes one shard's needed rows and copies each straight into its batch slot (a pool task)."""
        size = self.batch_size
        positions = load.positions
        numbers, slots = (positions // size).tolist(), (positions % size).tolist()
        targets = {}  # batch number -> numpy view of its tile buffer, looked up once per load
        for number in set(numbers):
            tiles = buffers[number]["tiles"]
            targets[number] = tiles.numpy() if isinstance(tiles, torch.Tensor) else tiles
        self.store.copy_shard_rows(
            load.shard, load.rows, [targets[number][slot] for number, slot in zip(numbers, slots, strict=True)]
        )
        if self.companions:
            start, stop = self.store.shard_ranges()[load.shard]
            for name in self.companions:
                values = self.store.read_companion(name, slice(start, stop))
                for q, row in zip(positions.tolist(), load.rows.tolist(), strict=True):
                    buffers[q // size][name][q % size] = values[row]

    def _host_batch(self, ids: np.ndarray, buffer: dict[str, Any]) -> dict[str, Any]:
        tiles = buffer.pop("tiles")
        host: dict[str, Any] = {"tiles": tiles if isinstance(tiles, torch.Tensor) else torch.from_numpy(tiles)}
        host["tile_id"] = torch.from_numpy(ids.copy())
        for name, column in self.store.index.items():
            host[name] = torch.from_numpy(column[ids])
        for name, values in buffer.items():
            host[name] = [str(v) for v in values] if values.dtype == object else torch.from_numpy(values)
        return host

    def _to_device(self, host: dict[str, Any], side: Any) -> tuple[Batch, Any]:
        if side is None:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in host.items()}
            return self._finish(batch), None
        with torch.cuda.stream(side):
            batch = {
                k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in host.items()
            }
            batch = self._finish(batch)
            event = torch.cuda.Event()
            event.record(side)
        return batch, event

    def _finish(self, batch: Batch) -> Batch:
        if self.normalize:  # (x - mean) / std as one fused multiply-add after the float conversion
            batch["tiles"] = torch.addcmul(self._shift, batch["tiles"].float(), self._scale)
        if self.augment is not None:
            batch = self.augment(batch)
        return batch


class RecyclingBuffers:
    """Host batch buffers for the CPU path, reused once nobody else references them.

    A batch handed to the consumer may be kept (e.g. appended to a list), so a buffer is reused only when
    its reference count shows that only this pool still holds it. Reuse avoids the page faults of a fresh
    38 MB allocation per batch, which cost as much as decoding the tiles on a 2-core machine.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pool: list[np.ndarray] = []
        self._lock = threading.Lock()  # two live iterators of one stream must never take the same buffer

    def acquire(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A free ``[*shape]`` array (contents undefined)."""
        with self._lock:
            return self._acquire(shape, dtype)

    def _acquire(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        for index in range(len(self._pool)):
            # references: the pool's list and getrefcount's argument; any tensor or view adds more
            if sys.getrefcount(self._pool[index]) <= 2:
                array = self._pool[index]
                if array.shape == shape and array.dtype == np.dtype(dtype):
                    return array
        array = np.empty(shape, dtype)
        if len(self._pool) < self.limit:
            self._pool.append(array)
        return array


class PinnedBuffers:
    """Pinned host batch buffers for the CUDA path, reused once the copy that read them has finished."""

    def __init__(self) -> None:
        self._pool: list[tuple[torch.Tensor, Any]] = []
        self._lock = threading.Lock()

    def acquire(self, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
        """A free pinned ``[*shape]`` tensor."""
        with self._lock:
            for i, (tensor, event) in enumerate(self._pool):
                if tuple(tensor.shape) == shape and (event is None or event.query()):
                    del self._pool[i]
                    return tensor
        return torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, pin_memory=True)

    def release(self, tensor: torch.Tensor, event: Any) -> None:
        """Returns ``tensor`` to the pool; it is reused after ``event`` (its device copy) completes."""
        with self._lock:
            self._pool.append((tensor, event))


def flip_rotate(batch: Batch) -> Batch:
    """A device-side augmentation: random horizontal flip and 90-degree rotation per batch (square tiles)."""
    tiles = batch["tiles"]
    if torch.rand(()) < 0.5:
        tiles = tiles.flip(-1)
    batch["tiles"] = torch.rot90(tiles, int(torch.randint(0, 4, ())), dims=(-2, -1))
    return batch


__all__ = ["RecyclingBuffers", "TileStream", "flip_rotate"]
