"""The SatVision-style phantom study: granules, chips, SimMIM, and the cloud curtain with few labels.

It measures the two things pretraining must show (SatVision-TOA, arXiv 2411.17000): masked
reconstruction on held-out chips against the per-band mean predictor, and the 3D cloud curtain learned
from a few labelled chips from the SimMIM checkpoint against the same encoder from scratch, with the
encoder frozen (``linear``) and fine-tuned (``full``). Finished steps are skipped on a rerun with the same
settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domainfm.domains.remote_sensing.data import ingest_chips
from domainfm.domains.remote_sensing.downstream import train_task
from domainfm.domains.remote_sensing.pretrain import heldout_loss, pretrain
from domainfm.shared.config import settings_unchanged
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import markdown_table
from domainfm.studies.remote_sensing.phantom import write_granule, write_phantom_splits


def run_study(
    out: Path,
    granules: int = 12,
    granule_size: int = 256,
    chip: int = 64,
    backbone: str = "test_swinv2",
    pretrain_epochs: int = 40,
    labelled: int = 16,
    task_epochs: int = 200,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    pefts: tuple[str, ...] = ("linear", "full"),
) -> dict[str, Any]:
    """Runs the study into ``out``; writes ``results.json`` and ``results.md``.

    ``pefts``: the encoder adaptations compared (each from the SimMIM checkpoint and from scratch).
    """
    out = Path(out)
    data_settings = {"granules": granules, "size": granule_size, "seed": seed}
    marker = out / "granules" / "settings.json"
    fresh = not settings_unchanged(marker, data_settings)
    files = [out / "granules" / f"MOD021KM.phantom.{i:03d}.hdf" for i in range(granules)]
    if fresh:
        for i, path in enumerate(files):
            write_granule(path, (granule_size, granule_size), seed=seed * 1000 + i)
        marker.write_text(json.dumps(data_settings))
    store = out / "chips.zarr"
    splits = write_phantom_splits(files, out / "granules" / "splits.csv")
    summary = ingest_chips(files, store, chip, curtains=True, overwrite=fresh, progress=progress, splits=splits)
    if not summary.ok:
        raise DomainfmError(summary.report())
    train_settings = {
        "backbone": backbone,
        "epochs": pretrain_epochs,
        "seed": seed,
        "data": data_settings,
        "chip": chip,
    }
    run_dir = out / "simmim"
    if not settings_unchanged(run_dir / "settings.json", train_settings):
        pretrain(store, run_dir, backbone, epochs=pretrain_epochs, seed=seed, device=device, progress=progress)
        (run_dir / "settings.json").write_text(json.dumps(train_settings))
    checkpoint = run_dir / "simmim.safetensors"
    reconstruction = heldout_loss(checkpoint, store, "test", seed)
    rows = []
    for peft in pefts:
        for init in (checkpoint, None):
            run = train_task(
                store, "curtain", init, backbone, peft, labelled=labelled, epochs=task_epochs, seed=seed, device=device
            )
            rows.append(run)
    results = {"reconstruction": reconstruction, "curtain": rows, "settings": train_settings, "labelled": labelled}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    columns = ("peft", "init", "labelled_chips", "test_chips", "cloud_iou", "miou", "false_negative_rate")
    table = [{k: row[k] for k in columns} for row in rows]
    header = (
        f"SimMIM on {granules} phantom MOD021KM granules ({granule_size}^2 px, 14 SatVision-TOA bands, "
        f"{summary.n_tiles} chips of {chip} px; `{backbone}`, {pretrain_epochs} epochs, mask patch 8, ratio 0.6). "
        f"Held-out masked L1: {reconstruction['masked_l1']:.4f} against {reconstruction['mean_predictor_l1']:.4f} "
        f"for the per-band mean ({reconstruction['chips']} test chips). Cloud curtain (91 x 40) from "
        f"{labelled} labelled chips, {task_epochs} epochs, scored on the test chips:"
    )
    (out / "results.md").write_text(header + "\n\n" + markdown_table(table) + "\n")
    return results
