"""The ConVIRT phantom study: data, pretraining, retrieval and label-efficient probes in one resumable run.

It reproduces the shape of the paper's evaluation (Zhang et al., MLHC 2022, arXiv 2010.00747): zero-shot
image->image and text->image retrieval with Precision@k, and linear probes at 1 / 10 / 100 % of the
labels, each against the same architecture with random initialisation. Steps whose outputs exist with
the same settings are skipped on a rerun.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.radiology.data import ingest_studies
from domainfm.domains.radiology.evaluate import probe, retrieval
from domainfm.domains.radiology.pretrain import load_convirt, pretrain
from domainfm.shared.config import settings_unchanged
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import markdown_table
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.radiology.phantom import write_phantom, write_retrieval_set

FRACTIONS = (0.01, 0.1, 1.0)


def run_study(
    out: Path,
    n: int = 400,
    size: int = 64,
    backbone: str = "test_resnet",
    text: dict[str, Any] | None = None,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 3e-4,
    hflip: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    augment_strength: float = 0.5,
) -> dict[str, Any]:
    """Runs the study into ``out``; returns and writes ``results.json`` and ``results.md``."""
    out = Path(out)
    data_settings = {"n": n, "seed": seed}
    data_marker = out / "phantom" / "settings.json"
    fresh = not settings_unchanged(data_marker, data_settings)
    if fresh:
        write_phantom(out / "phantom", n, 128, seed)
        write_retrieval_set(out / "phantom" / "retrieval", 20, 5, 128, seed + 1)
        data_marker.write_text(json.dumps(data_settings))
    store_path = out / "studies.zarr"
    summary, _ = ingest_studies(
        out / "phantom" / "images", out / "phantom" / "reports.csv", store_path, size, out / "phantom" / "labels.csv",
        overwrite=fresh, progress=progress,
    )  # fmt: skip
    if not summary.ok:
        raise DomainfmError(summary.report())
    train_settings = {"size": size, "backbone": backbone, "text": text, "epochs": epochs, "batch": batch_size, "lr": lr}
    train_settings |= {"hflip": hflip, "augment": augment_strength, "seed": seed, "data": data_settings}
    run_dir, marker = out / "convirt", out / "convirt" / "settings.json"
    if not settings_unchanged(marker, train_settings):
        result = pretrain(
            store_path, run_dir, backbone, None, text, 512, 0.1, 0.75, epochs, batch_size, lr, 1e-6, hflip, seed,
            device, progress, augment_strength,
        )  # fmt: skip
        marker.write_text(json.dumps(train_settings))
        losses = result["losses"]
    else:
        losses = json.loads((run_dir / "history.json").read_text())["losses"]
    per_epoch = max(1, len(losses) // epochs)
    loss_first, loss_last = float(np.mean(losses[:per_epoch])), float(np.mean(losses[-per_epoch:]))
    model, tokenizer, meta = load_convirt(run_dir / "convirt.safetensors")
    retrieval_dir = out / "phantom" / "retrieval"
    found = retrieval(
        model, tokenizer, meta, retrieval_dir / "candidate.csv", retrieval_dir / "image_query.csv",
        retrieval_dir / "text_query.csv", (5, 10, 50), device,
    )  # fmt: skip
    probes = probe(model, meta, TileStore(store_path), FRACTIONS, "linear", seed=seed, device=device)
    knn = probe(model, meta, TileStore(store_path), FRACTIONS, "knn", seed=seed, device=device)
    table = []
    for fraction in FRACTIONS:
        row: dict[str, Any] = {"label_fraction": fraction}
        for rows, method in ((probes, "linear"), (knn, "knn")):
            for init in ("convirt", "random"):
                match = next(r for r in rows if r["init"] == init and r["label_fraction"] == fraction)
                row[f"{method}_auroc_{init}"] = match["auroc"]
        row["train_images"] = match["train_images"]
        table.append(row)
    retrieval_rows = [
        {"direction": d, **{f"P@{k}": found[d][f"precision_at_{k}"] for k in (5, 10, 50)}, "chance": found["chance"]}
        for d in ("image_to_image", "text_to_image")
    ]
    results = {
        "probes": table,
        "retrieval": retrieval_rows,
        "retrieval_per_category": {d: found[d] for d in ("image_to_image", "text_to_image")},
        "loss_first_epoch": loss_first,
        "loss_last_epoch": loss_last,
        "settings": train_settings,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    header = (
        f"ConVIRT on the radiology phantom ({n} studies, {size} px, `{backbone}` + small BERT, {epochs} epochs, "
        f"batch {batch_size}, Adam {lr}, hflip {hflip}, augmentation strength {augment_strength}, seed {seed}; "
        f"mean loss of the first and last epoch {loss_first:.3f} -> {loss_last:.3f}). "
        "Probes: test-split macro AUROC over the 6 labels, ConVIRT image tower vs the same architecture "
        "random-initialised. Retrieval: 6 categories x 20 held-out candidates, 5 image and 5 text queries each."
    )
    (out / "results.md").write_text(
        header + "\n\n" + markdown_table(table) + "\n\n" + markdown_table(retrieval_rows) + "\n"
    )
    return results
