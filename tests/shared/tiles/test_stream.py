from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch

from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.shards import ShardCorruptError
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream, flip_rotate

from .conftest import build_store


def _ids(stream: TileStream) -> np.ndarray:
    return np.concatenate([batch["tile_id"].numpy() for batch in stream])


def test_every_tile_once_with_its_content(small_store):
    store, _ = small_store
    stream = TileStream(store, 100, normalize=False, seed=3)
    batches = list(stream)
    ids = np.concatenate([b["tile_id"].numpy() for b in batches])
    assert len(batches) == len(stream) == 31 and sorted(ids.tolist()) == list(range(3100))
    assert not np.array_equal(ids, np.arange(3100)), "shuffled"
    tiles = store.tiles[:]
    for batch in batches:
        np.testing.assert_array_equal(batch["tiles"].numpy(), tiles[batch["tile_id"].numpy()])
        np.testing.assert_array_equal(batch["source"].numpy(), store.index["source"][batch["tile_id"].numpy()])


@pytest.mark.parametrize("codec", ["none", "zstd-1"])
def test_other_codecs_stream_the_same_tiles(codec: str, tmp_path: Path):
    """Uncompressed chunks are copied straight from the mapped shard file; zstd goes through its decoder."""
    store, sources = build_store(tmp_path, [700, 900], codec=codec)
    assert store.attrs["layout"]["codec"] == codec
    expected = np.concatenate([np.load(source) for source in sources])
    stream = TileStream(store, 96, normalize=False, seed=1, threads=2)
    for epoch in range(2):
        seen = []
        for batch in stream:
            ids = batch["tile_id"].numpy()
            np.testing.assert_array_equal(batch["tiles"].numpy(), expected[ids], err_msg=f"epoch {epoch}")
            seen.append(ids)
        assert sorted(np.concatenate(seen).tolist()) == list(range(1600))


def test_an_uncompressed_chunk_of_the_wrong_size_is_named(tmp_path: Path):
    store, _ = build_store(tmp_path, [700], codec="none")
    shard = store.shard_file(0)
    data = bytearray(shard.read_bytes())
    chunks = store.shard_rows // int(store.tiles.chunks[0])
    index = np.frombuffer(bytes(data[-16 * chunks - 4 : -4]), "<u8").reshape(-1, 2).copy()
    index[1, 1] -= 1  # a chunk one byte short, with a consistent checksum
    data[-16 * chunks - 4 : -4] = index.tobytes()
    data[-4:] = np.uint32(google_crc32c.value(index.tobytes())).tobytes()
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=r"c/0/0/0/0: inner chunk 1 holds"):
        list(TileStream(store, 64, normalize=False, shuffle=False))


def test_same_seed_same_order_and_epochs_differ(small_store):
    store, _ = small_store
    first = TileStream(store, 64, normalize=False, seed=7)
    second = TileStream(store, 64, normalize=False, seed=7)
    np.testing.assert_array_equal(_ids(first), _ids(second))
    assert not np.array_equal(_ids(first), _ids(TileStream(store, 64, normalize=False, seed=8)))
    epoch_one = _ids(first)  # iterating again advances to the next epoch
    assert not np.array_equal(epoch_one, first.order(0))
    first.set_epoch(0)
    np.testing.assert_array_equal(_ids(first), first.order(0))


