"""What a tile store holds: the schema shared by every domain.

A store is one zarr v3 group per dataset::

    STORE/                      attrs: schema_version, status, domain, tile_shape, dtype, channels,
                                       value_scaling, label_names, layout, stats, sources, companions
      tiles        [N, C, H, W] sharded (see layout.py)
      index/source [N] int32    row of the sources table the tile came from
      index/x, y   [N] int64    tile origin: level-0 pixels (slides), pixel window (rasters), 0 otherwise
      index/scale  [N] float32  physical size of a pixel: microns (slides) or metres (rasters); 0 if unknown
      index/split  [N] int8     0 train, 1 val, 2 test, -1 unassigned
      index/label  [N] int32    class id into label_names, -1 for none
      companions/NAME [N, ...]  per-tile extras keyed by tile id: masks, validity, text, multi-labels

``status`` is ``complete`` only once every array and attribute is written; a store interrupted during
ingest says ``ingesting`` and refuses to open until the same ingest command is rerun.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
INDEX_COLUMNS: dict[str, str] = {
    "source": "int32",
    "x": "int64",
    "y": "int64",
    "scale": "float32",
    "split": "int8",
    "label": "int32",
}
INDEX_DEFAULTS: dict[str, float] = {"source": 0, "x": 0, "y": 0, "scale": 0.0, "split": -1, "label": -1}
SPLITS = {"train": 0, "val": 1, "test": 2}


def stable_split(key: str, val_fraction: float = 0.15, test_fraction: float = 0.15) -> int:
    """A split id decided by a hash of ``key`` (a stem, study id, chip id), never by position.

    The same key always lands in the same split, so adding or reordering sources moves nothing.
    """
    import hashlib

    u = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 16**8
    if u < test_fraction:
        return SPLITS["test"]
    return SPLITS["val"] if u < test_fraction + val_fraction else SPLITS["train"]


GENERIC_DOMAIN = "generic"  # stores of plain arrays (`tiles ingest`); other names are registered domains
TEXT = "str"
CODECS = ("blosc-lz4", "zstd-1", "none")


@dataclass(frozen=True)
class Companion:
    """A per-tile companion array: ``shape`` per tile (``()`` for scalars) and dtype (``"str"`` for text)."""

    shape: tuple[int, ...] = ()
    dtype: str = "uint8"


@dataclass
class StoreSpec:
    """Everything about a dataset that is fixed before its first tile is written.

    Attributes:
        domain: ``generic`` or a registered domain's name (:mod:`domainfm.shared.plugins`).
        tile_shape: ``(C, H, W)``.
        dtype: Tile dtype (``uint8`` RGB, ``uint16`` radiographs, ``float16``/``float32`` MODIS chips).
        channels: One dict per channel with at least ``name``; optionally ``unit``, ``wavelength_um``, ``band``.
        value_scaling: How stored values map to physical values or to [0, 1] (free-form, recorded).
        label_names: Names of ``index/label`` class ids.
        companions: Name -> :class:`Companion`.
        codec: ``blosc-lz4`` (default), ``zstd-1`` or ``none``.
    """

    domain: str
    tile_shape: tuple[int, int, int]
    dtype: str
    channels: list[dict[str, Any]]
    value_scaling: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    companions: dict[str, Companion] = field(default_factory=dict)
    codec: str = "blosc-lz4"

    def __post_init__(self) -> None:
        self.tile_shape = tuple(int(v) for v in self.tile_shape)  # type: ignore[assignment]
        self.dtype = str(np.dtype(self.dtype))
        self.companions = {
            k: v if isinstance(v, Companion) else Companion(tuple(v["shape"]), v["dtype"])
            for k, v in self.companions.items()
        }
        if self.domain != GENERIC_DOMAIN:
            from domainfm.shared.plugins import domains

            if self.domain not in domains():
                known = [GENERIC_DOMAIN, *domains().names()]
                raise ValueError(f"unknown domain {self.domain!r}; choose from {known}")
        if len(self.tile_shape) != 3:
            raise ValueError(f"tile_shape must be (C, H, W), got {self.tile_shape}")
        if len(self.channels) != self.tile_shape[0]:
            raise ValueError(f"{len(self.channels)} channel descriptions for {self.tile_shape[0]} channels")
        if any("name" not in c for c in self.channels):
            raise ValueError("every channel description needs a 'name'")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose from {CODECS}")

    def to_attrs(self) -> dict[str, Any]:
        """JSON form for the group attributes."""
        data = asdict(self)
        data["tile_shape"] = list(self.tile_shape)
        data["companions"] = {k: {"shape": list(v.shape), "dtype": v.dtype} for k, v in self.companions.items()}
        return data

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSpec:
        """Inverse of :meth:`to_attrs`."""
        names = ("domain", "tile_shape", "dtype", "channels", "value_scaling", "label_names", "companions", "codec")
        return cls(**{k: attrs[k] for k in names if k in attrs})


@dataclass
class TileBatch:
    """What a reader yields: a few tiles with their index columns and companions.

    ``index`` maps column names of ``INDEX_COLUMNS`` (except ``source``, set by the engine) to arrays of
    length ``n``; missing columns take their defaults. ``valid`` (``[n, 1, H, W]``, nonzero = valid)
    excludes fill values from the statistics; store it as a companion too when training needs it.
    ``source_meta`` (any batch, even an empty one) is merged into the source's row of the sources table:
    what a reader learnt about the whole source (a slide's mpp and where it came from, its size).
    """

    tiles: np.ndarray
    index: dict[str, np.ndarray] = field(default_factory=dict)
    companions: dict[str, Any] = field(default_factory=dict)
    valid: np.ndarray | None = None
    source_meta: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.tiles)
