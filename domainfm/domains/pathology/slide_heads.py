"""Slide-level MIL on an embedding store: bags per slide, slide labels, training, heat-maps.

Slide labels come from a CSV (``slide,label``; ``slide`` is the file name or its stem, ``label`` any
class name), from the tile annotations the store was tiled with (``tiles:CLASS``: a slide is ``CLASS`` when
any of its tiles carries that class and ``no_CLASS`` when it has labelled tiles but none of it; slides
without labelled tiles are left out), or, for phantom slides, from their ground truth (``tumor`` when the
slide has tumour tissue).
ABMIL (Ilse et al. 2018, arXiv 1802.04712; :mod:`.mil`) trains on the train and val slides and is scored
on the test slides; each test slide gets an attention heat-map over its thumbnail. Bags hold the tiles
of one resolution (the finest in the store unless ``mpp`` is given). The trained head is saved with the
encoder that made the embeddings as ``slide_classifier.safetensors`` (:mod:`.slide_model`), which
``pathology predict`` runs on new slides; the test slides' probabilities are in ``test_predictions.csv``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.domains.pathology.embed import Embeddings
from domainfm.shared.errors import DomainfmError
from domainfm.shared.tiles.schema import SPLITS

TRUTH = "truth"
FROM_TILES = "tiles:"


def slide_labels(embeddings: Embeddings, labels: str | Path) -> tuple[list[str], dict[int, int]]:
    """``(class names, slide row -> class id)`` from a CSV, ``"tiles:CLASS"`` or ``"truth"`` (phantom slides)."""
    slides = embeddings.slides
    if str(labels).startswith(FROM_TILES):
        return labels_from_tiles(embeddings, str(labels)[len(FROM_TILES) :])
    if str(labels) == TRUTH:
        from domainfm.domains.pathology.region_labels import TRUTH_SUFFIX, read_truth

        mapping = {}
        for row, slide in enumerate(slides):
            truth_path = Path(slide["path"] + TRUTH_SUFFIX)
            if not truth_path.is_file():
                raise DomainfmError(f"{slide['path']}: no ground truth {truth_path.name}; give --labels CSV instead")
            mapping[row] = int(read_truth(truth_path)["slide_label"])
        return ["no_tumor", "tumor"], mapping
    try:
        with open(labels, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise DomainfmError(f"{labels}: cannot read the slide-label CSV ({error}); give a CSV or 'truth'") from error
    if not rows or not {"slide", "label"} <= set(rows[0]):
        raise DomainfmError(f"{labels}: a slide-label CSV needs the columns slide,label")
    by_name = {r["slide"]: r["label"] for r in rows}
    names = sorted(set(by_name.values()))
    mapping = {}
    for row, slide in enumerate(slides):
        path = Path(slide["path"])
        label = by_name.get(path.name, by_name.get(path.stem))
        if label is not None:
            mapping[row] = names.index(label)
    if not mapping:
        raise DomainfmError(f"{labels}: no row names a slide of {embeddings.path} (by file name or stem)")
    return names, mapping


def labels_from_tiles(embeddings: Embeddings, positive: str) -> tuple[list[str], dict[int, int]]:
    """Slide labels from the tiles' annotation labels: ``positive`` present (1) or absent (0) per slide.

    Only slides with at least one labelled tile get a label: a slide nobody annotated is unknown, not negative.
    """
    names = list(embeddings.attrs.get("label_names") or [])
    if positive not in names:
        known = ", ".join(names) or "none (tile the slides with --labels to label their tiles)"
        raise DomainfmError(f"{embeddings.path}: no tile class {positive!r}; the tiles' classes are: {known}")
    code = names.index(positive)
    mapping = {}
    for row in range(len(embeddings.slides)):
        tile_labels = embeddings.label[embeddings.slide == row]
        if (tile_labels >= 0).any():
            mapping[row] = int((tile_labels == code).any())
    if not mapping:
        raise DomainfmError(f"{embeddings.path}: no slide has labelled tiles; tile the slides with --labels")
    return [f"no_{positive}", positive], mapping


def bags(embeddings: Embeddings, rows: list[int], mpp: float) -> list[torch.Tensor]:
    """One ``[N, D]`` bag of the tile embeddings at ``mpp`` per slide row."""
    keep = np.isclose(embeddings.mpp, mpp)
    return [torch.from_numpy(embeddings.features[keep & (embeddings.slide == r)]) for r in rows]


def slide_split(embeddings: Embeddings, row: int) -> int:
    """A slide's split (all its tiles share it)."""
    return int(embeddings.split[embeddings.slide == row][0])


