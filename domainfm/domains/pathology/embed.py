"""Per-tile embeddings of a tile store, streamed into zarr (``domainfm pathology embed``).

The embedding store follows the domainfm contract of ``shared/methods/pluto.md`` section 5 (TRIDENT/CLAM
carry the same content in HDF5): a zarr v3 group with ``features [N, D]`` float32, ``coords [N, 2]``
int64 level-0 top-left, and per tile ``slide`` (row of the ``slides`` attribute), ``mpp``, ``label``,
``split``, ``tile_id`` (row in the tile store); attributes name the encoder, its metadata, the tile store
and its slides (path, mpp and its source, level-0 size).

Memory is bounded by one batch. The group is written under ``OUT.partial-<pid>-<hex>`` (a name unique to
the run, :mod:`domainfm.shared.outputs`) with a ``rows_done`` counter updated after every batch; a killed run
continues from there when rerun with the same command, and the folder is renamed to ``OUT`` only when every
tile is embedded. One run writes ``OUT`` at a time (a lock), and ``--overwrite`` replaces only an embedding
store, never another folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from domainfm.domains.pathology.pretrain import load_encoder, store_normalization, store_transform, tile_transform
from domainfm.shared.engine import resolve_device
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model.encoders import tile_input
from domainfm.shared.outputs import check_output, leftovers, lock_output, partial_path, replace_output
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

EMBEDDING_VERSION = 1


def _encoder(checkpoint: Path | None, backbone: str, store: TileStore, seed: int) -> tuple[Any, dict[str, Any]]:
    if checkpoint is not None:
        encoder, meta = load_encoder(Path(checkpoint))
        return encoder, {"checkpoint": str(Path(checkpoint).resolve()), **meta}
    from domainfm.shared.backbones import create_backbone

    torch.manual_seed(seed)
    tile_px = store.spec.tile_shape[-1]
    encoder = create_backbone(backbone, in_chans=3, img_size=tile_px)
    normalization = store_normalization(store)
    record = tile_transform(normalization, tile_px, store.spec.value_scaling.get("mpps"))
    return encoder, {
        "checkpoint": None,
        "random_init_seed": seed,
        "normalization": normalization,
        "transform": record.to_dict(),
    }


def prepare_tiles(tiles: torch.Tensor, prepare: Any) -> torch.Tensor:
    """One batch of store tiles as the encoder's input (``prepare`` from :func:`tile_input` of its record)."""
    return prepare(tiles)


def _slides(store: TileStore) -> list[dict[str, Any]]:
    return [{"path": s["path"], **(s.get("meta") or {})} for s in store.sources]


