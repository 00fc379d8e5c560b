"""Radiology splits grouped by patient (DICOM PatientID), a --splits CSV, and empty splits named, not tracebacks."""

from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.domains.radiology.data import ingest_studies
from domainfm.shared.tiles.schema import SPLITS
from domainfm.shared.tiles.splits import SplitsError
from domainfm.shared.tiles.store import TileStore
from domainfm.studies.radiology.phantom import write_dicom


def _dicoms(folder: Path, patients: dict[str, str]) -> None:
    """One small CR DICOM per study, with the PatientID given (study -> patient)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    for number, (study, patient) in enumerate(patients.items()):
        path = folder / f"{study}.dcm"
        write_dicom(path, np.full((12, 12), 0.1 * (number % 8)), monochrome1=False, study_id=study)
        dataset = pydicom.dcmread(path)
        dataset.PatientID = patient
        dataset.save_as(path)


def _labels(path: Path, studies: list[str]) -> Path:
    path.write_text("study_id,effusion\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(studies)))
    return path


def _splits_by_group(store: TileStore) -> dict[str, set[int]]:
    groups: dict[str, set[int]] = {}
    for group, split in zip(store.companion("group")[:], store.index["split"], strict=True):
        groups.setdefault(str(group), set()).add(int(split))
    return groups


def test_images_of_one_patient_share_a_split_and_the_group_is_recorded(tmp_path: Path):
    studies = {f"s{i:02d}": f"p{i // 4}" for i in range(24)}  # 6 patients, 4 studies each
    _dicoms(tmp_path / "images", studies)
    labels = _labels(tmp_path / "labels.csv", list(studies))
    summary, _ = ingest_studies(tmp_path / "images", None, tmp_path / "s.zarr", 12, labels, progress=False)
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    by_group = _splits_by_group(store)
    assert sorted(by_group) == [f"p{i}" for i in range(6)]
    assert all(len(splits) == 1 for splits in by_group.values())
    assert store.attrs["groups"] == {"kinds": {"patient": 24}, "splits_csv": None}


def test_a_splits_csv_by_patient_overrides_the_hash_and_must_list_every_group(tmp_path: Path):
    studies = {f"s{i}": f"p{i // 2}" for i in range(6)}
    _dicoms(tmp_path / "images", studies)
    labels = _labels(tmp_path / "labels.csv", list(studies))
    (tmp_path / "splits.csv").write_text("Patient,Split\np0,train\np1,Validation\np2,TEST\n")
    summary, _ = ingest_studies(
        tmp_path / "images", None, tmp_path / "s.zarr", 12, labels, splits=tmp_path / "splits.csv", progress=False
    )
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    assert _splits_by_group(store) == {"p0": {SPLITS["train"]}, "p1": {SPLITS["val"]}, "p2": {SPLITS["test"]}}
    assert store.attrs["groups"]["splits_csv"] == str(tmp_path / "splits.csv")
    (tmp_path / "partial.csv").write_text("patient,split\np0,train\n")
    with pytest.raises(SplitsError, match=r"partial\.csv: 'p1' is not listed"):
        ingest_studies(tmp_path / "images", None, tmp_path / "t.zarr", 12, labels, splits=tmp_path / "partial.csv")
    assert not (tmp_path / "t.zarr").exists()


def test_empty_splits_warn_at_ingest_and_stop_training_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    studies = {f"s{i}": "only-patient" for i in range(4)}
    _dicoms(tmp_path / "images", studies)
    labels = _labels(tmp_path / "labels.csv", list(studies))
    (tmp_path / "splits.csv").write_text("patient,split\nonly-patient,test\n")
    with pytest.warns(UserWarning, match=r"split\(s\) train, val hold no tiles \(train 0, val 0, test 4\)"):
        ingest_studies(
            tmp_path / "images", None, tmp_path / "s.zarr", 12, labels, splits=tmp_path / "splits.csv", progress=False
        )
    store = str(tmp_path / "s.zarr")
    run = ["--store", store, "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]
    assert main(["radiology", "train", *run]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "radiology train needs images in train" in error and "--splits" in error
    assert "batch_size" not in error
