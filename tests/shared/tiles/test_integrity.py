"""Nothing silently wrong: seeded corruption of every kind of stored file is caught by verify and refused by
readers, and random sequences of ingest operations end in a store equal to a fresh build or a clear refusal."""

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from domainfm.cli import main
from domainfm.shared.errors import DomainfmError
from domainfm.shared.outputs import OutputError, OutputLock
from domainfm.shared.tiles.ingest import ingest
from domainfm.shared.tiles.schema import INDEX_COLUMNS, TileBatch
from domainfm.shared.tiles.sources import npy_spec, read_npy_tiles
from domainfm.shared.tiles.store import StoreError, TileStore
from domainfm.shared.tiles.stream import TileStream
from domainfm.shared.tiles.verify import verify_notes, verify_store

from .conftest import write_sources


def _build(folder: Path, codec: str) -> TileStore:
    sources = write_sources(folder, [1500, 700, 900], seed=1)
    summary = ingest(
        sources, folder / "store.zarr", npy_spec(sources[0], codec=codec), read_npy_tiles, "t", progress=False
    )
    assert summary.ok
    return TileStore(folder / "store.zarr")


def _chunk_files(store: TileStore) -> list[Path]:
    """Every data file of the store: tile shards, index, companion and checksum chunks."""
    return sorted(p for p in store.path.rglob("*") if p.is_file() and p.name not in ("zarr.json",) and "/c/" in str(p))


def _stream_all(store_path: Path) -> int:
    n = 0
    for batch in TileStream(store_path, 256, normalize=False, shuffle=False, device="cpu"):
        n += len(batch["tiles"])
    return n


@pytest.mark.parametrize("codec", ["none", "blosc-lz4"])
def test_every_flipped_byte_is_caught(tmp_path: Path, codec: str):
    """Seeded single-byte flips in shard files (data, index, index checksum) and index/checksum chunks."""
    pristine = _build(tmp_path / "pristine", codec)
    files = _chunk_files(pristine)
    assert any("tiles/c" in str(f) for f in files) and any("index/label" in str(f) for f in files)
    rng = np.random.default_rng(23)
    trials = 0
    for trial in range(24):
        work = tmp_path / f"trial{trial}"
        shutil.copytree(pristine.path, work)
        target = work / files[trial % len(files)].relative_to(pristine.path)
        data = bytearray(target.read_bytes())
        # within the last 40 bytes (shard index and its crc) for a third of the tile-shard trials
        tail = "tiles/c" in str(target) and trial % 3 == 0
        position = int(rng.integers(max(0, len(data) - 40) if tail else 0, len(data)))
        data[position] ^= 1 << int(rng.integers(0, 8))
        target.write_bytes(bytes(data))
        problems = verify_store(work)
        assert problems, f"flip at byte {position} of {target.relative_to(work)} passed verify"
        name = str(target.relative_to(work).parts[0])
        assert any(name in p for p in problems), problems
        with pytest.raises(DomainfmError, match=name):  # refused by name on open or while streaming
            _stream_all(work)
        trials += 1
        shutil.rmtree(work)
    assert trials == 24


def test_swapped_shards_missing_shard_and_edited_shape_are_refused(small_store, tmp_path: Path, capsys):
    store, _ = small_store
    work = tmp_path / "swapped.zarr"
    shutil.copytree(store.path, work)
    a, b = TileStore(work).shard_file(0), TileStore(work).shard_file(1)
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    assert len(a_bytes) == len(b_bytes)  # both full shards: only the recorded checksums tell them apart
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    assert any("tiles shard 0 is corrupt" in p and "recorded checksum" in p for p in verify_store(work))
    with pytest.raises(DomainfmError, match=r"tiles/c/\d/0/0/0 does not match its recorded checksum"):
        _stream_all(work)
    with pytest.raises(DomainfmError, match="recorded checksum"):
        TileStore(work).read([0, 1])
    # a missing shard: refused on open, inspect exits 2 instead of drawing black tiles
    store.shard_file(2).unlink()
    with pytest.raises(StoreError, match=r"tile shard files missing: 2"):
        TileStore(store.path)
    assert main(["tiles", "inspect", str(store.path), "--sheet", str(tmp_path / "s.png")]) == 2
    assert not (tmp_path / "s.png").exists()
    # an edited array shape: 600 -> 500 tiles would stream 500 silently
    edited = tmp_path / "edited.zarr"
    shutil.copytree(small_store[0].path, edited, ignore=shutil.ignore_patterns("2"))
    meta_path = edited / "tiles" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"][0] = 2000
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="the tiles array holds 2000 tiles, the attributes record 3100"):
        TileStream(edited, 64, normalize=False)
    assert any("2000 tiles" in p for p in verify_store(edited))


