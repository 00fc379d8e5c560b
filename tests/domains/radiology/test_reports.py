"""Report files of every supported format mixed in a folder, column aliases, and Open-i sentence splitting."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.radiology.data import ingest_studies
from domainfm.domains.radiology.reports import ReportsError, read_report_folder, read_reports, split_sentences
from domainfm.shared.tiles.store import TileStore

# the impression of an Open-i report (IU X-ray, ecgen-radiology/1002.xml style), as NLM distributes it
OPENI_IMPRESSION = (
    "1. Increased opacity in the right upper lobe with XXXX associated atelectasis may represent focal "
    "consolidation or mass lesion with atelectasis. Recommend chest CT for further evaluation. 2. XXXX opacity "
    "overlying the left 5th rib may represent focal airspace disease."
)


def _openi_xml(path: Path, uid: str, image: str, findings: str, impression: str) -> None:
    path.write_text(
        f'<eCitation><uId id="{uid}"/><MedlineCitation><Article><Abstract>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f'</Abstract></Article></MedlineCitation><parentImage id="{image}"/></eCitation>'
    )


def test_openi_numbered_items_keep_their_text_and_xxxx_is_dropped():
    assert split_sentences(OPENI_IMPRESSION) == [
        "1. Increased opacity in the right upper lobe with associated atelectasis may represent focal "
        "consolidation or mass lesion with atelectasis.",
        "Recommend chest CT for further evaluation.",
        "2. opacity overlying the left 5th rib may represent focal airspace disease.",
    ]
    assert split_sentences("Comparison XXXX, XXXX. No comparison chest x-XXXX. XXXX. The XXXX are intact. 3.") == [
        "Comparison.",
        "No comparison chest x.",
        "The are intact.",
    ]
    assert split_sentences("Nodule of 2.5 cm. 1) Heart normal.") == ["Nodule of 2.5 cm.", "1) Heart normal."]


def test_a_folder_of_mixed_formats_reads_every_report_and_names_skipped_files(tmp_path: Path):
    _openi_xml(tmp_path / "1.xml", "CXR1", "CXR1_1_IM-0001-3001", "The heart is normal. XXXX.", OPENI_IMPRESSION)
    (tmp_path / "more.csv").write_text("StudyID,Report\ns2,Lungs are clear. No effusion.\n")
    (tmp_path / "more.jsonl").write_text(json.dumps({"Study": "s3", "Findings": "Small effusion."}) + "\n")
    (tmp_path / "s4.txt").write_text(
        "EXAMINATION: CHEST PA AND LAT\nINDICATION: cough\nFINDINGS: Heart size normal. No pneumothorax.\n"
        "IMPRESSION: No acute process.\n"
    )
    (tmp_path / "README.md").write_text("not a report")
    reports, skipped = read_report_folder(tmp_path)
    by_study = {r.study_id: r.sentences for r in reports}
    assert by_study == {
        "CXR1": ["The heart is normal.", *split_sentences(OPENI_IMPRESSION)],
        "s2": ["Lungs are clear.", "No effusion."],
        "s3": ["Small effusion."],
        "s4": ["Heart size normal.", "No pneumothorax.", "No acute process."],
    }
    assert [p.name for p in skipped] == ["README.md"]


def test_findings_and_impression_are_concatenated_and_other_columns_are_listed(tmp_path: Path):
    (tmp_path / "r.csv").write_text("UID,FINDINGS,Impression\nx1,Heart normal.,No disease.\n")
    assert read_reports(tmp_path / "r.csv")[0].sentences == ["Heart normal.", "No disease."]
    (tmp_path / "bad.csv").write_text("accession,narrative\nx1,Heart normal.\n")
    with pytest.raises(
        ReportsError, match=r"bad\.csv: a report table needs a study id column .*\['accession', 'narrative'\]"
    ):
        read_reports(tmp_path / "bad.csv")


def test_a_report_csv_with_other_columns_exits_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "s1.png")
    (tmp_path / "r.csv").write_text("Accession,Narrative\ns1,Clear.\n")
    args = ["--images", str(tmp_path / "images"), "--reports", str(tmp_path / "r.csv"), "--out", str(tmp_path / "s")]
    assert main(["radiology", "ingest", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "r.csv" in error and "Accession" in error


def test_a_mixed_report_folder_ingests_and_pairs_every_study(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("CXR1_1_IM-0001-3001", "s2", "s4"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / f"{stem}.png")
    reports = tmp_path / "reports"
    reports.mkdir()
    _openi_xml(reports / "1.xml", "CXR1", "CXR1_1_IM-0001-3001", "Heart normal.", OPENI_IMPRESSION)
    (reports / "r.csv").write_text("study_id,report\ns2,Lungs are clear.\n")
    (reports / "s4.txt").write_text("FINDINGS: No pneumothorax.\n")
    summary, pairing = ingest_studies(images, reports, tmp_path / "s.zarr", 8, progress=False)
    assert summary.ok and pairing.complete and len(pairing.pairs) == 3
    sentences = dict(
        zip(
            TileStore(tmp_path / "s.zarr").companion("study_id")[:],
            TileStore(tmp_path / "s.zarr").companion("sentences")[:],
            strict=True,
        )
    )
    assert sentences["s4"] == "No pneumothorax." and sentences["CXR1"].startswith("Heart normal.\n1. Increased")


def test_a_study_reported_twice_in_a_folder_and_a_jsonl_line_that_is_no_object_are_named(tmp_path: Path):
    (tmp_path / "a.csv").write_text("study_id,report\ns1,Clear.\n")
    (tmp_path / "s1.txt").write_text("Effusion.")
    with pytest.raises(ReportsError, match=r"s1\.txt: study 's1' has a report in \S*a\.csv too"):
        read_report_folder(tmp_path)
    (tmp_path / "r.jsonl").write_text('{"id": "a", "text": "Clear."}\n[1, 2]\n')
    with pytest.raises(ReportsError, match=r"r\.jsonl, line 2: a JSONL report is one object per line"):
        read_reports(tmp_path / "r.jsonl")
