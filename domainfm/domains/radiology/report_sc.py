"""A radiograph with its top finding written on it, as a DICOM Secondary Capture image for the PACS.

Written with highdicom (Bridge et al., J Digit Imaging 2022; ``highdicom.sc.SCImage``): the radiograph as
the model saw it (the display transform of :mod:`.images`, 8-bit, at the source's size) in RGB, with a
banner across its top naming the most probable label, its probability and that it is unverified model
output. Patient, study and accession attributes come from the source, in a new series; the source is
referenced in ``SourceImageSequence``; ``BurnedInAnnotation`` is ``YES``. The source's
``PatientOrientation`` and its ``Laterality`` (or ``ImageLaterality``, R/L) are kept when it has them,
else left empty (unknown: both Type 2C, PS3.3 C.7.3.1 and C.7.6.1; dciodvfy then warns that an empty
``Laterality`` is only right when it is unknown, as it is to the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SERIES_NUMBER = 902
SERIES_DESCRIPTION = "domainfm radiology.classifier top finding (secondary capture)"
BANNER = (255, 210, 0)  # amber text on black


def banner_lines(label: str, probability: float) -> list[str]:
    """The lines written on the image."""
    return [f"{label} p={probability:.2f}", "domainfm model output, unverified"]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def burn_in(picture: np.ndarray, lines: list[str]) -> np.ndarray:
    """``picture`` (``[H, W]`` display values 0..255) as RGB uint8 with ``lines`` on a black band at its top.

    The font is the largest (at most 1/32 of the height) at which every line fits the width.
    """
    from PIL import Image, ImageDraw

    grey = np.clip(np.asarray(picture, np.float32) + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(grey).convert("RGB")
    height, width = grey.shape
    draw = ImageDraw.Draw(image)
    size = max(6, height // 32)
    while size > 6 and max(draw.textlength(line, font=_font(size)) for line in lines) > width - size:
        size -= max(1, size // 10)
    font, margin = _font(size), max(2, size // 4)
    text = "\n".join(lines)
    bottom = draw.multiline_textbbox((margin, margin), text, font=font)[3]
    draw.rectangle((0, 0, width, min(height, bottom + margin)), fill=(0, 0, 0))
    draw.multiline_text((margin, margin), text, fill=BANNER, font=font)
    return np.asarray(image)


def _orientation(source: Any) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    return str(value[0]), str(value[1])


def secondary_capture(source: Any, picture: np.ndarray, label: str, probability: float, version: str) -> Any:
    """A ``highdicom.sc.SCImage`` of ``picture`` (the source radiograph's display values) with the top finding."""
    from highdicom.sc import SCImage
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from domainfm.domains.radiology.report_sr import evidence_header

    source = evidence_header(source)
    orientation = _orientation(source)
    try:
        capture = SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=burn_in(picture, banner_lines(label, probability)),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="domainfm",
            patient_orientation=orientation or ("A", "F"),  # placeholder, emptied below when unknown
            series_description=SERIES_DESCRIPTION,
            software_versions=version,
        )
    except ValueError as error:  # e.g. an orientation value highdicom does not accept
        raise ValueError(f"cannot write a Secondary Capture of {source.SOPInstanceUID}: {error}") from error
    if orientation is None:
        capture.PatientOrientation = None  # Type 2C: present and empty when unknown
    laterality = source.get("Laterality") or source.get("ImageLaterality")
    capture.Laterality = laterality if laterality in ("R", "L") else None  # Type 2C: empty when not known
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = "; ".join(banner_lines(label, probability))
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture
