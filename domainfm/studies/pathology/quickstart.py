"""Quickstart section for pathology: phantom slides -> multi-scale tiles -> PLUTO -> embeddings -> probe and MIL.

PLUTO (arXiv 2405.07905) at toy scale: phantom Aperio SVS slides (pyramidal, JPEG, 0.5 mpp) with four
tissue classes, tiled at 0.5 and 1.0 mpp through the shared ingest engine with a tissue-mask QC picture,
a short PLUTO-style pretraining of a tiny ViT, embeddings of every tile, a linear probe of the tissue
classes on held-out slides against a random-initialised encoder, and slide-level ABMIL with an attention
heat-map.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from domainfm.shared.report import SectionResult
from domainfm.studies.pathology.workflow import run_study


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """8 phantom slides, 10 pretraining epochs, probe and MIL (about a minute on two CPU cores)."""
    study = out_dir / "study"
    results = run_study(
        study, slides=8, slide_size=1536, test_slides=3, pretrain_epochs=10, mil_epochs=30, seed=seed,
        device=str(device), progress=False,
    )  # fmt: skip
    figures = []
    qc = sorted((study / "tiles.zarr" / "qc").glob("*.png"))
    if qc:
        figures.append(shutil.copy(qc[0], out_dir / "tissue_qc.png"))
    if results["mil"]["heatmaps"]:
        figures.append(shutil.copy(results["mil"]["heatmaps"][0], out_dir / "attention.png"))
    rows = [
        {k: row[k] for k in ("init", "labelled", "train_tiles", "test_tiles", "accuracy", "balanced_accuracy")}
        for row in results["probe"]
    ]
    mil = results["mil"]
    summary = (
        f"Eight phantom Aperio SVS slides (1536^2 px at 0.5 mpp, four tissue classes) tiled at 0.5 and 1.0 mpp "
        f"({results['tiles']} tiles of 64 px; tissue mask and tile grid in tissue_qc.png); PLUTO-style "
        "pretraining (DINO + masked tokens + MAE + Fourier) of a tiny ViT for 10 epochs. The table: a linear "
        "probe of the tissue classes on held-out slides, pretrained against random-initialised embeddings. "
        f"Slide-level ABMIL (tumour present): accuracy {mil['accuracy']:.2f} on {mil['test_slides']} test "
        "slides; attention.png shows its attention over a slide. `domainfm pathology study --config "
        "configs/pathology/study_phantom.yaml` runs the study in docs/pathology.md."
    )
    metrics = {
        "mil_accuracy": mil["accuracy"],
        **{f"{r['init']}_{r['labelled']}_accuracy": r["accuracy"] for r in rows},
    }
    finite = all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float))
    return SectionResult("Pathology (PLUTO)", summary, rows, [Path(f).name for f in figures], metrics, finite)
