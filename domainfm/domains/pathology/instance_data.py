"""Instance-labelled pictures (nuclei, glands) -> a pathology tile store with instance companions.

Nuclei and gland datasets ship an RGB picture per field and an *instance label image* beside it: one
integer id per object, 0 for background (MoNuSeg, PanNuke, Lizard, GlaS, CoNSeP; PNG or TIFF), plus the
class of each id (a CSV ``image,id,class``, e.g. exported from the dataset's ``.mat``/``.npy`` type
lists; without one every object is ``nucleus``). Pictures and label images pair by stem, as
``segmentation ingest`` pairs masks (a label stem may end in ``_label``/``_instances``/``_mask``/...).

Each picture is cut into ``tile_size`` tiles on a grid of step ``tile_size - overlap`` (a last row and
column flush with the far edges, so every pixel is in a tile). Per tile the store holds three companions:

* ``instances`` ``[H, W]`` uint16: the objects in the tile, renumbered ``1..n`` in order of their source
  id; an object cut by the tile's edge is **clipped, not dropped** (every pixel of it inside the tile keeps
  its id), and ids are unique within a tile;
* ``instance_class`` ``[max_instances + 1]`` int16: the class (index into the store's
  ``value_scaling["instance_classes"]``) of each tile id; entry 0 and unused entries are -1;
* ``instance_source_id`` ``[max_instances + 1]`` int32: the id each tile id had in the label image (0
  unused), so tiles can be stitched back and ingest checked object by object.

``index/x, y`` hold the tile's top-left pixel in the picture, ``index/scale`` the mpp given, the split is
per picture (stable hash of its stem, or a ``--splits`` CSV). Slides annotated with QuPath/GeoJSON polygons
become the same companions through :mod:`.instance_geojson`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.splits import SplitTable, group_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_SUFFIXES = ("_label", "_labels", "_instances", "_instance", "_mask", "_inst", "_gt")
DEFAULT_CLASS = "nucleus"
MAX_INSTANCES = 1024
READER_NAME = "pathology.instance_images"
READER_VERSION = "1"


class InstanceDataError(DomainfmError, ValueError):
    """Instance pictures, label images or class tables that cannot be used; the message names the file and fix."""


@dataclass
class InstanceParams:
    """How pictures are tiled (fixed for a store).

    Attributes:
        tile_px: Tile side.
        overlap: Pixels shared by neighbouring tiles.
        mpp: Microns per pixel of the pictures (``index/scale``; 0 when unknown).
        class_names: Instance classes, in id order.
        classes: Picture stem -> {label id -> class index}; an empty dict: every id is class 0.
        max_instances: Largest number of objects in one tile.
        splits: A ``--splits`` table; hash of the stem when None.
    """

    tile_px: int
    overlap: int = 0
    mpp: float | None = None
    class_names: list[str] = field(default_factory=lambda: [DEFAULT_CLASS])
    classes: dict[str, dict[int, int]] = field(default_factory=dict)
    max_instances: int = MAX_INSTANCES
    splits: SplitTable | None = None


def _pictures(folder: Path, strip: tuple[str, ...] = ()) -> dict[str, Path]:
    if not Path(folder).is_dir():
        raise InstanceDataError(f"{folder} is not a folder of pictures")
    found: dict[str, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem
        for suffix in strip:
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in found:
            raise InstanceDataError(f"{found[stem]} and {path} share the stem {stem!r}; keep one of them")
        found[stem] = path
    return found


def pair_pictures(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(picture, label image) pairs by stem; any picture without a label image (or the reverse) is refused."""
    pictures, label_files = _pictures(images), _pictures(labels, LABEL_SUFFIXES)
    alone = sorted(set(pictures) ^ set(label_files))
    if alone or not pictures:
        listed = ", ".join(alone[:5]) + (" ..." if len(alone) > 5 else "")
        raise InstanceDataError(
            f"pictures in {images} and label images in {labels} must pair by stem; unpaired: {listed or 'no pictures'}"
        )
    return [(pictures[s], label_files[s]) for s in sorted(pictures)]