def run_mil(
    embeddings: Embeddings,
    labels: str | Path,
    out: Path,
    mpp: float | None = None,
    epochs: int = 50,
    lr: float = 2e-4,
    seed: int = 0,
    heatmaps: bool = True,
) -> dict[str, Any]:
    """Trains ABMIL on train+val slides, scores the test slides; writes the model, heat-maps and ``mil.json``."""
    from domainfm.domains.pathology.mil import evaluate_mil, predict_mil, train_mil
    from domainfm.domains.pathology.slide_model import slide_classifier_from_mil

    mpp = float(np.min(embeddings.mpp)) if mpp is None else mpp
    names, mapping = slide_labels(embeddings, labels)
    present = [r for r in sorted(mapping) if (embeddings.slide == r).any()]
    test = [r for r in present if slide_split(embeddings, r) == SPLITS["test"]]
    train = [r for r in present if r not in test]
    if len(train) < 2 or not test:
        raise DomainfmError(f"{embeddings.path}: need >= 2 train and >= 1 test slides with labels; got {train}, {test}")
    model = train_mil(bags(embeddings, train, mpp), [mapping[r] for r in train], len(names), epochs, lr, seed=seed)
    test_bags = bags(embeddings, test, mpp)
    metrics = evaluate_mil(model, test_bags, [mapping[r] for r in test])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = slide_classifier_from_mil(model, embeddings, mpp, names, out)
    probabilities = predict_mil(model, test_bags)
    write_test_predictions(out / "test_predictions.csv", embeddings, test, probabilities, mapping, names)
    figures = []
    if heatmaps:
        figures = [str(p) for p in write_heatmaps(model, embeddings, test, test_bags, mpp, out, names)]
    result = {
        "classes": names,
        "train_slides": len(train),
        "test_slides": len(test),
        "mpp": mpp,
        **metrics,
        "heatmaps": figures,
        "checkpoint": str(checkpoint),
    }
    (out / "mil.json").write_text(json.dumps(result, indent=2))
    return result


def write_test_predictions(
    path: Path, embeddings: Embeddings, rows: list[int], probabilities: torch.Tensor, mapping: dict, names: list[str]
) -> Path:
    """One CSV row per test slide: its file name, true and predicted class, and ``P(CLASS)`` per class."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide", "label", "predicted", *(f"P({name})" for name in names)])
        for row, p in zip(rows, probabilities.tolist(), strict=True):
            name = Path(embeddings.slides[row]["path"]).name
            writer.writerow([name, names[mapping[row]], names[int(np.argmax(p))], *(repr(float(v)) for v in p)])
    return path


def write_heatmaps(
    model: Any,
    embeddings: Embeddings,
    rows: list[int],
    slide_bags: list[torch.Tensor],
    mpp: float,
    out: Path,
    names: list[str],
) -> list[Path]:
    """An attention heat-map PNG over the thumbnail of each slide row (tiles at ``mpp``)."""
    from domainfm.domains.pathology.mil import attention_heatmap
    from domainfm.domains.pathology.slides import open_slide, read_thumbnail

    written = []
    model.eval()
    for row, bag in zip(rows, slide_bags, strict=True):
        slide = embeddings.slides[row]
        coords = embeddings.coords[(embeddings.slide == row) & np.isclose(embeddings.mpp, mpp)]
        with torch.no_grad():
            logits, attention = model(bag)
        handle = open_slide(slide["path"])
        try:
            thumbnail, downsample = read_thumbnail(handle, max(slide["level0_width"], slide["level0_height"]) / 1024)
        finally:
            handle.close()
        side_level0 = embeddings.attrs["tile_px"] * mpp / slide["mpp"]
        probability = torch.softmax(logits, -1).numpy()
        shown = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, probability, strict=True))
        title = f"{Path(slide['path']).name}: {shown}"
        out_png = out / f"{Path(slide['path']).name}.attention.png"
        written.append(attention_heatmap(thumbnail, coords, side_level0, downsample, attention.numpy(), out_png, title))
    return written