def test_shuffle_stays_within_windows_of_shards(small_store):
    store, _ = small_store
    order = TileStream(store, 64, normalize=False, seed=1, window_shards=1).order(0)
    shards = order // store.shard_rows
    assert (np.diff(shards) != 0).sum() == 3, "one shard at a time with a window of one shard"


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_see_disjoint_parts_whose_union_is_the_epoch(small_store, world_size: int):
    store, _ = small_store  # 3100 tiles: divisible by 2 and 4
    parts = [
        _ids(TileStream(store, 50, normalize=False, seed=5, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    assert sum(len(p) for p in parts) == 3100
    assert len(set().union(*map(set, parts))) == 3100
    epoch = TileStream(store, 50, normalize=False, seed=5).order(0)
    np.testing.assert_array_equal(np.concatenate(parts), epoch)


def test_uneven_ranks_get_equal_lengths(small_store):
    store, _ = small_store
    parts = [TileStream(store, 64, seed=0, rank=r, world_size=3) for r in range(3)]
    lengths = {len(p.order(0)) for p in parts}
    assert lengths == {1034} and {len(p) for p in parts} == {17}
    union = set().union(*(set(p.order(0).tolist()) for p in parts))
    assert union == set(range(3100))


def test_normalisation_uses_the_store_statistics(small_store):
    store, _ = small_store
    batch = next(iter(TileStream(store, 32, seed=0)))
    raw = torch.from_numpy(store.tiles[:][batch["tile_id"].numpy()]).double()
    mean = torch.tensor(store.stats["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(store.stats["std"]).reshape(1, -1, 1, 1)
    assert batch["tiles"].dtype == torch.float32
    torch.testing.assert_close(batch["tiles"].double(), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    augmented = next(iter(TileStream(store, 32, seed=0, augment=flip_rotate)))
    assert augmented["tiles"].shape == batch["tiles"].shape


def test_splits_indices_and_companions(tmp_path: Path):
    masks = np.random.default_rng(0).integers(0, 2, (60, 1, 8, 8), dtype=np.uint8)
    images = np.random.default_rng(1).integers(0, 255, (60, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "pairs.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    spec = StoreSpec(
        "segmentation",
        (1, 8, 8),
        "uint8",
        [{"name": "grey"}],
        companions={"mask": Companion((1, 8, 8), "uint8"), "report": Companion((), "str")},
    )
    ingest([tmp_path / "pairs.npy"], tmp_path / "s.zarr", spec, _pairs_reader, "test.pairs", progress=False)
    store = TileStore(tmp_path / "s.zarr")
    val = TileStream(store, 8, split="val", companions=("mask", "report"), normalize=False)
    batches = list(val)
    ids = np.concatenate([b["tile_id"].numpy() for b in batches])
    assert sorted(ids.tolist()) == list(range(1, 60, 3))
    for batch in batches:
        np.testing.assert_array_equal(batch["mask"].numpy(), masks[batch["tile_id"].numpy()])
        assert batch["report"] == [f"report {i}" for i in batch["tile_id"].tolist()]
        assert (batch["split"] == 1).all()
    subset = TileStream(store, 4, indices=np.array([5, 9, 59]), normalize=False, shuffle=False)
    assert _ids(subset).tolist() == [5, 9, 59]
    with pytest.raises(Exception, match="has no companion 'masks'"):
        TileStream(store, 4, companions=("masks",))


def _pairs_reader(path: Path):
    images = np.load(path)
    masks = np.load(path.with_name("masks.npy"))
    n = len(images)
    yield TileBatch(
        images,
        index={"split": np.arange(n) % 3, "label": np.arange(n) % 2},
        companions={"mask": masks, "report": [f"report {i}" for i in range(n)]},
    )


def test_breaking_early_stops_the_producer(small_store):
    store, _ = small_store
    stream = TileStream(store, 16, normalize=False)
    for i, _ in enumerate(stream):
        if i == 2:
            break
    assert len(list(TileStream(store, 1000, normalize=False))) == 4


def test_lightning_trains_from_a_tile_stream(small_store):
    import lightning

    store, _ = small_store

    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Conv2d(3, 1, 3)

        def training_step(self, batch, _):
            return self.net(batch["tiles"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = lightning.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Tiny()
    before = model.net.weight.detach().clone()
    trainer.fit(model, train_dataloaders=TileStream(store, 32, seed=0))
    assert trainer.global_step == 3 and not torch.equal(before, model.net.weight)


@pytest.mark.gpu
def test_batches_arrive_on_cuda_through_pinned_buffers(small_store):
    store, _ = small_store
    stream = TileStream(store, 256, device="cuda", seed=0)
    ids, count = [], 0
    for batch in stream:
        assert batch["tiles"].is_cuda and batch["tiles"].dtype == torch.float32
        ids.append(batch["tile_id"].cpu().numpy())
        count += len(batch["tiles"])
    assert count == 3100 and sorted(np.concatenate(ids).tolist()) == list(range(3100))
    raw = next(iter(TileStream(store, 64, device="cuda", seed=0, normalize=False)))
    np.testing.assert_array_equal(raw["tiles"].cpu().numpy(), store.tiles[:][raw["tile_id"].cpu().numpy()])


def test_two_live_iterators_of_one_stream_never_share_buffers(small_store):
    store, _ = small_store
    stream = TileStream(store, 100, normalize=False, seed=2)
    first, second = iter(stream), iter(stream)
    tiles = store.tiles[:]
    kept = []
    for a, b in zip(first, second, strict=False):
        kept += [a, b]
    for batch in kept:  # every kept batch still holds its own tiles
        np.testing.assert_array_equal(batch["tiles"].numpy(), tiles[batch["tile_id"].numpy()])