def embed_store(
    store_path: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_vit",
    batch_size: int = 64,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Embeds every tile of the store with the encoder of ``checkpoint`` (random-initialised when ``None``).

    ``checkpoint`` is a ``pathology pretrain`` encoder or a converted foundation checkpoint; tiles go
    through the encoder's transform record (:func:`~domainfm.shared.model.encoders.tile_input`).
    """
    store, out = TileStore(store_path), Path(out)
    with lock_output(out, "embedding store"):  # one writer per embedding store
        check_output(out, "embedding store", overwrite, lambda path: is_embedding_store(path, complete=False))
        return _embed_locked(store, out, checkpoint, backbone, batch_size, seed, device)


def is_embedding_store(path: Path, complete: bool = True) -> bool:
    """Whether ``path`` is an embedding store :func:`embed_store` wrote (finished, or any when not ``complete``)."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) and meta.get("node_type") == "group" else None
    if not isinstance(attrs, dict) or not {"version", "encoder", "tile_store", "rows_done"} <= set(attrs):
        return False
    return attrs.get("status") == "complete" or not complete


def _resumable(out: Path, attrs: dict[str, Any]) -> Path | None:
    """A killed run's ``OUT.partial-*`` of the same encoder and store (to continue); other leftovers go."""
    found = None
    for path in leftovers(out):
        if not is_embedding_store(path, complete=False):
            continue  # not ours: never touched
        group = zarr.open_group(path, mode="r")
        if found is None and {k: group.attrs.get(k) for k in attrs} == attrs:
            found = path
        else:
            shutil.rmtree(path)  # a dead run's embedding partial (we hold the lock on `out`)
    return found


def _embed_locked(
    store: TileStore, out: Path, checkpoint: Path | None, backbone: str, batch_size: int, seed: int, device: str
) -> Path:
    torch_device = resolve_device(device)
    encoder, meta = _encoder(checkpoint, backbone, store, seed)
    prepare = tile_input(store_transform(meta, store, checkpoint or store.path))
    encoder = encoder.to(torch_device).eval()
    attrs = {
        "version": EMBEDDING_VERSION,
        "encoder": encoder.build_args,
        "encoder_meta": meta,
        "tile_store": str(store.path.resolve()),
        "n_tiles": len(store),
        "tile_px": store.spec.tile_shape[-1],
        "slides": _slides(store),
        "label_names": list(store.spec.label_names),
    }
    attrs = json.loads(json.dumps(attrs))  # as zarr stores them, so a leftover compares equal
    partial = _resumable(out, attrs) or partial_path(out)
    group = _open_partial(partial, attrs, len(store), encoder.embed_dim)
    start = int(group.attrs["rows_done"])
    index = store.index
    ids = np.arange(start, len(store))
    for batch in TileStream(store, batch_size, indices=ids, shuffle=False, device=torch_device, normalize=False):
        rows = batch["tile_id"].cpu().numpy()
        with torch.no_grad():
            features = encoder(prepare_tiles(batch["tiles"], prepare)).float().cpu().numpy()
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo != len(rows):
            raise RuntimeError(f"tile stream gave rows {lo}..{hi} out of order")  # an ordered stream never does
        group["features"][lo:hi] = features
        group["coords"][lo:hi] = np.stack([index["x"][lo:hi], index["y"][lo:hi]], axis=1)
        for name, column in (("slide", "source"), ("mpp", "scale"), ("label", "label"), ("split", "split")):
            group[name][lo:hi] = index[column][lo:hi]
        group["tile_id"][lo:hi] = rows
        group.attrs["rows_done"] = hi
    group.attrs["status"] = "complete"
    return replace_output(partial, out)


def _open_partial(partial: Path, attrs: dict[str, Any], n: int, dim: int) -> zarr.Group:
    """The partial group to continue (same encoder and store), or a fresh one."""
    if (partial / "zarr.json").is_file():
        group = zarr.open_group(partial, mode="r+")
        same = {k: group.attrs.get(k) for k in attrs} == attrs
        if same and group["features"].shape == (n, dim):
            return group
        shutil.rmtree(partial)
    group = zarr.open_group(partial, mode="w")
    rows = max(1, min(n, 4096))
    group.create_array("features", shape=(n, dim), dtype="float32", chunks=(rows, dim))
    group.create_array("coords", shape=(n, 2), dtype="int64", chunks=(rows, 2))
    for name, dtype in (("slide", "int32"), ("mpp", "float32"), ("label", "int32"), ("split", "int8")):
        group.create_array(name, shape=(n,), dtype=dtype, chunks=(rows,))
    group.create_array("tile_id", shape=(n,), dtype="int64", chunks=(rows,))
    group.attrs.put({**attrs, "rows_done": 0, "status": "embedding"})
    return group


@dataclass
class Embeddings:
    """An embedding store read into memory (features are small: N x D float32)."""

    path: Path
    features: np.ndarray
    coords: np.ndarray
    slide: np.ndarray
    mpp: np.ndarray
    label: np.ndarray
    split: np.ndarray
    attrs: dict[str, Any]

    @property
    def slides(self) -> list[dict[str, Any]]:
        """One entry per slide (path, mpp, level-0 size, ...), indexed by ``slide``."""
        return self.attrs["slides"]


def read_embeddings(path: Path) -> Embeddings:
    """An embedding store written by :func:`embed_store`; refuses an unfinished one."""
    path = Path(path)
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as error:  # missing folder, not zarr
        raise DomainfmError(f"{path} is not an embedding store: {error}") from error
    attrs = dict(group.attrs)
    if attrs.get("status") != "complete":
        raise DomainfmError(f"{path} is not a complete embedding store; rerun `domainfm pathology embed`")
    columns = {name: np.asarray(group[name][:]) for name in ("features", "coords", "slide", "mpp", "label", "split")}
    return Embeddings(path, attrs=attrs, **columns)
