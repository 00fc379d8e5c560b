"""What ``pathology predict`` writes for one slide: QuPath GeoJSON tiles, a pyramidal TIFF map, an overlay.

**The tile grid.** Tiles are cut as ``domainfm pathology tile`` cuts them (:mod:`.tiling`): a square grid
without overlap, tile ``(row, col)`` having its level-0 top-left corner at ``(round(col * side),
round(row * side))`` where ``side = tile_px * mpp / slide_mpp`` is the tile's footprint in level-0 pixels;
only tiles with enough tissue are predicted. :class:`TileGrid` holds one value per grid cell, so memory
grows with the slide's area divided by ``side ** 2`` (a 100k x 100k slide at 0.25 mpp tiled at 224 px, 0.5
mpp: 223 x 223 cells), never with its pixels.

**GeoJSON** (``geojson/SLIDE.geojson``): a FeatureCollection, one Feature per predicted tile, written
while the tiles are predicted (never held in memory). The geometry is the tile's square in level-0 pixel
coordinates (origin at the slide's top-left, x to the right, y down), as QuPath's *File > Import objects*
expects them; the properties follow QuPath's GeoJSON (``qupath.lib.io.PathObjectTypeAdapters`` in QuPath
0.4+): ``objectType`` ``"tile"``, ``classification`` ``{"name", "color": [r, g, b]}`` (the most probable
class), and ``measurements`` ``{"P(CLASS)": probability}`` per class, which QuPath shows in its
measurement tables and can colour by. Probabilities are rounded to 6 decimals.

**The probability map** (``maps/SLIDE.tif``): an OME-TIFF (tifffile), tiled 256 x 256, uint8, channels
``P(CLASS)`` per class (``round(255 * probability)``) and a last channel ``class`` (0: no tile predicted
there, ``k + 1``: class ``k`` most probable). Level 0 has **one pixel per grid cell**: pixel ``(row, col)``
covers the slide's level-0 square ``[col * side, (col + 1) * side) x [row * side, (row + 1) * side)``,
the tile's footprint within half a pixel (the tiler rounds tile corners to whole pixels). So the map
aligns with the slide when scaled by ``side`` about the slide's top-left corner; its physical pixel size,
in the TIFF resolution tags (pixels per centimetre, ``1e4 / (tile_px * mpp)``) and the OME
``PhysicalSizeX``/``Y`` (``tile_px * mpp`` microns), is the tile's, so a viewer that places images by
physical size (QuPath, napari, Bio-Formats) overlays it on the slide directly. Columns and rows past the
last whole tile are not in the map (the tiler does not cut partial tiles). Lower resolutions are SubIFDs
(the OME-TIFF pyramid layout): each halves the one before (rounding up), taking every other pixel (so the
class channel stays a class), down to one pixel.

**The overlay** (``overlays/SLIDE.png``): the slide thumbnail and, beside it, the same thumbnail with every
predicted tile tinted in its class's colour (the GeoJSON's), more opaque the more probable (alpha ``0.2 + 0.6 *
probability``); or, with ``overlay_class``, a heat map of that class's probability (``inferno``, alpha
0.55, colour bar). Colours are matplotlib's ``tab10`` cycle (:func:`domainfm.shared.predict.pictures.palette`).
Both panels are drawn from the thumbnail subsampled to at most :data:`OVERLAY_MAX_SIDE` pixels a side (twice a
panel's pixels in the PNG), so the overlay's memory does not follow the slide's thumbnail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from domainfm.shared.predict.pictures import SOFTWARE, palette

MAP_TILE = 256
OVERLAY_ALPHA = (0.2, 0.6)  # alpha = 0.2 + 0.6 * probability: every predicted tile shows
HEAT_ALPHA = 0.55
OVERLAY_PANEL_INCHES, OVERLAY_DPI = 4.0, 110
# the thumbnail is subsampled to at most twice a panel's pixels before drawing: the PNG cannot show more, and
# the float arrays and matplotlib's resampling copies grow with the pixels drawn (at 1600 px a 40000-px
# slide's overlay took 284 MB above what predict held before it; at 880 px, 80 MB)
OVERLAY_MAX_SIDE = int(2 * OVERLAY_PANEL_INCHES * OVERLAY_DPI)
DECIMALS = 6


def measurement_names(class_names: Sequence[str]) -> list[str]:
    """The GeoJSON measurement (and TIFF channel) name of each class's probability: ``P(CLASS)``."""
    return [f"P({name})" for name in class_names]


