"""The cell-phantom instance study: PLUTO-pretrained vs random-initialised encoder under the nuclei head.

Issue 21's acceptance study: phantom fields with nuclei (:mod:`.phantom_cells`) are tiled with their
instance truth (``pathology instances-tile``); a ViT is PLUTO-pretrained on the training fields' tiles
(``pathology pretrain``: every tile outside the test split); then the HoVer-Net-style head
(:mod:`domainfm.domains.pathology.instances`) is trained on a **frozen** encoder (``peft linear``),
pretrained or random-initialised, with 10 % and 100 % of the labelled train tiles, three seeds each, and
scored on the held-out fields' tiles by PQ and AJI (:mod:`domainfm.shared.tasks.instance_metrics`).
The head trains ``epochs / fraction`` passes over its tiles, so every label fraction gets the same number
of optimisation steps (fewer labels, not less training); the random encoder is the pretraining's own
starting point (same seed), so the comparison isolates what pretraining changed.
Fields are split by field (the last ``test_images`` are test). ``results.md`` holds the table (mean and
standard deviation over seeds) and ``results.json`` every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from domainfm.domains.pathology.instance_data import ingest_instances
from domainfm.domains.pathology.instance_train import evaluate_instances, train_instances
from domainfm.domains.pathology.pretrain import pretrain
from domainfm.shared.report import markdown_table
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.pathology.phantom_cells import write_cell_phantom
from domainfm.studies.pathology.workflow import TINY_OBJECTIVE


def run_instance_study(
    out: Path,
    images: int = 10,
    test_images: int = 3,
    size: int = 192,
    tile_size: int = 64,
    backbone: str = "test_vit",
    pretrain_epochs: int = 30,
    epochs: int = 6,
    fractions: tuple[float, ...] = (0.1, 1.0),
    seeds: tuple[int, ...] = (0, 1, 2),
    width: int = 16,
    device: str = "auto",
) -> dict[str, Any]:
    """Runs the study into ``out`` (see the module docstring); returns the per-run scores."""
    out = Path(out)
    write_cell_phantom(out / "phantom", images, size, seed=0, mpp=0.5)
    stems = [f"cells_{k:03d}" for k in range(images)]
    splits = out / "splits.csv"
    splits.write_text(
        "image,split\n"
        + "".join(f"{s},{'test' if k >= images - test_images else 'train'}\n" for k, s in enumerate(stems))
    )
    store = out / "nuclei.zarr"
    ingest_instances(
        out / "phantom" / "images", out / "phantom" / "nuclei", store, out / "phantom" / "nuclei.csv", tile_size,
        mpp=0.5, max_instances=256, splits=splits, progress=False,
    )  # fmt: skip
    objective = {**TINY_OBJECTIVE, "local_size": tile_size // 2}
    if not (out / "pretrain" / "encoder.safetensors").is_file():
        outside_test = int((TileStore(store).index["split"] != SPLITS["test"]).sum())
        batch = min(16, outside_test)
        pretrain(store, out / "pretrain", backbone, objective, pretrain_epochs, batch, device=device, progress=False)
    encoder = out / "pretrain" / "encoder.safetensors"
    runs = []
    for init in ("pluto", "random"):
        for fraction in fractions:
            for seed in seeds:
                run = out / "runs" / f"{init}_{fraction:g}_{seed}"
                checkpoint = encoder if init == "pluto" else None
                passes = max(1, round(epochs / fraction))  # the same number of steps at every label fraction
                trained = train_instances(
                    store, run, checkpoint, backbone, "linear", None, fraction, passes, 8, 3e-3, width, seed, device
                )
                scores = evaluate_instances(run / "instances.safetensors", store, "test", device=device)
                runs.append({
                    "init": init, "labelled": fraction, "seed": seed, "train_tiles": trained["train_tiles"],
                    "pq": scores["pq"], "aji": scores["aji"], "dq": scores["dq"], "sq": scores["sq"],
                    "mpq": scores["mpq"], "object_dice": scores["object_dice"],
                })  # fmt: skip
    (out / "results.json").write_text(json.dumps(runs, indent=2, default=float))
    rows = []
    for fraction in fractions:
        for init in ("pluto", "random"):
            chosen = [r for r in runs if r["init"] == init and r["labelled"] == fraction]
            row = {"labelled": f"{fraction:.0%}", "encoder": init, "train tiles": chosen[0]["train_tiles"]}
            for key in ("pq", "aji", "mpq"):
                values = np.array([r[key] for r in chosen], float)
                row[key.upper() if key != "mpq" else "mPQ"] = f"{values.mean():.3f} ± {values.std():.3f}"
            rows.append(row)
    table = markdown_table(rows)
    (out / "results.md").write_text(
        f"Nuclei instance segmentation on {images} phantom fields ({size}^2 px at 0.5 mpp, {test_images} held "
        f"out; {tile_size}-px tiles), frozen `{backbone}` (PLUTO-pretrained {pretrain_epochs} epochs, or "
        f"random), HoVer-Net-style head {epochs} epochs at 100 % labels (the same steps at 10 %), seeds "
        f"{list(seeds)} (mean ± std):\n\n{table}\n"
    )
    return {"runs": runs, "table": table}
