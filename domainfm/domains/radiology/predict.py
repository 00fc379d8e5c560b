"""``domainfm radiology predict``: finding probabilities per radiograph, as a CSV and DICOM a PACS takes back.

A radiograph classifier (:mod:`domainfm.domains.radiology.deploy`) runs through its deployed contract: a
DICOM file is read through its display transform (modality LUT, VOI LUT or window, MONOCHROME1 inverted;
:mod:`.images`), a PNG/JPEG/TIFF by its grey values, both at their own size, and the network letterboxes the
image to its training size as ``radiology ingest`` stored it. The scores are sigmoids, one per label
(multi-label, as in ConVIRT's CheXpert evaluation, Zhang et al., arXiv 2010.00747). For each input
``NAME.EXT``:

* a row of ``predictions.csv``: ``input`` (the path relative to the folder given), ``study`` (the
  ingest's rule: the file stem, or with ``study_from=parent`` the parent folder's name), ``patient`` (the
  DICOM ``PatientID``, else a CheXpert/MIMIC-CXR patient folder of the path), ``image`` (the file name),
  ``top`` (the most probable label), ``predicted`` (the labels at or above ``threshold``, ``;``-separated),
  one ``p_LABEL`` column per label, for DICOM inputs ``study_uid``, ``series_uid``, ``sop_instance_uid``
  and ``accession``, and the ``sr`` / ``sc`` files written;
* with ``dicom_sr``, for DICOM inputs: ``sr/NAME.dcm``, a Comprehensive SR in the source's study
  (:mod:`.report_sr`);
* with ``dicom_sc``, for DICOM inputs: ``sc/NAME.dcm``, a Secondary Capture image of the radiograph as
  displayed with the top finding written into its pixels (:mod:`.report_sc`);
* with ``explain``: ``explanations/NAME.png``, the ``explain`` overlay (integrated gradients for the top
  label; docs/explain.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from domainfm.domains.radiology.images import DICOM_SUFFIXES, RASTER_SUFFIXES
from domainfm.shared.config import Fraction
from domainfm.shared.deploy.card import Deployable
from domainfm.shared.predict import InputFile, Outputs

DICOM_COLUMNS = ("study_uid", "series_uid", "sop_instance_uid", "accession")


def probability_column(label: str) -> str:
    """The CSV column of a label's probability."""
    return f"p_{label}"


def dicom_header(path: Path) -> Any | None:
    """The header of a DICOM input (no pixels), or ``None`` when it cannot be read (the pixels then fail)."""
    import pydicom

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # pydicom raises several types for broken files; the image reader names the problem
        return None


def identity(item: InputFile, header: Any | None, study_from: str) -> dict[str, Any]:
    """The ``study``, ``patient``, ``image`` and DICOM UID columns of one input."""
    from domainfm.domains.radiology.data import study_of
    from domainfm.domains.radiology.groups import path_patient

    patient = str(header.get("PatientID") or "").strip() if header is not None else ""
    row = {
        "study": study_of(item.path, study_from),  # type: ignore[arg-type]
        "patient": patient or path_patient(item.path) or "",
        "image": item.path.name,
    }
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "AccessionNumber")
    for column, keyword in zip(DICOM_COLUMNS, keywords, strict=True):
        row[column] = str(header.get(keyword) or "") if header is not None else ""
    return row


def probabilities(deployable: Deployable, image: torch.Tensor, device: torch.device) -> np.ndarray:
    """The sigmoid per label of one raw radiograph ``[1, 1, H, W]`` (display values 0..255)."""
    from domainfm.shared.deploy import predict

    return predict(deployable, image.to(device))[0].float().cpu().numpy().astype(np.float64)


def _read(item: InputFile, deployable: Deployable) -> torch.Tensor:
    from domainfm.shared.deploy import read_input

    return read_input(item.path, deployable.card)


def _dicom_outputs(
    item: InputFile,
    outputs: Outputs,
    image: torch.Tensor,
    labels: list[str],
    scores: np.ndarray,
    threshold: float,
    dicom_sr: bool,
    dicom_sc: bool,
    model: dict[str, str],
) -> dict[str, str]:
    """Writes the SR and / or SC of one DICOM input; returns their ``sr`` / ``sc`` columns."""
    import domainfm
    from domainfm.domains.radiology.report_sr import read_source

    source = read_source(item.path)
    columns = {}
    if dicom_sr:
        from domainfm.domains.radiology.report_sr import structured_report

        report = structured_report(source, labels, scores.tolist(), threshold, version=domainfm.__version__, **model)
        report.save_as(outputs.path("sr", ".dcm"))
        columns["sr"] = f"sr/{item.stem}.dcm"
    if dicom_sc:
        from domainfm.domains.radiology.report_sc import secondary_capture

        top = int(np.argmax(scores))
        capture = secondary_capture(source, image[0, 0].numpy(), labels[top], float(scores[top]), domainfm.__version__)
        capture.save_as(outputs.path("sc", ".dcm"))
        columns["sc"] = f"sc/{item.stem}.dcm"
    return columns