@dataclass
class TileGrid:
    """One value per cell of a slide's tile grid: per-tile values (class probabilities), classes, which are set.

    Attributes:
        xs: Level-0 x of each grid column's tiles (the tiler's rounded corners).
        ys: Level-0 y of each grid row's tiles.
        side: Tile side (and grid step) in level-0 pixels.
        values: ``[channels, rows, cols]`` float32 (0 where no tile was predicted).
        labels: ``[rows, cols]`` int16: 0 where no tile was predicted, else 1 + the tile's class.
    """

    xs: np.ndarray
    ys: np.ndarray
    side: float
    values: np.ndarray
    labels: np.ndarray

    @classmethod
    def for_slide(cls, width: int, height: int, side: float, channels: int) -> TileGrid:
        """The empty grid of a ``width`` x ``height`` slide cut into tiles of ``side`` level-0 pixels."""
        from domainfm.domains.pathology.tiling import grid_origins

        origins = grid_origins(width, height, side, side)
        xs, ys = np.unique(origins[:, 0]), np.unique(origins[:, 1])
        shape = (len(ys), len(xs))
        return cls(xs, ys, side, np.zeros((channels, *shape), np.float32), np.zeros(shape, np.int16))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return self.labels.shape

    @property
    def predicted(self) -> np.ndarray:
        """``[rows, cols]`` bool: the cells that hold a tile."""
        return self.labels > 0

    def cells(self, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of tiles with level-0 top-left ``coords`` ``[N, 2]`` (refused if off the grid)."""
        cols, rows = np.searchsorted(self.xs, coords[:, 0]), np.searchsorted(self.ys, coords[:, 1])
        inside = (cols < len(self.xs)) & (rows < len(self.ys))
        if not inside.all():
            raise ValueError("tile corners off the slide's tile grid")
        if (self.xs[cols] != coords[:, 0]).any() or (self.ys[rows] != coords[:, 1]).any():
            raise ValueError("tile corners off the slide's tile grid")
        return rows, cols

    def add(self, coords: np.ndarray, values: np.ndarray, classes: np.ndarray | None = None) -> None:
        """Records ``values`` ``[N, channels]`` and ``classes`` ``[N]`` (default: the largest value's channel)."""
        rows, cols = self.cells(coords)
        self.values[:, rows, cols] = values.T
        self.labels[rows, cols] = (values.argmax(1) if classes is None else np.asarray(classes)) + 1

    def classes(self) -> np.ndarray:
        """``[rows, cols]`` int: 0 where no tile was predicted, else 1 + the tile's class."""
        return self.labels.astype(np.int64)


class GeoJSONTiles:
    """Writes a FeatureCollection of tile squares feature by feature (see the module docstring).

    Each tile is classified (``class_names``, in the colours of :func:`palette`) and carries one
    measurement per name of ``measurements``.
    """

    def __init__(
        self,
        handle: IO[str],
        class_names: Sequence[str],
        side: float,
        members: dict[str, Any],
        measurements: Sequence[str] | None = None,
    ) -> None:
        self.handle, self.side, self.count = handle, float(side), 0
        self.names = list(class_names)
        self.measurements = list(measurements or measurement_names(class_names))
        self.colours = [[int(v) for v in colour] for colour in palette(len(self.names))]
        head = json.dumps({"type": "FeatureCollection", **members})[:-1]  # foreign members first, then features
        handle.write(head + ', "features": [\n')

    def write(self, coords: np.ndarray, values: np.ndarray, classes: np.ndarray | None = None) -> None:
        """One Feature per tile: level-0 top-left ``coords`` ``[N, 2]``, ``values`` ``[N, measurements]``.

        ``classes`` ``[N]`` default to the largest value's index (class probabilities).
        """
        values = np.asarray(values, np.float64)
        classes = values.argmax(1) if classes is None else np.asarray(classes)
        for (x, y), row, best in zip(coords.tolist(), values, classes.tolist(), strict=True):
            x, y = float(x), float(y)
            x1, y1 = round(x + self.side, 3), round(y + self.side, 3)
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]]},
                "properties": {
                    "objectType": "tile",
                    "classification": {"name": self.names[best], "color": self.colours[best]},
                    "measurements": {
                        name: round(float(v), DECIMALS) for name, v in zip(self.measurements, row, strict=True)
                    },
                },
            }
            self.handle.write((",\n" if self.count else "") + json.dumps(feature))
            self.count += 1

    def close(self) -> None:
        """Ends the collection."""
        self.handle.write("\n]}\n")


def pyramid(level0: np.ndarray) -> list[np.ndarray]:
    """``[C, H, W]`` and every coarser level: every other pixel of the one before, down to one pixel."""
    levels = [level0]
    while max(levels[-1].shape[1:]) > 1:
        levels.append(np.ascontiguousarray(levels[-1][:, ::2, ::2]))
    return levels


