"""Image-level multi-label tables for radiographs: a CSV, a COCO JSON, or a folder of class subfolders.

``radiology ingest --labels`` reads one of:

* a CSV (``.csv`` or ``.csv.gz``): an image column (``Image Index``, ``image``, ``path``, ``file``,
  ``filename``; a relative path matches the end of an image's path) or a study id column (``study_id``,
  ``study``, ``id``), and either ``Finding Labels`` with ``|``-separated findings (NIH ChestX-ray14), or one
  0/1 column per label (CheXpert: blank and uncertain -1 count as 0; its ``Sex``, ``Age``,
  ``Frontal/Lateral`` and ``AP/PA`` columns are not labels). A patient column (``Patient ID``,
  ``patient_id``, ``patient``, ``subject_id``) is kept as the split group.
* a COCO JSON: ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``category_id``) and
  ``categories`` (``id``, ``name``); an image is positive for every category it has an annotation of;
* a folder whose subfolders are the classes (the images folder itself may be it): an image's label is the
  first folder under it.

Rows are looked up by the image's path (folders), file name, file stem or study id, in that order.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from domainfm.shared.errors import DomainfmError

IMAGE_COLUMNS = ("image index", "image", "image_id", "path", "file", "filename", "file_name")
STUDY_COLUMNS = ("study_id", "study id", "study", "id")
PATIENT_COLUMNS = ("patient id", "patient_id", "patientid", "patient", "subject_id")
FINDINGS_COLUMN = "finding labels"
# columns of public label tables that describe the image, not a finding (NIH, CheXpert); never labels
METADATA_COLUMNS = (
    "split", "sex", "age", "frontal/lateral", "ap/pa", "view position", "follow-up #", "patient age",
    "patient gender", "originalimage[width", "height]", "originalimagepixelspacing[x", "y]",
)  # fmt: skip


class LabelsError(DomainfmError, ValueError):
    """A labels file that cannot be used; the message names the file and the fix."""


@dataclass
class LabelTable:
    """Label names, key -> multi-hot row, and key -> patient id where the source names one."""

    path: Path
    names: list[str]
    rows: dict[str, np.ndarray]
    patients: dict[str, str] = field(default_factory=dict)
    _by_name: dict[str, list[str]] | None = field(default=None, repr=False, compare=False)

    def key_of(self, image: Path, study_id: str) -> str | None:
        """The table key of ``image``, or ``None``.

        Tried in order: its resolved path, a relative path the image's path ends with (CheXpert's
        ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``), its file name, stem, study id.
        """
        resolved = Path(image).resolve()
        if str(resolved) in self.rows:
            return str(resolved)
        for key in self._relative_keys().get(resolved.name, []):
            parts = Path(key).parts
            if resolved.parts[-len(parts) :] == parts:
                return key
        for key in (resolved.name, resolved.stem, study_id):
            if key in self.rows:
                return key
        return None

    def _relative_keys(self) -> dict[str, list[str]]:
        """Keys that are relative paths of several parts, by their file name (built once)."""
        if self._by_name is None:
            self._by_name = {}
            for key in self.rows:
                if "/" in key and not Path(key).is_absolute():
                    self._by_name.setdefault(Path(key).name, []).append(key)
        return self._by_name


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def read_label_csv(path: Path) -> LabelTable:
    """A label CSV (see the module docstring)."""
    try:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle)
            rows = [(reader.line_num, row) for row in reader]  # the file's line of each row (blank lines skipped)
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LabelsError(f"{path}: cannot be read as a labels CSV ({error})") from error
    columns = {c.strip().lower(): c for c in header}
    key = next((columns[c] for c in (*IMAGE_COLUMNS, *STUDY_COLUMNS) if c in columns), None)
    if key is None or not rows:
        raise LabelsError(
            f"{path}: a labels CSV needs an image column ({', '.join(IMAGE_COLUMNS)}) or a study id column "
            f"({', '.join(STUDY_COLUMNS)}) and one row per image; it has {header or 'no header'}"
        )
    for line, row in rows:
        row[key] = (row[key] or "").strip()
        if not row[key]:
            raise LabelsError(f"{path}, line {line}: the {key!r} column is empty; every row names its image or study")
    patient = next((columns[c] for c in PATIENT_COLUMNS if c in columns), None)
    patients = {row[key]: row[patient].strip() for _, row in rows if patient and (row[patient] or "").strip()}
    if FINDINGS_COLUMN in columns:
        names, table = _findings_table(path, rows, key, columns[FINDINGS_COLUMN])
    else:
        skip = {key, patient, *(columns[c] for c in METADATA_COLUMNS if c in columns)}
        names = [c for c in header if c not in skip]
        if not names:
            raise LabelsError(
                f"{path}: no label columns besides {sorted(c for c in skip if c)}; add one 0/1 column per label"
            )
        table = _columns_table(path, rows, key, names)
    return LabelTable(path, names, table, patients)


def _findings_table(
    path: Path, rows: list[tuple[int, dict]], key: str, column: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """NIH style: one column of ``|``-separated findings; the label names are every finding named."""
    findings: dict[str, set[str]] = {}
    for line, row in rows:
        found = {f.strip() for f in (row[column] or "").split("|") if f.strip()}
        if findings.setdefault(row[key], found) != found:
            raise LabelsError(f"{path}, line {line}: {row[key]!r} is listed twice with different labels")
    names = sorted(set().union(*findings.values()))
    return names, {k: np.array([int(n in found) for n in names], np.uint8) for k, found in findings.items()}


def _columns_table(path: Path, rows: list[tuple[int, dict]], key: str, names: list[str]) -> dict[str, np.ndarray]:
    """One 0/1 column per label (blank, 0 and negative values are 0)."""
    table: dict[str, np.ndarray] = {}
    for line, row in rows:
        values = []
        for name in names:
            try:
                values.append(int(float(row[name] or 0) > 0))
            except ValueError as error:
                raise LabelsError(
                    f"{path}, line {line}: column {name!r} holds {row[name]!r}; label columns must be 0/1 "
                    f"(remove other columns, or use a 'Finding Labels' column of '|'-separated findings)"
                ) from error
        if row[key] in table and table[row[key]].tolist() != values:
            raise LabelsError(f"{path}, line {line}: {row[key]!r} is listed twice with different labels; keep one row")
        table[row[key]] = np.array(values, np.uint8)
    return table


def read_coco(path: Path) -> LabelTable:
    """Image-level multi-labels from a COCO JSON: a category is positive when the image has an annotation of it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        images = {i["id"]: str(i["file_name"]) for i in data["images"]}
        annotations = [(a["image_id"], a["category_id"]) for a in data.get("annotations", [])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise LabelsError(
            f"{path}: not a COCO JSON with images (id, file_name), categories (id, name) and annotations "
            f"(image_id, category_id) ({type(error).__name__}: {error})"
        ) from error
    names = sorted(set(categories.values()))
    table = {Path(name).name: np.zeros(len(names), np.uint8) for name in images.values()}
    for image_id, category in annotations:
        if image_id not in images or category not in categories:
            raise LabelsError(
                f"{path}: an annotation names image {image_id} or category {category}, which are not listed"
            )
        table[Path(images[image_id]).name][names.index(categories[category])] = 1
    return LabelTable(path, names, table)


def read_class_folders(folder: Path, images: list[Path]) -> LabelTable:
    """One class per subfolder of ``folder``: each of ``images`` under one is labelled by it."""
    folder = Path(folder).resolve()
    classes: dict[str, str] = {}
    for image in images:
        relative = Path(image).resolve().relative_to(folder) if Path(image).resolve().is_relative_to(folder) else None
        if relative is not None and len(relative.parts) > 1:
            classes[str(Path(image).resolve())] = relative.parts[0]
    names = sorted(set(classes.values()))
    if not names:
        raise LabelsError(
            f"{folder}: no image lies in a class subfolder (put each class's images in a folder named by it)"
        )
    table = {key: np.array([int(n == c) for n in names], np.uint8) for key, c in classes.items()}
    return LabelTable(folder, names, table)


def read_labels(path: Path, images: list[Path] | None = None) -> LabelTable:
    """A label table from a CSV, a COCO JSON or a class-folder tree (``images``: the files to label)."""
    path = Path(path)
    if path.is_dir():
        return read_class_folders(path, images or [])
    if not path.is_file():
        raise LabelsError(f"{path} does not exist: give a labels CSV, a COCO JSON or a folder of class subfolders")
    if path.suffix.lower() == ".json":
        return read_coco(path)
    if path.name.lower().endswith((".csv", ".csv.gz")):
        return read_label_csv(path)
    raise LabelsError(f"{path}: labels must be a CSV (.csv, .csv.gz), a COCO .json or a folder of class subfolders")
