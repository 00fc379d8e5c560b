"""``pathology predict`` with an ABMIL slide classifier: the slide's class, its attention over the tissue tiles.

The slide is walked as for a tile classifier (:func:`.predict.slide_walk`: the tiler's grid, tissue
detector and bounded reader at the model's mpp). Each batch of raw tiles goes through the model's contract
(:mod:`.slide_model`: stored transform, encoder, ABMIL projection and gated score), and the bag is pooled
as it streams (:class:`.slide_model.AttentionPool`, exact), so what is kept is one score and one
probability per class per tile. For a slide ``NAME.svs`` the outputs, in the formats of
:mod:`.predict_maps`, are

* a row of ``predictions.csv``: ``predicted`` (the slide's class), ``P(CLASS)`` per class (the slide's
  probabilities), and the :data:`TOP_TILES` most attended tiles, ``top1_x``, ``top1_y`` (the tile's
  level-0 top-left corner) and ``top1_attention`` to ``top5_*``, with the tile's level-0 side;
* ``geojson/NAME.geojson``: one QuPath tile object per tissue tile with measurements ``attention`` and
  ``P(CLASS)`` (the slide model on that tile alone, a bag of one), classified by the latter;
* ``maps/NAME.tif``: the pyramidal OME-TIFF map (one pixel per tile, aligned as the tile classifier's),
  float32 channels ``attention``, ``P(CLASS)`` and ``class``;
* ``overlays/NAME.png``: the ``pathology mil`` attention heat-map (:func:`.mil.attention_heatmap`) over the
  slide's thumbnail, titled with the slide's probabilities.

A slide without a tissue tile has no bag: it gets an empty FeatureCollection, an all-zero map, the bare
thumbnail and a row with 0 tiles and no prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.predict import InputFile, Outputs

TOP_TILES = 5
ATTENTION = "attention"


@torch.no_grad()
def _tile_parts(deployable: Deployable, raw: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(h, score, tile probabilities)`` of raw uint8 tiles through the contract's transform and the model."""
    contract = deployable.network
    contract.eval()
    tiles = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)).to(device)
    h, scores, logits = contract.network.tile_parts(contract.transform(tiles))
    return h, scores, torch.softmax(logits.float(), dim=1)


def _top_tiles(coords: np.ndarray, attention: np.ndarray) -> dict[str, Any]:
    """``topK_x``, ``topK_y``, ``topK_attention`` of the most attended tiles (ties: the earlier tile first)."""
    order = np.argsort(-attention, kind="stable")[:TOP_TILES]
    row: dict[str, Any] = {}
    for k in range(TOP_TILES):
        found = k < len(order)
        i = int(order[k]) if found else 0
        row[f"top{k + 1}_x"] = int(coords[i, 0]) if found else None
        row[f"top{k + 1}_y"] = int(coords[i, 1]) if found else None
        row[f"top{k + 1}_attention"] = float(attention[i]) if found else None
    return row


def predict_mil_slide(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    *,
    mpp: float | None = None,
    assume_mpp: float | None = None,
    min_tissue: float = 0.5,
    batch: int = 64,
    device: torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The slide's ABMIL prediction and attention, written as the module docstring says."""
    from domainfm.domains.pathology.mil import FIGURE_LONG_SIDE_PX, attention_heatmap
    from domainfm.domains.pathology.predict import slide_walk
    from domainfm.domains.pathology.predict_maps import GeoJSONTiles, measurement_names, write_map
    from domainfm.domains.pathology.slide_model import AttentionPool

    names = list(deployable.card.class_names)
    device = device or torch.device("cpu")
    head = deployable.network.network.head
    channels = [ATTENTION, *measurement_names(names)]
    with slide_walk(deployable, item, len(channels), mpp=mpp, assume_mpp=assume_mpp, min_tissue=min_tissue,
                    batch=batch, progress=progress) as walk:  # fmt: skip
        coords, grid, tiles = walk.coords, walk.grid, walk.tiles
        pool = AttentionPool(head, len(coords))
        tile_probabilities = np.zeros((len(coords), len(names)), np.float32)
        start = 0
        for where, raw in walk.batches():
            h, scores, probabilities = _tile_parts(deployable, raw, device)
            pool.add(h, scores)
            tile_probabilities[start : start + len(where)] = probabilities.cpu().numpy()
            start += len(where)
        attention = pool.attention() if len(coords) else np.zeros(0)
        values = np.concatenate([attention[:, None].astype(np.float32), tile_probabilities], axis=1)
        classes = tile_probabilities.argmax(1)
        grid.add(coords, values, classes)
        with open(outputs.path("geojson", ".geojson"), "w", encoding="utf-8") as handle:
            features = GeoJSONTiles(handle, names, tiles.side, walk.members, channels)
            features.write(coords, values, classes)
            features.close()
        levels = write_map(outputs.path("maps", ".tif"), np.concatenate([grid.values, grid.classes()[None].astype(
            np.float32)]), [*channels, "class"], walk.tile_um)  # fmt: skip
        slide = np.full(len(names), np.nan)
        if len(coords):
            logits = pool.logits()
            slide = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        shown = (
            ", ".join(f"{name} {p:.2f}" for name, p in zip(names, slide, strict=True)) if len(coords) else "no tissue"
        )
        # the heat-map is drawn FIGURE_LONG_SIDE_PX wide: a finer thumbnail only costs memory (its float64
        # colour layers took 660 MB for a 40000-px slide's 2857-px thumbnail, 86 MB at 715 px)
        thumbnail, step = tiles.plan.thumbnail, max(1, -(-max(tiles.plan.thumbnail.shape[:2]) // FIGURE_LONG_SIDE_PX))
        attention_heatmap(thumbnail[::step, ::step], coords, tiles.side, tiles.plan.thumb_downsample * step,
                          attention, outputs.path("overlays", ".png"), f"{walk.title()}\nABMIL: {shown}")  # fmt: skip
        shared = walk.row(levels)
    return {
        "type": "slide",
        "tiles": len(coords),
        "predicted": names[int(np.argmax(slide))] if len(coords) else "",
        **{f"P({name})": (float(p) if len(coords) else None) for name, p in zip(names, slide, strict=True)},
        **_top_tiles(coords, attention),
        "tile_side_level0": tiles.side,
        **shared,
    }
