"""Quickstart section for deployment: a tile classifier -> MONAI bundle -> bundle run -> predict -> explanations.

The pathology tile classifier is the example (any domain's downstream checkpoint takes the same path):
two phantom slides are tiled, a tiny ViT with DVPT is trained on the truth classes, exported with
``domainfm export bundle``, run by MONAI's own ``python -m monai.bundle run`` on held-out tiles (whose
predictions are compared with domainfm's), and explained with integrated gradients (Sundararajan et al.,
ICML 2017) on one tile and over the held-out slide's thumbnail. It lives beside ``quickstart.py`` because
it strings a domain and the shared deployment code together.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from domainfm.shared.report import SectionResult


def _trained_classifier(work: Path, device: torch.device, seed: int) -> tuple[Path, Path, Path]:
    """Phantom slides -> 64 px tiles at 1 mpp with truth labels -> DVPT tile classifier; (checkpoint, store, slide)."""
    from domainfm.domains.pathology.heads import train_tile_classifier
    from domainfm.domains.pathology.tiling import TilingParams, tile_slides
    from domainfm.studies.pathology.phantom import write_phantom_slide

    slides = [work / f"slide_{i}.svs" for i in range(2)]
    for i, slide in enumerate(slides):
        write_phantom_slide(slide, 2048, seed=seed + i, mpp=0.5)
    store = work / "tiles.zarr"
    splits = {slides[0].name: "train", slides[1].name: "test"}
    params = TilingParams(mpps=(1.0,), tile_px=64, truth_labels=True, splits=splits)
    summary = tile_slides(slides, store, params, progress=False)
    if not summary.ok:
        raise RuntimeError(summary.report())
    result = train_tile_classifier(store, work / "classifier", backbone="test_vit", peft="dvpt", epochs=8,
                                   seed=seed, device=str(device))  # fmt: skip
    return Path(result["classifier"]), store, slides[1]


def _held_out_tiles(store: Path, folder: Path, n: int) -> dict[str, str]:
    """``n`` test tiles of distinct classes where possible, as PNG files (what a user gives a bundle).

    Returns: file name -> truth class.
    """
    from PIL import Image

    from domainfm.shared.tiles.schema import SPLITS
    from domainfm.shared.tiles.store import TileStore

    tiles = TileStore(store)
    test = np.flatnonzero(tiles.index["split"] == SPLITS["test"])
    labels = tiles.index["label"][test]
    firsts = [test[np.flatnonzero(labels == c)[0]] for c in np.unique(labels)]
    chosen = (firsts + [t for t in test if t not in firsts])[:n]
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, tile_id in enumerate(chosen):
        name = f"tile_{i:02d}.png"
        Image.fromarray(np.asarray(tiles.tiles[int(tile_id)]).transpose(1, 2, 0)).save(folder / name)
        truth[name] = tiles.spec.label_names[int(tiles.index["label"][tile_id])]
    return truth


def _bundle_predictions(bundle: Path, inputs: Path, output: Path) -> tuple[list[str], np.ndarray]:
    """Runs the bundle with MONAI's CLI; file names and class probabilities from its predictions.csv."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
               "--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(output)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"monai.bundle run failed:\n{done.stderr[-3000:]}")
    rows = [line.split(",") for line in (output / "predictions.csv").read_text().splitlines() if line]
    return [Path(row[0]).name for row in rows], np.array([[float(v) for v in row[1:]] for row in rows])


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """Train, export, run the bundle, compare, explain (about a minute on two CPU cores)."""
    from domainfm.shared.deploy import load_deployable, predict, read_input
    from domainfm.shared.deploy.bundle import export_bundle
    from domainfm.shared.explain.attribution import attribute
    from domainfm.shared.explain.overlay import render_overlay
    from domainfm.shared.explain.slides import explain_slide

    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, store, test_slide = _trained_classifier(work, device, seed)
    bundle = export_bundle(checkpoint, out_dir / "bundle", overwrite=True)
    truth = _held_out_tiles(store, work / "inputs", 6)
    names, bundle_probabilities = _bundle_predictions(bundle, work / "inputs", work / "bundle_output")
    deployable = load_deployable(checkpoint)
    classes = deployable.card.class_names
    rows, differences = [], []
    for name, from_bundle in zip(names, bundle_probabilities, strict=True):
        ours = predict(deployable, read_input(work / "inputs" / name, deployable.card))[0].numpy()
        differences.append(float(np.abs(ours - from_bundle).max()))
        rows.append({"tile": name, "truth": truth[name], "bundle prediction": classes[int(from_bundle.argmax())],
                     "domainfm prediction": classes[int(ours.argmax())],
                     "max |difference|": differences[-1]})  # fmt: skip
    image = read_input(work / "inputs" / names[0], deployable.card)
    tile_map = attribute(deployable, image, "integrated_gradients")
    render_overlay(image, tile_map, deployable.card, f"{names[0]} (held-out tile)", out_dir / "tile_ig.png")
    slide = explain_slide(deployable, test_slide, out_dir / "slide_ig.png", "integrated_gradients", progress=False)
    predicted = _predict_slide(checkpoint, test_slide, out_dir / "predictions", device)
    summary = (
        f"A tiny ViT with DVPT trained on phantom tiles (64 px, 1 mpp; classes {', '.join(classes)}) and "
        f"exported as a MONAI bundle (`domainfm export bundle`, in `bundle/`). MONAI's own `python -m monai.bundle "
        f"run` on {len(names)} held-out tiles gives the predictions below, equal to domainfm's within "
        f"{max(differences):.1e}. Integrated gradients explain one tile (completeness error "
        f"{tile_map.relative_delta:.1%} of f(x) - f(baseline)) and every tissue tile of the held-out slide "
        f"({slide['tiles']} tiles) over its thumbnail. `domainfm explain --checkpoint CKPT --input FILE --out "
        "FILE.png` does the same for any downstream checkpoint; docs/export.md and docs/explain.md. "
        f"`domainfm pathology predict` classified the same {predicted['tiles']} tiles of the held-out slide into "
        f"`predictions/` (a QuPath GeoJSON, a pyramidal OME-TIFF probability map, the overlay below; "
        "docs/predict.md)."
    )
    metrics = {"bundle_max_abs_difference": max(differences), "tiles_explained_on_slide": slide["tiles"],
               "tiles_predicted_on_slide": int(predicted["tiles"])}  # fmt: skip
    overlay = f"predictions/overlays/{test_slide.stem}.png"
    ok = max(differences) <= 1e-4 and int(predicted["tiles"]) == slide["tiles"]
    return SectionResult("Deployment (MONAI bundle, predict, explanations)", summary, rows,
                         ["tile_ig.png", "slide_ig.png", overlay], metrics, ok)  # fmt: skip


def _predict_slide(checkpoint: Path, slide: Path, out: Path, device: torch.device) -> dict[str, str]:
    """``domainfm pathology predict`` on one slide; its ``predictions.csv`` row."""
    import contextlib
    import csv
    import io

    from domainfm.domains.pathology.predict import predict as predict_slides

    with contextlib.redirect_stdout(io.StringIO()):  # the JSON summary; the report tells the story
        code = predict_slides(checkpoint, [slide], out, device=str(device), overwrite=True, json=True)
    if code != 0:
        raise RuntimeError(f"pathology predict on {slide} failed; see {out / 'summary.json'}")
    with (out / "predictions.csv").open() as table:
        return next(csv.DictReader(table))