def map_channels(grid: TileGrid) -> np.ndarray:
    """``[classes + 1, rows, cols]`` uint8: probabilities x 255 per class, then the class channel."""
    scaled = np.clip(np.rint(grid.values * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([scaled, grid.classes()[None].astype(np.uint8)])


def write_map(path: Path, channels: np.ndarray, names: Sequence[str], tile_um: float) -> int:
    """Writes ``channels`` ``[C, rows, cols]`` as a pyramidal OME-TIFF (module docstring); returns its levels."""
    import tifffile

    levels = pyramid(channels)
    pixels_per_cm = 1e4 / tile_um
    metadata = {
        "axes": "CYX",
        "Channel": {"Name": list(names)},
        "PhysicalSizeX": tile_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": tile_um,
        "PhysicalSizeYUnit": "µm",
    }
    options = {"tile": (MAP_TILE, MAP_TILE), "photometric": "minisblack", "compression": "zlib",
               "resolutionunit": "CENTIMETER", "software": SOFTWARE}  # fmt: skip
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, resolution=(pixels_per_cm, pixels_per_cm),
                  metadata=metadata, **options)  # fmt: skip
        for k, level in enumerate(levels[1:], start=1):
            scale = pixels_per_cm / 2**k
            tif.write(level, subfiletype=1, resolution=(scale, scale), metadata=None, **options)
    return len(levels)


def write_probability_map(path: Path, grid: TileGrid, class_names: Sequence[str], tile_um: float) -> int:
    """Writes the pyramidal probability map (uint8 ``P(CLASS)`` x 255 and the class channel); returns its levels."""
    return write_map(path, map_channels(grid), [*measurement_names(class_names), "class"], tile_um)


def is_domainfm_tiles(path: Path) -> bool:
    """Whether ``path`` is a tile GeoJSON or map that domainfm wrote (its ``domainfm`` member, its Software tag)."""
    try:
        if path.suffix.lower() == ".geojson":
            with open(path, encoding="utf-8") as handle:
                return handle.read(64).startswith('{"type": "FeatureCollection", "domainfm": ')
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].software or "").startswith("domainfm")
    except Exception:  # missing, unreadable or another format: not ours
        return False


def _thumbnail_cells(grid: TileGrid, shape: tuple[int, int], downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid ``(rows, cols)`` under each thumbnail pixel centre (-1 outside the grid)."""
    height, width = shape

    def index(n: int, edges: np.ndarray) -> np.ndarray:
        centre = (np.arange(n) + 0.5) * downsample
        cell = np.floor(centre / grid.side).astype(np.int64)
        return np.where((cell >= 0) & (cell < len(edges)), cell, -1)

    return index(height, grid.ys), index(width, grid.xs)


def overlay_layers(
    grid: TileGrid, thumbnail: np.ndarray, downsample: float, overlay_class: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``(colour [h, w, 3] floats 0..1, alpha [h, w])`` of the predictions over a thumbnail (module docstring)."""
    from matplotlib import colormaps

    rows, cols = _thumbnail_cells(grid, thumbnail.shape[:2], downsample)
    inside = (rows[:, None] >= 0) & (cols[None, :] >= 0)
    r, c = np.clip(rows, 0, None)[:, None], np.clip(cols, 0, None)[None, :]
    shown = inside & grid.predicted[r, c]
    if overlay_class is None:
        classes = grid.values.argmax(0)[r, c]
        colour = palette(grid.values.shape[0])[classes].astype(np.float32) / 255.0
        alpha = OVERLAY_ALPHA[0] + OVERLAY_ALPHA[1] * grid.values.max(0)[r, c]
    else:
        colour = colormaps["inferno"](grid.values[overlay_class][r, c], bytes=True)[..., :3] / np.float32(255)
        alpha = np.full(shown.shape, HEAT_ALPHA, np.float32)
    return colour, np.where(shown, alpha, np.float32(0)).astype(np.float32)


def write_overlay(
    path: Path,
    grid: TileGrid,
    thumbnail: np.ndarray,
    downsample: float,
    class_names: Sequence[str],
    title: str,
    overlay_class: int | None = None,
) -> Path:
    """The thumbnail beside the predictions drawn over it, with a legend or a colour bar (module docstring)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    step = max(1, int(np.ceil(max(thumbnail.shape[:2]) / OVERLAY_MAX_SIDE)))
    picture = thumbnail[::step, ::step].astype(np.float32) / np.float32(255)
    colour, alpha = overlay_layers(grid, thumbnail[::step, ::step], downsample * step, overlay_class)
    blended = picture * (1 - alpha[..., None]) + colour * alpha[..., None]
    height, width = picture.shape[:2]
    panel = OVERLAY_PANEL_INCHES
    fig = Figure(figsize=(2 * panel + 1.6, panel * height / width + 0.9), dpi=OVERLAY_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.06 if overlay_class is not None else 0.35])
    for ax, shown, caption in ((axes[0], picture, "thumbnail"), (axes[1], blended, "predicted tiles")):
        ax.imshow(shown, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(caption, fontsize=8)
    if overlay_class is None:
        counts = np.bincount(grid.classes()[grid.predicted] - 1, minlength=len(class_names))
        colours = palette(len(class_names)) / 255.0
        handles = [Patch(color=colours[k], label=f"{name} ({counts[k]})") for k, name in enumerate(class_names)]
        axes[2].legend(handles=handles, loc="center left", fontsize=7, frameon=False, title="class (tiles)")
        axes[2].set_axis_off()
    else:
        from matplotlib.cm import ScalarMappable

        mappable = ScalarMappable(Normalize(0, 1), colormaps["inferno"])
        fig.colorbar(mappable, cax=axes[2], label=f"P({class_names[overlay_class]})")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, format="png", dpi=OVERLAY_DPI, metadata={"Software": SOFTWARE})
    return Path(path)
