"""``domainfm remote-sensing phantom`` and ``domainfm remote-sensing study``: phantom granules and the phantom study.

Verbs of the domain's CLI group (``domainfm/domains/remote_sensing/cli.py`` names them); the library's own
verbs are in :mod:`domainfm.domains.remote_sensing.commands`.
"""

from __future__ import annotations

from pathlib import Path

from domainfm.shared.config import NonNegativeInt, PositiveInt, Seed


def phantom(
    out: Path, size: PositiveInt = 256, seed: Seed = 0, clouds: NonNegativeInt = 8, overwrite: bool = False
) -> int:
    """Write a phantom MOD021KM granule (real HDF4, L1B layout) with clouds at known heights (+ FILE.truth.npz).

    Args:
        out: The granule file (``.hdf``).
        size: Rows and columns (1-km pixels).
        seed: Random seed.
        clouds: Clouds drawn.
        overwrite: Replace a phantom granule written earlier (any other file at ``out`` is refused).
    """
    from domainfm.shared.outputs import check_output, lock_output
    from domainfm.studies.remote_sensing.phantom import is_phantom_granule, write_granule

    with lock_output(out, "phantom granule"):
        check_output(out, "phantom granule", overwrite, is_phantom_granule)
        path = write_granule(Path(out), (size, size), seed, clouds)
    print(f"wrote {path} and {path.name}.truth.npz")
    return 0


def study(
    out: Path,
    granules: PositiveInt = 12,
    granule_size: PositiveInt = 256,
    chip: PositiveInt = 64,
    backbone: str = "test_swinv2",
    pretrain_epochs: PositiveInt = 40,
    labelled: PositiveInt = 16,
    task_epochs: PositiveInt = 200,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """The phantom study: SimMIM, held-out reconstruction, and the cloud curtain from few labels vs scratch.

    Args:
        out: Output folder.
        granules: Phantom granules.
        granule_size: Their rows and columns.
        chip: Chip side.
        backbone: SwinV2 backbone.
        pretrain_epochs: SimMIM epochs.
        labelled: Labelled chips for the curtain task.
        task_epochs: Curtain-task epochs.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder
    from domainfm.studies.remote_sensing.workflow import run_study

    with run_folder(Path(out)):  # new, empty or an earlier run of domainfm: never a folder of other files
        save_resolved_config(Path(out))
        run_study(
            Path(out), granules, granule_size, chip, backbone, pretrain_epochs, labelled, task_epochs, seed, device
        )
        print((Path(out) / "results.md").read_text())
    return 0