def test_index_pointing_past_the_sources_is_refused(small_store):
    store, _ = small_store
    meta_path = store.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["sources"] = meta["attributes"]["sources"][:2]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"index/source refers to source rows 0-3; the sources table has 2 rows"):
        TileStore(store.path)


def test_store_without_checksums_opens_and_verify_says_so(small_store, capsys):
    """A store written before checksums (no checksums/tiles, plain index codecs) still opens and streams."""
    store, _ = small_store
    group = zarr.open_group(store.path, mode="r+")
    del group["checksums"]
    for name in INDEX_COLUMNS:
        values = group[f"index/{name}"][:]
        del group[f"index/{name}"]
        column = group.create_array(
            f"index/{name}", shape=values.shape, dtype=values.dtype, config={"write_empty_chunks": True}
        )
        column[:] = values
    attrs = dict(group.attrs)
    for key in ("inputs", "n_tiles"):
        attrs.pop(key)
    group.attrs.put(attrs)
    old = TileStore(store.path)
    assert not old.checksummed and _stream_all(store.path) == len(old) == 3100
    assert verify_store(store.path) == []
    assert "no checksums recorded" in verify_notes(store.path)[0]
    assert main(["tiles", "verify", str(store.path)]) == 0
    assert "ok (note: no checksums recorded" in capsys.readouterr().out


# -- random sequences of ingest operations --------------------------------------------------------------


def _labelled_reader(path: Path, split: str = "train", label: int = 0):
    """Tiles of one .npy file with a split and a label taken from the reader's options."""
    tiles = np.load(path)
    if tiles.shape[0] and tiles[0, 0, 0, 0] == 255 and tiles[0, 0, 0, 1] == 255:
        raise ValueError(f"{path} is marked broken")
    yield TileBatch(
        tiles, index={"split": np.full(len(tiles), {"train": 0, "val": 1}[split]), "label": np.full(len(tiles), label)}
    )


def _reference(folder: Path, sources: list[Path], options: dict) -> TileStore:
    from functools import partial

    shutil.rmtree(folder, ignore_errors=True)
    summary = ingest(
        sources, folder, npy_spec(sources[0], codec="none"), partial(_labelled_reader, **options), "r", progress=False
    )
    return TileStore(folder, allow_incomplete=True) if not summary.ok else TileStore(folder)


def _same(a: TileStore, b: TileStore) -> None:
    np.testing.assert_array_equal(a.tiles[:], b.tiles[:])
    for name in INDEX_COLUMNS:
        np.testing.assert_array_equal(a.index[name], b.index[name], err_msg=name)
    assert [(s["path"], s["status"], s["n_tiles"]) for s in a.sources] == [
        (s["path"], s["status"], s["n_tiles"]) for s in b.sources
    ]
    assert a.stats == b.stats


@pytest.mark.parametrize("seed", range(4))
def test_random_ingest_sequences_end_equal_to_a_fresh_build_or_refused(tmp_path: Path, seed: int):
    from functools import partial

    rng = np.random.default_rng(seed)
    pool = write_sources(tmp_path / "src", [int(n) for n in rng.integers(1, 300, 6)], seed=seed)
    broken = np.load(pool[5])
    broken[0, 0, 0, :2] = 255
    np.save(pool[5], broken)  # the failing source
    out = tmp_path / "store.zarr"
    sources, options = [pool[0], pool[1]], {"split": "train", "label": 0}
    for step in range(8):
        move = rng.choice(["add", "remove", "options", "rerun", "fail", "kill", "concurrent"])
        new_sources, new_options, overwrite = list(sources), dict(options), False
        if move == "add":
            new_sources.append(pool[int(rng.integers(0, 5))])
        elif move == "remove" and len(sources) > 1:
            new_sources.pop(int(rng.integers(0, len(sources))))
        elif move == "options":
            new_options = {"split": str(rng.choice(["train", "val"])), "label": int(rng.integers(0, 3))}
            overwrite = bool(rng.integers(0, 2))
        elif move == "fail":
            new_sources.append(pool[5])
        new_sources = list(dict.fromkeys(new_sources))
        reader = partial(_labelled_reader, **new_options)
        spec = npy_spec(new_sources[0] if new_sources[0] != pool[5] else pool[0], codec="none")
        if move == "concurrent":  # another run holds the store: refused at once, nothing written
            before = {p: p.stat().st_mtime_ns for p in out.rglob("*")} if out.exists() else {}
            with OutputLock(out, "tile store"), pytest.raises(OutputError, match=f"pid {os.getpid()}"):
                ingest(new_sources, out, spec, reader, "r", overwrite=overwrite, progress=False)
            assert ({p: p.stat().st_mtime_ns for p in out.rglob("*")} if out.exists() else {}) == before
            continue
        if move == "kill":  # interrupted mid-ingest: fragments staged, store left 'ingesting'
            engine = importlib.import_module("domainfm.shared.tiles.ingest")
            real = engine._assemble
            engine._assemble = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
            try:  # a complete store of the same inputs is already done: nothing to interrupt
                ingest(new_sources, out, spec, reader, "r", overwrite=overwrite, progress=False)
            except (KeyboardInterrupt, StoreError):
                pass
            finally:
                engine._assemble = real
            continue
        try:
            summary = ingest(new_sources, out, spec, reader, "r", overwrite=overwrite, progress=False)
        except StoreError as error:
            message = str(error)
            assert "--overwrite" in message, message  # a refusal names the way out
            assert any(k in message for k in ("other inputs", "other sources", "another spec")), message
            continue
        sources, options = new_sources, new_options
        reference = _reference(tmp_path / f"ref{step}.zarr", sources, options)
        opened = TileStore(out, allow_incomplete=True) if not summary.ok else TileStore(out)
        assert verify_store(out) == ([] if summary.ok else verify_store(reference.path)), (step, move)
        _same(opened, reference)
        if summary.ok:
            assert not any(p.name == "_staging" for p in out.iterdir())
            assert len(TileStore(out).shard_checksums) == len(TileStore(out).shard_ranges())
            assert TileStore(out).attrs["n_tiles"] == len(TileStore(out))
        # a partial store says which sources failed; its index only ever points at done rows
        done = {i for i, s in enumerate(opened.sources) if s["status"] == "done"}
        assert set(np.unique(opened.index["source"]).tolist()) <= done


