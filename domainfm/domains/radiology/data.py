"""Radiographs with reports and/or labels -> a radiology tile store (``domainfm radiology ingest``).

Each image becomes one ``[1, size, size]`` uint8 tile (display transform of :mod:`.images`, aspect kept,
padded with black), with companions ``study_id``, ``group`` (the split group's key), ``sentences`` when
reports are given (the report's findings and impression sentences, one per line, as ConVIRT samples them;
Zhang et al., MLHC 2022, arXiv 2010.00747) and ``labels`` when labels are given (multi-hot, columns named
by the store's ``label_names``; :mod:`.labels` reads a CSV, a COCO JSON or class folders).

An image is paired with a report by its study id: the file stem (default), the name of its parent folder
(``study_from="parent"``, as in MIMIC-CXR's ``.../s5xxxxxxx/<dicom>.dcm``), or, for Open-i XML reports,
the ``parentImage`` ids the report lists. Images without a report (or label row) and reports without an
image are listed; the ingest refuses to start while any exist unless ``allow_unpaired`` is set, and then
records them in the store's ``unpaired`` attribute. A store without reports serves probes and fine-tuning,
not ConVIRT pretraining.

Splits are decided per group (:mod:`.groups`): the patient (DICOM ``PatientID`` or a labels CSV's patient
column) when known, else the study; a ``splits`` CSV overrides the hash. The store's ``groups`` attribute
records the group kinds and the splits CSV.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from domainfm.domains.radiology.groups import image_group, image_split
from domainfm.domains.radiology.images import DICOM_SUFFIXES, RASTER_SUFFIXES, ingest_tile
from domainfm.domains.radiology.labels import LabelTable, read_labels
from domainfm.domains.radiology.reports import Report, read_report_folder, read_reports
from domainfm.shared.errors import DomainfmError
from domainfm.shared.report import unpaired_report
from domainfm.shared.tiles.ingest import IngestSummary
from domainfm.shared.tiles.schema import SPLITS, TEXT, Companion, StoreSpec, TileBatch
from domainfm.shared.tiles.splits import read_splits_csv, split_counts_problem

READER_VERSION = "2"  # 2: split by patient (else study) group, ``group`` companion, label-only stores


class PairingError(DomainfmError, ValueError):
    """Images and reports (or labels) that do not pair up."""


@dataclass
class Pairing:
    """Images matched to reports (and label rows), and what did not match."""

    pairs: list[tuple[Path, Report]] = field(default_factory=list)
    images_without_report: list[Path] = field(default_factory=list)
    reports_without_image: list[str] = field(default_factory=list)
    images_without_labels: list[Path] = field(default_factory=list)
    skipped_files: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every image has a report (and label row) and every report an image."""
        return not (self.images_without_report or self.reports_without_image or self.images_without_labels)

    def report(self, limit: int = 20) -> str:
        """The unpaired items, one per line (at most ``limit`` of each kind)."""
        unpaired = {
            "images without a report": self.images_without_report,
            "reports without an image (study ids)": self.reports_without_image,
            "images without a row in the labels": self.images_without_labels,
            "files in the report folder skipped (not a report format)": self.skipped_files,
        }
        return unpaired_report(len(self.pairs), unpaired, limit)


@dataclass(frozen=True)
class StudyImage:
    """What the tile reader stores for one image (picklable for process workers)."""

    study_id: str
    group: str
    split: int
    sentences: str | None
    labels: tuple[int, ...] | None


def _is_radiograph(path: Path) -> bool:
    """DICOM or raster by suffix, or a file without a suffix that is DICOM (``DICM`` at byte 128; not a DICOMDIR)."""
    if path.suffix.lower() in DICOM_SUFFIXES + RASTER_SUFFIXES:
        return True
    if path.suffix or path.name.upper() == "DICOMDIR":
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_images(folder: Path) -> list[Path]:
    """Radiographs under ``folder`` (recursive): DICOM (by suffix, or suffix-less with a DICOM preamble) or rasters."""
    if not Path(folder).is_dir():
        raise PairingError(f"{folder} is not a folder of images")
    return sorted(
        p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".") and _is_radiograph(p)
    )


def study_of(image: Path, study_from: Literal["stem", "parent"] = "stem") -> str:
    """The study id of an image: its file stem, or its parent folder's name."""
    return image.parent.name if study_from == "parent" else image.stem


def pair(images: list[Path], reports: list[Report], study_from: Literal["stem", "parent"] = "stem") -> Pairing:
    """Matches images to reports (see the module docstring)."""
    by_key: dict[str, Report] = {}
    for report in reports:
        for key in report.images or [report.study_id]:
            by_key[key] = report
    pairing, used = Pairing(), set()
    for image in images:
        key = study_of(image, study_from)
        if key in by_key:
            pairing.pairs.append((image, by_key[key]))
            used.add(by_key[key].study_id)
        else:
            pairing.images_without_report.append(image)
    pairing.reports_without_image = sorted({r.study_id for r in reports} - used)
    return pairing


