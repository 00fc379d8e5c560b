"""The tile store and its streaming loader: every domain's data path.

Raw files are read once by a domain reader into a zarr v3 :class:`TileStore` (``ingest``: parallel through
Dask, resumable, memory bounded) and streamed from there to the accelerator by :class:`TileStream`.
See ``docs/tiles.md`` for the layout measurements and the benchmark.
"""

from domainfm.shared.tiles.ingest import IngestSummary, ingest
from domainfm.shared.tiles.schema import SPLITS, Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.stats import RunningStats
from domainfm.shared.tiles.store import StoreError, TileStore
from domainfm.shared.tiles.stream import TileStream, flip_rotate
from domainfm.shared.tiles.verify import verify_store

__all__ = [
    "SPLITS",
    "Companion",
    "IngestSummary",
    "RunningStats",
    "StoreError",
    "StoreSpec",
    "TileBatch",
    "TileStore",
    "TileStream",
    "flip_rotate",
    "ingest",
    "verify_store",
]
