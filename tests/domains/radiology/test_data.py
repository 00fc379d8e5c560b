"""Radiology ingest: DICOM display transform, reports, pairing and unpaired items."""

from pathlib import Path

import numpy as np
import pytest

from domainfm.domains.radiology.data import PairingError, ingest_studies, pair
from domainfm.domains.radiology.images import read_dicom
from domainfm.domains.radiology.reports import Report, read_reports, split_sentences
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.radiology.phantom import write_dicom


def chest(size: int = 32) -> np.ndarray:
    image = np.full((size, size), 0.7)  # dense body
    image[:, : size // 4] = 0.0  # air on the left
    return image


def test_monochrome1_dicom_reads_with_air_dark_like_monochrome2(tmp_path: Path):
    write_dicom(tmp_path / "m1.dcm", chest(), monochrome1=True, study_id="a")
    write_dicom(tmp_path / "m2.dcm", chest(), monochrome1=False, study_id="b")
    inverted, plain = read_dicom(tmp_path / "m1.dcm"), read_dicom(tmp_path / "m2.dcm")
    assert inverted[:, :8].mean() < 0.2 < 0.6 < inverted[:, 8:].mean()  # air dark, body bright
    np.testing.assert_allclose(inverted, plain, atol=1e-3)


def test_monochrome1_study_is_stored_with_air_dark(tmp_path: Path):
    images = tmp_path / "images"
    images.mkdir()
    write_dicom(images / "s1.dcm", chest(64), monochrome1=True, study_id="s1")
    (tmp_path / "reports.csv").write_text(
        "study_id,findings,impression\ns1,The lungs are clear. No effusion.,Normal.\n"
    )
    summary, _ = ingest_studies(images, tmp_path / "reports.csv", tmp_path / "s.zarr", 64, progress=False)
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    tile = store.tiles[0, 0]
    assert tile[:, :16].mean() < 50 and tile[:, 20:].mean() > 150
    assert store.companion("sentences")[0] == "The lungs are clear.\nNo effusion.\nNormal."


def test_a_file_that_is_not_dicom_is_named(tmp_path: Path):
    (tmp_path / "x.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(ValueError, match=r"x\.dcm"):
        read_dicom(tmp_path / "x.dcm")


def test_unpaired_images_and_reports_are_listed_and_refused_unless_allowed(tmp_path: Path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for stem in ("s1", "s2"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / f"{stem}.png")
    (tmp_path / "r.csv").write_text("study_id,findings,impression\ns1,Clear.,Normal.\ns3,Effusion.,Effusion.\n")
    with pytest.raises(PairingError) as error:
        ingest_studies(images, tmp_path / "r.csv", tmp_path / "s.zarr", 16, progress=False)
    assert "s2.png" in str(error.value) and "s3" in str(error.value)
    assert not (tmp_path / "s.zarr").exists()
    summary, pairing = ingest_studies(
        images, tmp_path / "r.csv", tmp_path / "s.zarr", 16, allow_unpaired=True, progress=False
    )
    assert summary.ok and [p.name for p in pairing.images_without_report] == ["s2.png"]
    assert TileStore(tmp_path / "s.zarr").attrs["unpaired"]["reports_without_image"] == ["s3"]


def test_openi_xml_reports_pair_through_their_parent_images(tmp_path: Path):
    (tmp_path / "1.xml").write_text(
        '<eCitation><uId id="CXR1"/><MedlineCitation><Article><Abstract>'
        '<AbstractText Label="FINDINGS">The heart is normal. XXXX. Lungs are clear.</AbstractText>'
        '<AbstractText Label="IMPRESSION">No acute disease.</AbstractText>'
        '</Abstract></Article></MedlineCitation><parentImage id="CXR1_1_IM-0001-3001"/></eCitation>'
    )
    (report,) = read_reports(tmp_path)
    assert report.study_id == "CXR1" and report.images == ["CXR1_1_IM-0001-3001"]
    assert report.sentences == ["The heart is normal.", "Lungs are clear.", "No acute disease."]
    pairing = pair([tmp_path / "CXR1_1_IM-0001-3001.png"], [report])
    assert pairing.complete and pairing.pairs[0][1] is report


def test_sentences_split_and_study_from_parent_folder(tmp_path: Path):
    assert split_sentences("No effusion.  Heart size normal! Is there? ") == [
        "No effusion.",
        "Heart size normal!",
        "Is there?",
    ]
    image = tmp_path / "p10" / "s50414267" / "02aa804e.dcm"
    pairing = pair([image], [Report("s50414267", {"findings": ["Clear."]})], study_from="parent")
    assert pairing.complete