def read_study(path: Path, studies: dict[str, StudyImage], size: int) -> Iterator[TileBatch]:
    """Reader for the ingest engine: one radiograph with its study id, group, sentences and labels."""
    study = studies[str(path)]
    tile = ingest_tile(Path(path), size)[0]
    companions: dict = {"study_id": [study.study_id], "group": [study.group]}
    if study.sentences is not None:
        companions["sentences"] = [study.sentences]
    if study.labels is not None:
        companions["labels"] = np.asarray([study.labels], np.uint8)
    yield TileBatch(tile[None, None], index={"split": np.array([study.split])}, companions=companions)


def radiology_spec(size: int, label_names: list[str] | None = None, reports: bool = True) -> StoreSpec:
    """The store spec of ``size x size`` radiographs with report sentences and/or multi-hot labels."""
    companions = {"study_id": Companion((), TEXT), "group": Companion((), TEXT)}
    if reports:
        companions["sentences"] = Companion((), TEXT)
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


def _pairing(
    found: list[Path], reports: Path | None, table: LabelTable | None, study_from: Literal["stem", "parent"]
) -> Pairing:
    if reports is None:
        pairing = Pairing(pairs=[(image, Report(study_of(image, study_from))) for image in found])
    elif Path(reports).is_dir():
        read, skipped = read_report_folder(Path(reports))
        pairing = pair(found, read, study_from)
        pairing.skipped_files = skipped
    else:
        pairing = pair(found, read_reports(Path(reports)), study_from)
    if table is not None:
        labelled = [(i, r) for i, r in pairing.pairs if table.key_of(i, r.study_id) is not None]
        pairing.images_without_labels = [i for i, r in pairing.pairs if table.key_of(i, r.study_id) is None]
        pairing.pairs = labelled
    return pairing


def empty_split_warning(store_path: Path, counts: dict[str, int]) -> str | None:
    """The ingest's warning when a split is empty (``None`` when every split holds images)."""
    problem = split_counts_problem(counts)
    return f"{store_path}: {problem}" if problem else None


def ingest_studies(
    images: Path,
    reports: Path | None,
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
    splits: Path | None = None,
) -> tuple[IngestSummary, Pairing]:
    """Pairs radiographs with reports and/or labels and ingests them (see the module docstring).

    ``reports`` may be ``None`` when ``labels`` are given (a store for probes and fine-tuning); ``splits`` is a
    CSV of ``patient|study|image,split`` rows. An empty split is warned about, not refused.
    """
    from domainfm.shared.tiles.ingest import ingest

    if reports is None and labels is None:
        raise PairingError(f"{images}: give --reports (for ConVIRT) and/or --labels (for probes and fine-tuning)")
    found = find_images(Path(images))
    table = read_labels(Path(labels), found) if labels else None
    split_table = read_splits_csv(splits) if splits else None
    pairing = _pairing(found, Path(reports) if reports else None, table, study_from)
    if not pairing.pairs:
        given = " and ".join(str(p) for p in (reports, labels) if p)
        raise PairingError(f"no image in {images} matches {given}\n{pairing.report()}")
    if not pairing.complete and not allow_unpaired:
        raise PairingError(
            f"{pairing.report()}\nNothing was written. Add the missing items, or pass --allow-unpaired "
            "to ingest the pairs and record the rest."
        )
    studies, kinds = {}, Counter()
    for image, report in pairing.pairs:
        key = table.key_of(image, report.study_id) if table else None
        kind, group = image_group(image, report.study_id, table.patients.get(key) if table and key else None)
        kinds[kind] += 1
        split = image_split(image, report.study_id, group, split_table, val_fraction, test_fraction)
        sentences = "\n".join(report.sentences) if reports is not None else None
        row = tuple(int(v) for v in table.rows[key]) if table and key else None
        studies[str(image)] = StudyImage(report.study_id, group, split, sentences, row)
    reader = partial(read_study, studies=studies, size=size)
    sources = [image for image, _ in pairing.pairs]
    spec = radiology_spec(size, table.names if table else [], reports is not None)
    recorded = {
        "unpaired": {
            "images_without_report": [str(p) for p in pairing.images_without_report],
            "reports_without_image": pairing.reports_without_image,
            "images_without_labels": [str(p) for p in pairing.images_without_labels],
        },
        "groups": {"kinds": dict(kinds), "splits_csv": str(splits) if splits else None},
    }
    summary = ingest(
        sources, out, spec, reader, "radiology.images_reports", READER_VERSION,
        workers, scheduler, processes, overwrite, progress, attrs=recorded,
    )  # fmt: skip
    if summary.ok:
        counts = Counter(s.split for s in studies.values())
        warning = empty_split_warning(Path(out), {name: counts[i] for name, i in SPLITS.items()})
        if warning:
            warnings.warn(warning, stacklevel=2)
    return summary, pairing
