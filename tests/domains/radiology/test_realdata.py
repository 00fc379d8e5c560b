"""Real files shipped by registry packages (the dev extra), offline: radiographs, Open-i reports, NIH labels.

* pydicom-data: CR chest PA (``RG1``, patient ``9RG1``) and CR extremity (``RG3``, patient ``11RG3``)
  radiographs, each uncompressed (``UNCR``) and JPEG 2000 lossless (``J2KR``), MONOCHROME1;
* pydicom: three 16 x 16 CR cervical-spine images of patient ``77654033`` (its DICOMDIR test tree);
* torchxrayvision: ``NLMCXR_reports.tgz`` (the 3955 Open-i / IU X-ray report XMLs) and the NIH ChestX-ray14
  ``Data_Entry_2017_v2020.csv.gz`` label table. Its package is located, never imported (nothing downloads).

There are no Open-i images in these packages: the Open-i test names real radiographs after the images of
three real reports, so the pairs are real files but not the report's own image.
"""

import importlib.util
import json
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.domains.radiology.data import ingest_studies
from domainfm.domains.radiology.labels import read_labels
from domainfm.domains.radiology.reports import LIST_MARKER, read_report_folder
from domainfm.shared.tiles.store import TileStore

pytestmark = pytest.mark.realdata

NIH_FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
]  # fmt: skip


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # pydicom-data's wheel holds it: no network
    assert path is not None, f"{name} is not installed offline: install the dev extra (pydicom-data)"
    return Path(path)


def _spine_files() -> list[Path]:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "77654033"
    return [root / "CR1" / "6154", root / "CR2" / "6247", root / "CR3" / "6278"]


def _xrv_data(name: str) -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.submodule_search_locations, "install the dev extra (torchxrayvision)"
    return Path(spec.submodule_search_locations[0]) / "data" / name


def _radiographs(folder: Path, names: dict[str, Path]) -> None:
    for target, source in names.items():
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / target)


def _by_study(store: TileStore, companion: str) -> dict[str, object]:
    return dict(zip(map(str, store.companion("study_id")[:]), store.companion(companion)[:], strict=True))


def test_label_only_cr_radiographs_ingest_by_patient_and_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    images = tmp_path / "xrays"  # class folders by the files' BodyPartExamined
    _radiographs(images, {f"chest/{n}.dcm": _pydicom_file(f"{n}.dcm") for n in ("RG1_UNCR", "RG1_J2KR")})
    _radiographs(images, {f"extremity/{n}.dcm": _pydicom_file(f"{n}.dcm") for n in ("RG3_UNCR", "RG3_J2KR")})
    _radiographs(images, {f"cspine/{p.parent.name}.dcm": p for p in _spine_files()})
    summary, pairing = ingest_studies(images, None, tmp_path / "hashed.zarr", 32, images, progress=False)
    assert summary.ok and pairing.complete and len(pairing.pairs) == 7
    store = TileStore(tmp_path / "hashed.zarr")
    assert store.spec.label_names == ["chest", "cspine", "extremity"]
    groups, splits = (
        _by_study(store, "group"),
        dict(zip(map(str, store.companion("study_id")[:]), store.index["split"], strict=True)),
    )
    assert groups == {
        "RG1_UNCR": "9RG1", "RG1_J2KR": "9RG1", "RG3_UNCR": "11RG3", "RG3_J2KR": "11RG3",
        "CR1": "77654033", "CR2": "77654033", "CR3": "77654033",
    }  # fmt: skip
    for patient in ("9RG1", "11RG3", "77654033"):
        assert len({int(splits[s]) for s, g in groups.items() if g == patient}) == 1
    tiles = dict(zip(map(str, store.companion("study_id")[:]), store.tiles[:, 0], strict=True))
    np.testing.assert_array_equal(tiles["RG1_J2KR"], tiles["RG1_UNCR"])  # JPEG 2000 lossless decodes exactly
    np.testing.assert_array_equal(tiles["RG3_J2KR"], tiles["RG3_UNCR"])
    chest = tiles["RG1_UNCR"].astype(float)  # MONOCHROME1 inverted: lungs (air) darker than the mediastinum
    lungs, mediastinum = chest[4:18, 8:12].mean() + chest[4:18, 20:24].mean(), chest[4:18, 14:18].mean()
    assert lungs / 2 + 40 < mediastinum

    (tmp_path / "splits.csv").write_text("patient,split\n9RG1,train\n11RG3,train\n77654033,test\n")
    store_path = str(tmp_path / "s.zarr")
    ingest = ["radiology", "ingest", "--images", str(images), "--labels", str(images), "--out", store_path]
    assert main([*ingest, "--size", "32", "--splits", str(tmp_path / "splits.csv")]) == 0
    capsys.readouterr()
    run = ["--store", store_path, "--out", str(tmp_path / "clf"), "--epochs", "2", "--batch_size", "2"]
    assert main(["radiology", "train", *run, "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["train_images"], result["test_images"]) == (4, 3)
    assert math.isnan(result["macro_auroc"])  # one patient, one class in test: no label can be ranked


def test_openi_reports_give_clean_sentences_and_pair_for_convirt(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with tarfile.open(_xrv_data("NLMCXR_reports.tgz")) as archive:
        archive.extractall(tmp_path / "openi", filter="data")
    folder = tmp_path / "openi" / "ecgen-radiology"
    reports, skipped = read_report_folder(folder)
    sentences = [s for r in reports for s in r.sentences]
    assert (len(reports), skipped) == (3955, [])
    assert sum(1 for r in reports if r.sentences) == 3927  # 28 reports hold neither findings nor impression
    assert not [s for s in sentences if "XXXX" in s]
    assert not [s for s in sentences if LIST_MARKER.match(s)]
    (cxr1000,) = [r for r in reports if r.study_id == "CXR1000"]
    assert cxr1000.sentences[5:] == [
        "1. Increased opacity in the right upper lobe with associated atelectasis may represent focal "
        "consolidation or mass lesion with atelectasis.",
        "Recommend chest CT for further evaluation.",
        "2. opacity overlying the left 5th rib may represent focal airspace disease.",
    ]
    images = tmp_path / "images"  # real radiographs named after the images of CXR1, CXR10 and CXR100
    spine = _spine_files()
    _radiographs(images, {"CXR1_1_IM-0001-3001.dcm": _pydicom_file("RG1_UNCR.dcm")})
    _radiographs(images, {"CXR1_1_IM-0001-4001.dcm": _pydicom_file("RG1_J2KR.dcm")})
    _radiographs(images, {"CXR10_IM-0002-1001.dcm": _pydicom_file("RG3_UNCR.dcm")})
    _radiographs(images, {"CXR10_IM-0002-2001.dcm": _pydicom_file("RG3_J2KR.dcm")})
    _radiographs(images, {"CXR100_IM-0002-1001.dcm": spine[0], "CXR100_IM-0002-2001.dcm": spine[1]})
    (tmp_path / "splits.csv").write_text("study,split\nCXR1,train\nCXR10,train\nCXR100,test\n")
    summary, pairing = ingest_studies(
        images, folder, tmp_path / "s.zarr", 32, allow_unpaired=True, splits=tmp_path / "splits.csv", progress=False
    )
    assert summary.ok and len(pairing.pairs) == 6 and len(pairing.reports_without_image) == 3952
    store = TileStore(tmp_path / "s.zarr")
    stored = _by_study(store, "sentences")
    assert set(stored) == {"CXR1", "CXR10", "CXR100"}
    assert stored["CXR1"].split("\n") == [
        "The cardiac silhouette and mediastinum size are within normal limits.",
        "There is no pulmonary edema.",
        "There is no focal consolidation.",
        "There are no of a pleural effusion.",  # "There are no XXXX of a pleural effusion."
        "There is no evidence of pneumothorax.",
        "Normal chest x.",  # "Normal chest x-XXXX."
    ]
    text = "{hidden: 32, layers: 1, heads: 2, intermediate: 64, vocab_size: 200, frozen_layers: 0}"
    run = ["--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run"), "--text", text]
    run += ["--epochs", "1", "--batch_size", "2", "--projection_dim", "16", "--device", "cpu"]
    assert main(["radiology", "pretrain", *run]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "run" / "convirt.safetensors").is_file()
    losses = json.loads((tmp_path / "run" / "history.json").read_text())["losses"]
    assert len(losses) == 2 and all(map(math.isfinite, losses))  # 4 train images: 2 steps of 2 pairs


def test_nih_label_table_reads_as_shipped(tmp_path: Path):
    table = read_labels(_xrv_data("Data_Entry_2017_v2020.csv.gz"))
    assert table.names == NIH_FINDINGS
    assert len(table.rows) == 112120 and len(set(table.patients.values())) == 30805
    assert table.rows["00000001_001.png"].tolist() == [int(n in ("Cardiomegaly", "Emphysema")) for n in NIH_FINDINGS]
    assert table.patients["00000001_001.png"] == "1" and table.patients["00000002_000.png"] == "2"