def read_instance_labels(path: Path) -> np.ndarray:
    """An instance label image as ``[H, W]`` int64 ids (PNG/TIFF of one channel; 0 = background)."""
    from PIL import Image

    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as error:  # PIL and tifffile raise many types for unreadable files
        raise InstanceDataError(f"{path}: not a readable label image ({error})") from error
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise InstanceDataError(
            f"{path}: an RGB picture, not an instance label image; save the ids as one 16- or 32-bit channel "
            "(PNG mode I;16 or TIFF)"
        )
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise InstanceDataError(
            f"{path}: expected a 2-D image of non-negative integer ids, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64)


def read_class_table(path: Path) -> tuple[list[str], dict[str, dict[int, int]]]:
    """Class names (sorted) and stem -> {id -> class index} from a CSV with columns ``image,id,class``."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise InstanceDataError(f"{path}: cannot read the class table ({error})") from error
    if not rows or not {"image", "id", "class"} <= set(rows[0]):
        raise InstanceDataError(f"{path}: expected a CSV with the columns image,id,class (one row per object)")
    names = sorted({row["class"] for row in rows})
    table: dict[str, dict[int, int]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            ident = int(row["id"])
        except ValueError as error:
            raise InstanceDataError(f"{path}, line {line}: id {row['id']!r} is not an integer") from error
        table.setdefault(Path(row["image"]).stem, {})[ident] = names.index(row["class"])
    return names, table


def grid_origins(extent: int, tile: int, step: int) -> np.ndarray:
    """Tile origins along one axis: ``0, step, ...`` and a last one flush with the far edge."""
    origins = list(range(0, extent - tile + 1, step))
    if origins[-1] + tile < extent:
        origins.append(extent - tile)
    return np.array(origins, np.int64)


def tile_instances(
    ids: np.ndarray, classes: dict[int, int] | None, max_instances: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile's companions from its crop of a label image: (renumbered ids, class per id, source id per id).

    ``classes`` maps source ids to class indices (None: every object is class 0). Objects cut by the crop
    keep every pixel inside it.
    """
    source, local = np.unique(ids, return_inverse=True)
    local = local.reshape(ids.shape)
    if source[0] != 0:  # no background in the tile: ids start at 1
        source, local = np.concatenate([[0], source]), local + 1
    count = len(source) - 1
    if count > max_instances:
        raise InstanceDataError(f"a tile holds {count} objects, more than --max_instances {max_instances}")
    klass = np.full(max_instances + 1, -1, np.int16)
    sources = np.zeros(max_instances + 1, np.int32)
    sources[1 : count + 1] = source[1:]
    if classes is None:
        klass[1 : count + 1] = 0
    else:
        missing = [int(s) for s in source[1:] if int(s) not in classes]
        if missing:
            raise KeyError(missing)
        klass[1 : count + 1] = [classes[int(s)] for s in source[1:]]
    return local.astype(np.uint16), klass, sources


def read_instance_picture(path: Path, labels: dict[str, str], params: InstanceParams) -> Iterator[TileBatch]:
    """Reader for the ingest engine: one picture and its label image as tiles with instance companions."""
    path = Path(path)
    label_path = Path(labels[str(path)])
    image = _read_rgb(path)
    ids = read_instance_labels(label_path)
    if image.shape[:2] != ids.shape:
        raise InstanceDataError(f"{path} is {image.shape[:2]} pixels but its label image {label_path} is {ids.shape}")
    height, width = ids.shape
    tile = params.tile_px
    if min(height, width) < tile:
        raise InstanceDataError(f"{path} ({width}x{height}) is smaller than --tile_size {tile}; use a smaller tile")
    classes = params.classes.get(path.stem) if params.classes else None
    if params.classes and classes is None:
        raise InstanceDataError(f"the class table has no rows for {path.stem}; add its objects (image,id,class)")
    step = tile - params.overlap
    xs, ys = grid_origins(width, tile, step), grid_origins(height, tile, step)
    n = len(xs) * len(ys)
    out_ids = np.zeros((n, tile, tile), np.uint16)
    out_class = np.zeros((n, params.max_instances + 1), np.int16)
    out_source = np.zeros((n, params.max_instances + 1), np.int32)
    tiles = np.zeros((n, 3, tile, tile), np.uint8)
    coords = np.zeros((n, 2), np.int64)
    k = 0
    for y in ys:
        for x in xs:
            crop = ids[y : y + tile, x : x + tile]
            try:
                out_ids[k], out_class[k], out_source[k] = tile_instances(crop, classes, params.max_instances)
            except KeyError as missing:
                raise InstanceDataError(
                    f"{label_path}: ids {missing.args[0][:5]} have no class in the class table; add rows "
                    f"'{path.stem},ID,CLASS'"
                ) from None
            except InstanceDataError as error:
                raise InstanceDataError(f"{label_path} at x={x}, y={y}: {error}") from None
            tiles[k] = image[y : y + tile, x : x + tile].transpose(2, 0, 1)
            coords[k] = (x, y)
            k += 1
    split = group_split(path.stem, params.splits, aliases=(path.name,))
    yield TileBatch(
        tiles,
        index={
            "x": coords[:, 0],
            "y": coords[:, 1],
            "scale": np.full(n, params.mpp or 0.0, np.float32),
            "split": np.full(n, split, np.int8),
        },
        companions={"instances": out_ids, "instance_class": out_class, "instance_source_id": out_source},
        source_meta={"labels": str(label_path), "size": [width, height], "group": path.stem},
    )


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except OSError as error:
        raise InstanceDataError(f"{path}: not a readable picture ({error})") from error


def instance_spec(params: InstanceParams) -> StoreSpec:
    """The store spec of RGB tiles with instance companions."""
    tile, slots = params.tile_px, params.max_instances + 1
    scaling = {
        "tiles": "8-bit RGB",
        "tile_px": tile,
        "overlap": params.overlap,
        "mpps": [params.mpp] if params.mpp else None,
        "coords": "index/x, index/y: top-left pixel in the picture (level 0 of a slide)",
        "instance_classes": list(params.class_names),
        "instances": "companions/instances: object ids 1..n per tile (0 background), clipped at tile edges",
    }
    companions = {
        "instances": Companion((tile, tile), "uint16"),
        "instance_class": Companion((slots,), "int16"),
        "instance_source_id": Companion((slots,), "int32"),
    }
    return StoreSpec("pathology", (3, tile, tile), "uint8", [{"name": c} for c in "RGB"], scaling, [], companions)


def ingest_instances(
    images: Path,
    labels: Path,
    out: Path,
    classes: Path | None = None,
    tile_size: int = 256,
    overlap: int = 0,
    mpp: float | None = None,
    max_instances: int = MAX_INSTANCES,
    splits: Path | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Pairs pictures with label images and ingests them as tiles with instance companions (module docstring)."""
    from domainfm.shared.tiles.ingest import ingest
    from domainfm.shared.tiles.splits import read_splits_csv

    if overlap >= tile_size:
        raise InstanceDataError(f"--overlap {overlap} must be smaller than --tile_size {tile_size}")
    pairs = pair_pictures(Path(images), Path(labels))
    names, table = read_class_table(Path(classes)) if classes else ([DEFAULT_CLASS], {})
    split_table = read_splits_csv(Path(splits)) if splits else None
    for picture, _ in pairs:  # every picture listed in --splits before anything is written
        group_split(picture.stem, split_table, aliases=(picture.name,))
    params = InstanceParams(tile_size, overlap, mpp, names, table, max_instances, split_table)
    reader = partial(read_instance_picture, labels={str(p): str(lab) for p, lab in pairs}, params=params)
    return ingest(
        [p for p, _ in pairs], Path(out), instance_spec(params), reader, READER_NAME, READER_VERSION, workers,
        None, False, overwrite, progress,
    )  # fmt: skip
