"""``domainfm peft compare``: the PEFT method x label-fraction comparison study.

``domainfm peft count`` is library code, in :mod:`domainfm.shared.peft.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.shared.config import Fraction, PositiveFloat, PositiveInt, Seed
from domainfm.shared.peft.cli import DEFAULT_METHODS


def compare(
    out: Path,
    backbone: str = "test_vit",
    methods: list[str] = DEFAULT_METHODS,
    label_fractions: list[Fraction] = [0.1, 1.0],  # noqa: B006
    method_options: dict[str, dict[str, Any]] | None = None,
    store: Path | None = None,
    phantom_tiles: PositiveInt = 600,
    phantom_classes: PositiveInt = 4,
    epochs: PositiveInt = 4,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 1e-3,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """Run a PEFT method x label-fraction grid on one task; write results.json, results.md and adapters.

    Args:
        out: Output folder.
        backbone: Registered backbone name.
        methods: PEFT methods to compare.
        label_fractions: Fractions of the train split's labels to train on.
        method_options: Per-method options, e.g. ``{dvpt: {bottleneck: 16}}``.
        store: A tile store with labels and splits; the phantom texture task when unset.
        phantom_tiles: Tiles of the phantom task.
        phantom_classes: Classes of the phantom task.
        epochs: Training epochs per run.
        batch_size: Training batch size.
        lr: AdamW learning rate (the same for every method).
        seed: Seed of data subsets, initialisation and order.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.tiles.store import TileStore
    from domainfm.studies.shared.peft.compare import run_grid, write_results
    from domainfm.studies.shared.peft.phantom import build_phantom_store

    out = Path(out)
    from domainfm.shared.outputs import run_folder

    with run_folder(out):  # new, empty or an earlier run of domainfm: never a folder of other files
        save_resolved_config(out)
        task = (
            TileStore(store)
            if store
            else build_phantom_store(out / "phantom_textures.zarr", phantom_tiles, phantom_classes, seed=seed)
        )
        rows = run_grid(
            task, backbone, methods, label_fractions, out, epochs, batch_size, lr, seed, device, method_options or {}
        )
        header = (
            f"PEFT comparison on `{task.path.name}` ({len(task)} tiles) with `{backbone}`, {epochs} epochs, "
            f"AdamW lr {lr}, batch {batch_size}, seed {seed}; metrics on the val split."
        )
        write_results(rows, out, header)
        print((out / "results.md").read_text())
        bad = [r for r in rows if r["reattach_max_abs_diff"] > 1e-5]
        for row in bad:
            print(f"adapter of {row['method']} at {row['label_fraction']} did not re-attach exactly")
        return 1 if bad else 0
