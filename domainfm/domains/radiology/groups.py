"""The split group of a radiograph: its patient when known, else its study (issue #19, splits as data).

Images of one patient must land in one split, or a probe is scored on patients it was trained on. The
patient id comes from a labels CSV's patient column (NIH ``Patient ID``), the DICOM header (``PatientID``) or a
patient folder of the public layouts (CheXpert ``patient00001``, MIMIC-CXR ``p10000032``); without one, the
study id is the group. A ``--splits`` CSV (:mod:`domainfm.shared.tiles.splits`) keyed by
patient, study or image overrides the hash for the groups it lists.
"""

from __future__ import annotations

import re
from pathlib import Path

from domainfm.domains.radiology.images import DICOM_SUFFIXES
from domainfm.shared.tiles.splits import SplitTable, group_split

PATIENT_FOLDER = re.compile(r"patient\d+|p\d{8}")  # CheXpert patient00001, MIMIC-CXR p10000032


def dicom_patient(path: Path) -> str | None:
    """The ``PatientID`` of a DICOM file (header only), or ``None`` for other files and empty ids."""
    if Path(path).suffix.lower() not in DICOM_SUFFIXES:
        return None
    import pydicom

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception:
        return None
    patient = str(dataset.get("PatientID") or "").strip()
    return patient or None


def path_patient(image: Path) -> str | None:
    """The nearest patient folder above an image (CheXpert ``patient00001``, MIMIC-CXR ``p10000032``), or None."""
    for folder in reversed(Path(image).parent.parts):
        if PATIENT_FOLDER.fullmatch(folder):
            return folder
    return None


def image_group(image: Path, study_id: str, csv_patient: str | None = None) -> tuple[str, str]:
    """``(kind, key)`` of an image's split group: ``("patient", id)`` when known, else ``("study", study id)``.

    The patient is the labels CSV's patient column, else the DICOM ``PatientID``, else a CheXpert or
    MIMIC-CXR patient folder of the image's path.
    """
    patient = csv_patient or dicom_patient(image) or path_patient(image)
    return ("patient", patient) if patient else ("study", study_id)


def image_split(
    image: Path,
    study_id: str,
    group: str,
    table: SplitTable | None,
    val_fraction: float,
    test_fraction: float,
) -> int:
    """The split id of an image: the splits table's row for its group, study, file name or stem, else the hash."""
    aliases = (study_id, Path(image).name, Path(image).stem)
    return group_split(group, table, val_fraction, test_fraction, aliases=aliases)
