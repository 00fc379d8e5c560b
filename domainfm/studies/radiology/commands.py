"""``domainfm radiology phantom`` and ``domainfm radiology study``: phantom radiographs and the phantom study.

Verbs of the domain's CLI group (``domainfm/domains/radiology/cli.py`` names them); the library's own
verbs are in :mod:`domainfm.domains.radiology.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.shared.config import NonNegativeFloat, PositiveFloat, PositiveInt, Probability, Seed


def phantom(
    out: Path,
    n: PositiveInt = 400,
    size: PositiveInt = 128,
    seed: Seed = 0,
    dicom_fraction: Probability = 0.5,
    retrieval_per_category: PositiveInt = 20,
    overwrite: bool = False,
) -> int:
    """Write phantom chest radiographs (DICOM and PNG) with reports and labels, plus a retrieval benchmark.

    Args:
        out: Output folder (``images/``, ``reports.csv``, ``labels.csv``, ``retrieval/``).
        n: Studies.
        size: Image side in pixels.
        seed: Random seed.
        dicom_fraction: Fraction of images written as DICOM (a third of those MONOCHROME1).
        retrieval_per_category: Candidate images per category in ``retrieval/`` (5 image and 5 text queries each).
        overwrite: Replace a phantom folder written earlier (any other folder at ``out`` is refused).
    """
    from domainfm.studies.radiology.phantom import write_phantom, write_retrieval_set
    from domainfm.studies.shared.outputs import phantom_folder

    with phantom_folder(out, "phantom folder", overwrite) as folder:
        written = write_phantom(folder, n, size, seed, dicom_fraction)
        files = write_retrieval_set(folder / "retrieval", retrieval_per_category, 5, size, seed + 1)
    images, candidates = (
        Path(out) / Path(written["images"]).name,
        Path(out) / "retrieval" / Path(files["candidate"]).name,
    )
    print(f"{n} studies in {images}; prevalence {written['prevalence']}; retrieval set {candidates}")
    return 0


def study(
    out: Path,
    n: PositiveInt = 400,
    size: PositiveInt = 64,
    backbone: str = "test_resnet",
    text: dict[str, Any] | None = None,
    epochs: PositiveInt = 60,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 3e-4,
    hflip: Probability = 0.0,
    augment_strength: NonNegativeFloat = 0.5,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """The phantom study: pretrain ConVIRT, then retrieval and probes at 1/10/100 % labels against random init.

    Args:
        out: Output folder (phantom, store, checkpoint, results.json, results.md).
        n: Phantom studies.
        size: Stored image side.
        backbone: Image tower.
        text: Text-tower options.
        epochs: Pretraining epochs.
        batch_size: Pretraining batch.
        lr: Adam learning rate.
        hflip: Horizontal-flip probability (0: the phantom reports name sides).
        augment_strength: Scale of the paper's augmentation ranges.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder
    from domainfm.studies.radiology.workflow import run_study

    with run_folder(Path(out)):  # new, empty or an earlier run of domainfm: never a folder of other files
        save_resolved_config(Path(out))
        run_study(
            Path(out),
            n,
            size,
            backbone,
            text,
            epochs,
            batch_size,
            lr,
            hflip,
            seed,
            device,
            augment_strength=augment_strength,
        )
        print((Path(out) / "results.md").read_text())
    return 0
