"""Radiographs + reports -> a radiology tile store (``domainfm radiology ingest``).

Each image becomes one ``[1, size, size]`` uint8 tile (display transform of :mod:`.images`, aspect kept,
padded with black), with companions ``study_id`` and ``sentences`` (the report's findings and impression
sentences, one per line, as ConVIRT samples them; Zhang et al., MLHC 2022, arXiv 2010.00747) and, when
a labels CSV is given, ``labels`` (multi-hot, columns named by the store's ``label_names``).

An image is paired with a report by its study id: the file stem (default), the name of its parent folder
(``study_from="parent"``, as in MIMIC-CXR's ``.../s5xxxxxxx/<dicom>.dcm``), or, for Open-i XML reports,
the ``parentImage`` ids the report lists. Images without a report and reports without an image are listed;
the ingest refuses to start while any exist unless ``allow_unpaired`` is set, and then records them in the
store's ``unpaired`` attribute. Splits come from a stable hash of the study id, so all images of a study
share a split.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from domainfm.domains.radiology.images import DICOM_SUFFIXES, RASTER_SUFFIXES, ingest_tile
from domainfm.domains.radiology.reports import Report, read_reports
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import unpaired_report
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import TEXT, Companion, StoreSpec, TileBatch, stable_split

READER_VERSION = "1"


class PairingError(DomainfmError, ValueError):
    """Images and reports that do not pair up."""


@dataclass
class Pairing:
    """Images matched to reports, and what did not match."""

    pairs: list[tuple[Path, Report]] = field(default_factory=list)
    images_without_report: list[Path] = field(default_factory=list)
    reports_without_image: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every image has a report and every report an image."""
        return not (self.images_without_report or self.reports_without_image)

    def report(self, limit: int = 20) -> str:
        """The unpaired items, one per line (at most ``limit`` of each kind)."""
        unpaired = {
            "images without a report": self.images_without_report,
            "reports without an image (study ids)": self.reports_without_image,
        }
        return unpaired_report(len(self.pairs), unpaired, limit)


def find_images(folder: Path) -> list[Path]:
    """Radiographs under ``folder`` (recursive): DICOM by suffix, or raster images."""
    if not Path(folder).is_dir():
        raise PairingError(f"{folder} is not a folder of images")
    suffixes = DICOM_SUFFIXES + RASTER_SUFFIXES
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def pair(images: list[Path], reports: list[Report], study_from: Literal["stem", "parent"] = "stem") -> Pairing:
    """Matches images to reports (see the module docstring)."""
    by_key: dict[str, Report] = {}
    for report in reports:
        for key in report.images or [report.study_id]:
            by_key[key] = report
    pairing, used = Pairing(), set()
    for image in images:
        key = image.parent.name if study_from == "parent" else image.stem
        if key in by_key:
            pairing.pairs.append((image, by_key[key]))
            used.add(by_key[key].study_id)
        else:
            pairing.images_without_report.append(image)
    pairing.reports_without_image = sorted({r.study_id for r in reports} - used)
    return pairing


def read_labels(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(label names, study id -> multi-hot uint8)`` from a CSV with ``study_id`` and 0/1 columns."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "study_id" not in rows[0]:
        raise ValueError(f"{path}: a labels CSV needs a study_id column and one 0/1 column per label")
    names = [k for k in rows[0] if k != "study_id"]
    labels = {}
    for row in rows:
        try:
            labels[row["study_id"]] = np.array([int(float(row[n] or 0) > 0) for n in names], np.uint8)
        except ValueError as error:
            raise ValueError(f"{path}: study {row['study_id']}: labels must be numbers ({error})") from error
    return names, labels


def read_study(
    path: Path,
    studies: dict[str, tuple[str, str]],
    size: int,
    labels: dict[str, list[int]] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Iterator[TileBatch]:
    """Reader for the ingest engine: one radiograph with its study id, sentences and labels."""
    study_id, sentences = studies[str(path)]
    tile = ingest_tile(Path(path), size)[0]
    companions = {"study_id": [study_id], "sentences": [sentences]}
    if labels is not None:
        if study_id not in labels:
            raise ValueError(f"study {study_id} has no row in the labels CSV")
        companions["labels"] = np.asarray([labels[study_id]], np.uint8)
    split = stable_split(study_id, val_fraction, test_fraction)
    yield TileBatch(tile[None, None], index={"split": np.array([split])}, companions=companions)


def radiology_spec(size: int, label_names: list[str] | None = None) -> StoreSpec:
    """The store spec of ``size x size`` radiographs with report sentences (and multi-hot labels)."""
    companions = {"study_id": Companion((), TEXT), "sentences": Companion((), TEXT)}
    if label_names:
        companions["labels"] = Companion((len(label_names),), "uint8")
    return StoreSpec(
        "radiology",
        (1, size, size),
        "uint8",
        [{"name": "xray", "unit": "display intensity, air dark (VOI window / LUT applied)"}],
        value_scaling={"tiles": "display value in [0, 1] x 255; padding 0 (black)"},
        label_names=list(label_names or []),
        companions=companions,
    )


def ingest_studies(
    images: Path,
    reports: Path,
    out: Path,
    size: int = 224,
    labels: Path | None = None,
    study_from: Literal["stem", "parent"] = "stem",
    allow_unpaired: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[IngestSummary, Pairing]:
    """Pairs radiographs with reports and ingests the pairs (see the module docstring)."""
    import zarr

    from domainfm.shared.tiles.ingest import ingest

    pairing = pair(find_images(Path(images)), read_reports(Path(reports)), study_from)
    if not pairing.pairs:
        raise PairingError(f"no image in {images} matches a report in {reports}\n{pairing.report()}")
    if not pairing.complete and not allow_unpaired:
        raise PairingError(
            f"{pairing.report()}\nNothing was written. Add the missing items, or pass --allow-unpaired "
            "to ingest the pairs and record the rest."
        )
    names, label_map = read_labels(Path(labels)) if labels else ([], None)
    studies = {str(image): (report.study_id, "\n".join(report.sentences)) for image, report in pairing.pairs}
    reader = partial(
        read_study,
        studies=studies,
        size=size,
        labels={k: v.tolist() for k, v in label_map.items()} if label_map is not None else None,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    sources = [image for image, _ in pairing.pairs]
    spec = radiology_spec(size, names)
    summary = ingest(
        sources, out, spec, reader, "radiology.images_reports", READER_VERSION,
        workers, scheduler, processes, overwrite, progress,
    )  # fmt: skip
    if summary.ok:
        zarr.open_group(out, mode="a").attrs["unpaired"] = {
            "images_without_report": [str(p) for p in pairing.images_without_report],
            "reports_without_image": pairing.reports_without_image,
        }
    return summary, pairing
