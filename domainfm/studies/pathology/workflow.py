"""The PLUTO-style phantom study: slides, multi-scale tiles, pretraining, embeddings, tile probe and MIL.

It measures what pretraining must show (PLUTO, arXiv 2405.07905; eva's protocol in
``shared/methods/pluto.md`` section 2): a linear probe of the tissue classes on frozen embeddings of
held-out slides, from the pretrained encoder against the same architecture random-initialised, with all
and with 10 % of the labelled train tiles; then slide-level ABMIL (tumour present or not) on the
pretrained embeddings with attention heat-maps. Slides are split by slide (the last ``test_slides`` are
test), so no test tile shares a slide with a train tile. Finished steps are skipped on a rerun with the
same settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainfm.domains.pathology.embed import embed_store, read_embeddings
from domainfm.domains.pathology.heads import linear_probe
from domainfm.domains.pathology.pretrain import pretrain
from domainfm.domains.pathology.slide_heads import run_mil
from domainfm.domains.pathology.tiling import TilingParams, tile_slides
from domainfm.shared.config import settings_unchanged
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import markdown_table
from domainfm.studies.pathology.phantom import write_phantom_slide

TINY_OBJECTIVE = {
    "out_dim": 256,
    "head_hidden": 128,
    "head_bottleneck": 64,
    "local_size": 32,
    "n_local": 2,
    "color_jitter": 1.0,
}


def phantom_slides(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` phantom slides at 0.5 mpp, every other one with tumour (the MIL label), written once per settings."""
    settings = {"slides": n, "size": size, "seed": seed}
    marker = folder / "settings.json"
    paths = [folder / f"phantom_{i:02d}.svs" for i in range(n)]
    if not settings_unchanged(marker, settings):
        for i, path in enumerate(paths):
            write_phantom_slide(path, size, seed=seed * 1000 + i, mpp=0.5, tumor=i % 2 == 0)
        marker.write_text(json.dumps(settings))
    return paths


def run_study(
    out: Path,
    slides: int = 12,
    slide_size: int = 1536,
    test_slides: int = 4,
    tile_px: int = 64,
    mpps: tuple[float, ...] = (0.5, 1.0),
    backbone: str = "test_vit",
    pretrain_epochs: int = 40,
    objective: dict[str, Any] | None = None,
    mil_epochs: int = 40,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the study into ``out``; writes ``results.json`` and ``results.md``."""
    out = Path(out)
    if not 0 < test_slides < slides - 1:
        raise DomainfmError(f"need 0 < test_slides < slides - 1, got {test_slides} of {slides}")
    paths = phantom_slides(out / "slides", slides, slide_size, seed)
    splits = {p.name: "test" if i >= slides - test_slides else "train" for i, p in enumerate(paths)}
    params = TilingParams(mpps=tuple(mpps), tile_px=tile_px, truth_labels=True, splits=splits)
    store = out / "tiles.zarr"
    data_settings = {"slides": slides, "size": slide_size, "seed": seed, "tile_px": tile_px, "mpps": list(mpps)}
    fresh = not settings_unchanged(out / "tiles.settings.json", data_settings)
    summary = tile_slides(paths, store, params, overwrite=fresh, progress=progress)
    if not summary.ok:
        raise DomainfmError(summary.report())
    (out / "tiles.settings.json").write_text(json.dumps(data_settings))
    objective = {**TINY_OBJECTIVE, **(objective or {})}
    train_settings = {"backbone": backbone, "epochs": pretrain_epochs, "objective": objective, "data": data_settings}
    run_dir = out / "pretrain"
    if not settings_unchanged(run_dir / "settings.json", train_settings):
        pretrain(store, run_dir, backbone, objective, pretrain_epochs, seed=seed, device=device, progress=progress)
        (run_dir / "settings.json").write_text(json.dumps(train_settings))
    rows, embeddings = [], {}
    for init, checkpoint in (("pluto", run_dir / "encoder.safetensors"), ("random", None)):
        path = out / f"embeddings_{init}.zarr"
        embed_store(store, path, checkpoint, backbone, seed=seed, device=device, overwrite=True)
        embeddings[init] = read_embeddings(path)
        for labelled in (1.0, 0.1):
            probe = linear_probe(embeddings[init], min(mpps), labelled, seed)
            rows.append(
                {"init": init, "labelled": labelled, **{k: v for k, v in probe.items() if k != "classes_in_test"}}
            )
    mil = run_mil(embeddings["pluto"], "truth", out / "mil", None, mil_epochs, seed=seed)
    results = {"probe": rows, "mil": mil, "settings": train_settings, "tiles": summary.n_tiles}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    header = (
        f"PLUTO-style pretraining on {slides} phantom slides ({slide_size}^2 px at 0.5 mpp; {summary.n_tiles} "
        f"tiles of {tile_px} px at {', '.join(f'{m:g}' for m in mpps)} mpp; `{backbone}`, {pretrain_epochs} "
        f"epochs). Linear probe of the tissue classes at {min(mpps):g} mpp, trained on the train slides' tiles "
        f"and scored on {test_slides} held-out slides:"
    )
    mil_line = (
        f"Slide-level ABMIL (tumour present) on the pretrained embeddings: {mil['train_slides']} train, "
        f"{mil['test_slides']} test slides, accuracy {mil['accuracy']:.2f}, AUROC {mil['auroc']:.2f}."
    )
    (out / "results.md").write_text(header + "\n\n" + markdown_table(rows) + "\n\n" + mil_line + "\n")
    return results
