"""A radiograph classifier's findings as a DICOM Structured Report that can go back to the PACS.

The document is a Comprehensive SR (PS3.3 A.35.3) holding a TID 1500 *Imaging Measurement Report*,
written with highdicom (Bridge et al., "Highdicom: a Python library for standardized encoding of image
annotations and machine learning model outputs in pathology and radiology", J Digit Imaging 2022):

* patient, study and accession attributes are copied from the source image, so the report files into
  the source's study (same ``StudyInstanceUID``) in a new series (new ``SeriesInstanceUID`` and
  ``SOPInstanceUID``); the source is listed as evidence (``CurrentRequestedProcedureEvidenceSequence``)
  and as each group's source image (``ReferencedSOPSequence``), and in the image library (TID 1600) when
  its header has what TID 1603 describes a radiograph by (``PatientOrientation``, ``ImagerPixelSpacing``);
* the observer is a device: the classifier (TID 1004), named with its checkpoint's file name and SHA-256;
* one TID 1501 *Measurement and Qualitative Evaluation Group* per label: ``Finding`` (DCM 121071) = the
  label, ``Probability`` (DCM 122157) = the sigmoid output as a number with UCUM unit ``1`` (no units),
  and ``Presence of property`` (DCM 121052) = ``Present`` (DCM 121053) or ``Absent`` (DCM 121054), the
  model's call at the threshold (not a diagnosis), plus the algorithm's name, version and threshold.

Labels are the training labels of the model; no standard code is claimed for them. They are coded in the
local scheme :data:`SCHEME` (``99DOMAINFM``; PS3.16 8.2: designators beginning ``99`` are private), declared
in the ``CodingSchemeIdentificationSequence``: the code value is the label itself when it fits a Short
String code value (at most 16 ASCII characters, no backslash), else its first 8 ASCII characters, ``~``
and 7 hex digits of its SHA-256; the code meaning is the label (first 64 characters); backslashes, which separate
values in DICOM strings, become ``/`` in both. Labels beyond ASCII make the document UTF-8
(``SpecificCharacterSet`` ``ISO_IR 192``); otherwise it keeps the source's character set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEME = "99DOMAINFM"
SCHEME_NAME = "domainfm model labels (local: the training labels of a domainfm model)"
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "domainfm radiology.classifier findings"
PROCEDURE = ("168537006", "SCT", "Plain radiography")


def label_code(label: str) -> Any:
    """The local code (``99DOMAINFM``) of a model label (see the module docstring)."""
    from highdicom.sr import CodedConcept

    text = str(label).strip()
    safe = text.replace("\\", "/")  # a backslash separates values in DICOM strings
    fits = 0 < len(text) <= 16 and safe == text and text.isascii() and text.isprintable()
    prefix = "".join(c for c in safe if c.isascii() and c.isprintable())[:8]
    value = text if fits else f"{prefix}~{hashlib.sha256(text.encode()).hexdigest()[:7]}"
    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=safe[:64])


def read_source(path: Path) -> Any:
    """The header of a source DICOM image (no pixels), refused by name when it cannot carry a report."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        source = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable DICOM file: {error}") from error
    missing = [
        k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not source.get(k)
    ]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}: a report cannot reference it; predict without --dicom_sr, "
            "or fix the file's header"
        )
    return source


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
         "AccessionNumber", "ReferringPhysicianName")  # fmt: skip
"""Patient and General Study attributes of Type 2 (present, maybe empty) that the report copies."""


def evidence_header(source: Any) -> Any:
    """A copy of ``source`` with absent Type 2 patient and study attributes present and empty (unknown)."""
    from copy import deepcopy

    evidence = deepcopy(source)
    for keyword in TYPE2:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def _library_ready(source: Any) -> bool:
    """Whether highdicom can describe ``source`` in the image library (TID 1603 needs these for CR/DX/...)."""
    projection = source.get("Modality") in ("CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF")
    return not projection or all(source.get(k) for k in ("PatientOrientation", "ImagerPixelSpacing"))


def structured_report(
    source: Any,
    labels: Sequence[str],
    probabilities: Sequence[float],
    threshold: float,
    model_name: str,
    model_sha256: str,
    version: str,
) -> Any:
    """A Comprehensive SR (``highdicom.sr.ComprehensiveSR``) of one image's label probabilities."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        CodedConcept,
        ComprehensiveSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels but {len(probabilities)} probabilities")
    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[model_sha256]),  # one device UID per model
        name=model_name[:64],
        manufacturer_name="domainfm",
        model_name=f"radiology.classifier sha256:{model_sha256[:16]}",
    )
    context = ObservationContext(observer_device_context=ObserverContext(codes.DCM.Device, device))
    algorithm = AlgorithmIdentification(
        name="domainfm radiology.classifier", version=version, parameters=[f"threshold={threshold:g}"]
    )
    source = evidence_header(source)
    image = SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
    groups = []
    for label, probability in zip(labels, probabilities, strict=True):
        code = label_code(label)
        present = float(probability) >= threshold
        groups.append(
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier=f"{label}"[:64]),
                finding_type=code,
                algorithm_id=algorithm,
                source_images=[image],
                measurements=[
                    Measurement(name=codes.DCM.Probability, value=float(probability), unit=codes.UCUM.NoUnits)
                ],
                qualitative_evaluations=[
                    QualitativeEvaluation(
                        codes.DCM.PresenceOfProperty, codes.DCM.Present if present else codes.DCM.Absent
                    )
                ],
            )
        )
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept(*PROCEDURE),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=[source] if _library_ready(source) else None,
    )
    return ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="domainfm",
        is_complete=True,
        is_final=False,  # machine output nobody has verified
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        software_versions=version,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME)],
        **({} if all(str(label).isascii() for label in labels) else {"specific_character_set": "ISO_IR 192"}),
    )