def test_changed_options_after_a_kill_are_refused_and_overwrite_redoes_every_fragment(tmp_path: Path):
    """Splits changed after an interrupted run: refused; with --overwrite no fragment of the old splits is kept."""
    from functools import partial

    engine = importlib.import_module("domainfm.shared.tiles.ingest")
    sources = write_sources(tmp_path / "src", [40, 50, 60])
    out = tmp_path / "store.zarr"
    spec = npy_spec(sources[0], codec="none")
    real = engine._assemble
    engine._assemble = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            ingest(sources, out, spec, partial(_labelled_reader, split="train"), "r", progress=False)
    finally:
        engine._assemble = real
    with pytest.raises(StoreError, match=r'option split: "train" -> "val"'):
        ingest(sources, out, spec, partial(_labelled_reader, split="val"), "r", progress=False)
    summary = ingest(sources, out, spec, partial(_labelled_reader, split="val"), "r", overwrite=True, progress=False)
    assert summary.ok and not summary.skipped
    assert (TileStore(out).index["split"] == 1).all()


@pytest.mark.parametrize("codec", ["none", "blosc-lz4"])
def test_reading_some_rows_checks_the_whole_shard_and_copies_exactly_those_rows(tmp_path: Path, codec: str):
    """copy_shard_rows: repeated and unordered rows land in their targets; a flip in bytes nobody asked for
    (another row, the zero padding of the last chunk) still fails the read before it returns."""
    store = _build(tmp_path / "pristine", codec)
    shard = len(store.shard_ranges()) - 1  # the last shard: a partial chunk padded with zeros
    start, stop = store.shard_ranges()[shard]
    rows = np.array([stop - start - 1, 0, 3, 0])
    targets = [np.full(store.spec.tile_shape, 7, store.spec.dtype) for _ in rows]
    store.copy_shard_rows(shard, rows, targets)
    expected = store.read(start + rows)["tiles"]
    for target, tile in zip(targets, expected, strict=True):
        np.testing.assert_array_equal(target, tile)

    path = store.shard_file(shard)
    tiles_per_chunk = int(store.tiles.chunks[0])
    assert (stop - start) % tiles_per_chunk, "the last shard should end in a partial, padded chunk"
    row_bytes = int(np.prod(store.spec.tile_shape))
    for name, position in (("row 1", row_bytes + 5), ("padding", (stop - start) * row_bytes + 1)):
        work = tmp_path / name
        shutil.copytree(store.path, work)
        target = work / path.relative_to(store.path)
        data = bytearray(target.read_bytes())
        if codec == "none":  # uncompressed: the byte offsets above are the rows' own bytes
            data[position] ^= 0x10
        else:  # compressed: flip a byte inside the first inner chunk's compressed data
            data[7] ^= 0x10
        target.write_bytes(bytes(data))
        damaged = TileStore(work, check=False)
        with pytest.raises(DomainfmError, match=r"does not match its recorded checksum|cannot be decoded"):
            damaged.copy_shard_rows(shard, np.array([stop - start - 1]), [np.empty_like(targets[0])])