def predict_radiograph(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    threshold: float,
    study_from: str,
    dicom_sr: bool,
    dicom_sc: bool,
    explain: bool,
    device: torch.device,
    model_sha256: str = "",
) -> dict[str, Any]:
    """One radiograph's CSV row, and its SR / SC / explanation files when asked (see the module docstring)."""
    labels = list(deployable.card.class_names)
    is_dicom = item.path.suffix.lower() in DICOM_SUFFIXES
    header = dicom_header(item.path) if is_dicom else None
    image = _read(item, deployable)
    scores = probabilities(deployable, image, device)
    if scores.shape != (len(labels),):
        raise ValueError(f"{item.path}: the model gave {scores.shape} scores for {len(labels)} labels")
    identifiers = identity(item, header, study_from)
    top = int(np.argmax(scores))
    row = {key: identifiers[key] for key in ("study", "patient", "image")}
    row["top"] = labels[top]
    row["predicted"] = ";".join(label for label, p in zip(labels, scores, strict=True) if p >= threshold)
    row.update({probability_column(label): float(p) for label, p in zip(labels, scores, strict=True)})
    row.update({key: identifiers[key] for key in DICOM_COLUMNS})
    row["sr"] = row["sc"] = ""
    if is_dicom and (dicom_sr or dicom_sc):
        try:
            model = {"model_name": deployable.source.name, "model_sha256": model_sha256}
            row.update(_dicom_outputs(item, outputs, image, labels, scores, threshold, dicom_sr, dicom_sc, model))
        except (AttributeError, TypeError, KeyError) as error:  # highdicom on a header it cannot use
            raise ValueError(f"{item.path}: cannot write DICOM results for it ({error!r})") from error
    if explain:
        from domainfm.shared.predict.explanations import explain_overlay

        title = f"{item.key} ({labels[top]})"
        explain_overlay(deployable, image, title, outputs.path("explanations", ".png"), device, target=top)
    return row


def predict(
    checkpoint: Path,
    input: list[Path],
    out: Path,
    threshold: Fraction = 0.5,
    study_from: Literal["stem", "parent"] = "stem",
    dicom_sr: bool = False,
    dicom_sc: bool = False,
    explain: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    json: bool = False,
) -> int:
    """Classify radiographs (DICOM, PNG/JPEG/TIFF, any size): label probabilities per image, DICOM back to a PACS.

    Writes OUT/predictions.csv (study, patient, image, DICOM UIDs, one p_LABEL column per label, the
    predicted labels at --threshold, the top label), and for DICOM inputs optionally OUT/sr/NAME.dcm (a
    DICOM Structured Report in the source's study) and OUT/sc/NAME.dcm (a Secondary Capture with the top
    finding written on the image). Resumable: a rerun predicts only the inputs not finished
    (docs/predict/radiology.md).

    Args:
        checkpoint: A radiograph classifier written by ``domainfm radiology train``.
        input: Radiographs (.dcm/.dicom, .png/.jpg/.tif) or folders holding them (searched recursively;
            outputs keep the relative names).
        out: The folder to write (new, empty, or an earlier ``predict`` output to resume).
        threshold: A label is predicted where its probability is at least this.
        study_from: The study id of an image, as ``radiology ingest`` takes it: ``stem`` (the file name
            without suffix) or ``parent`` (its folder's name, as in MIMIC-CXR).
        dicom_sr: For DICOM inputs, also write a DICOM Structured Report (TID 1500) referencing the image.
        dicom_sc: For DICOM inputs, also write a Secondary Capture image with the top finding burned in.
        explain: Also write an integrated-gradients overlay of the top label per image (slow on big images).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overwrite: Predict every input again (also needed to reuse OUT with another model or options).
        json: Print the summary as JSON instead of a table.
    """
    import json as json_module

    from domainfm.domains.radiology.deploy import KIND
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.predict import load_for_domain, run_predictions
    from domainfm.shared.predict.runner import file_sha256

    torch_device = resolve_device(device)
    deployable = load_for_domain(checkpoint, "radiology", [KIND])
    deployable.network.to(torch_device)
    model_sha256 = file_sha256(deployable.source) if dicom_sr else ""

    def predict_one(deployable: Deployable, item: InputFile, outputs: Outputs) -> dict[str, Any]:
        return predict_radiograph(
            deployable, item, outputs, threshold, study_from, dicom_sr, dicom_sc, explain, torch_device, model_sha256
        )

    options = {"threshold": threshold, "study_from": study_from, "dicom_sr": dicom_sr, "dicom_sc": dicom_sc,
               "explain": explain}  # fmt: skip
    run = run_predictions(
        deployable, input, out, predict_one, suffixes=DICOM_SUFFIXES + RASTER_SUFFIXES,
        what="radiographs (DICOM or pictures)", options=options, overwrite=overwrite, progress=not json,
        title=f"radiology predict ({deployable.card.kind})",
    )  # fmt: skip
    if json:
        print(json_module.dumps(run.to_dict(), indent=2))
    return 2 if run.failed else 0
