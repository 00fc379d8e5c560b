"""Radiology without reports: labels from an NIH-style CSV, 0/1 columns, a COCO JSON or class folders."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from domainfm.cli import main
from domainfm.domains.radiology.data import PairingError, ingest_studies
from domainfm.domains.radiology.labels import LabelsError, read_labels
from domainfm.shared.tiles.store import TileStore


def _pngs(folder: Path, names: list[str], size: int = 16) -> list[Path]:
    paths = []
    for number, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size + 4), 10 * number, np.uint8)).save(path)
        paths.append(path)
    return paths


def _labels_by_study(store: TileStore) -> dict[str, list[int]]:
    ids = store.companion("study_id")[:]
    return {str(i): row.tolist() for i, row in zip(ids, store.companion("labels")[:], strict=True)}


def test_nih_csv_gives_multi_hot_labels_and_patients(tmp_path: Path):
    _pngs(tmp_path / "images", ["00000001_000.png", "00000001_001.png", "00000002_000.png"])
    (tmp_path / "nih.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n"
        "00000001_000.png,Cardiomegaly,0,1\n00000001_001.png,Cardiomegaly|Effusion,1,1\n"
        "00000002_000.png,No Finding,0,2\n00000099_000.png,Mass,0,99\n"
    )
    summary, pairing = ingest_studies(
        tmp_path / "images", None, tmp_path / "s.zarr", 16, tmp_path / "nih.csv", progress=False
    )
    assert summary.ok and pairing.complete  # a label row without an image (00000099) is not an error
    store = TileStore(tmp_path / "s.zarr")
    assert store.spec.label_names == ["Cardiomegaly", "Effusion", "Mass", "No Finding"]
    assert _labels_by_study(store) == {
        "00000001_000": [1, 0, 0, 0],
        "00000001_001": [1, 1, 0, 0],
        "00000002_000": [0, 0, 0, 1],
    }
    assert "sentences" not in store.spec.companions
    assert sorted(map(str, store.companion("group")[:])) == ["1", "1", "2"]  # grouped by the NIH Patient ID
    assert store.attrs["groups"]["kinds"] == {"patient": 3}


def test_zero_one_columns_and_a_text_column_is_refused_by_name(tmp_path: Path):
    (tmp_path / "l.csv").write_text("image,effusion,nodule\na.png,1,\nb.png,0,1.0\n")
    table = read_labels(tmp_path / "l.csv")
    assert table.names == ["effusion", "nodule"] and table.rows["b.png"].tolist() == [0, 1]
    (tmp_path / "bad.csv").write_text("image,effusion,comment\na.png,1,F\n")
    with pytest.raises(LabelsError, match=r"bad\.csv, line 2: column 'comment' holds 'F'"):
        read_labels(tmp_path / "bad.csv")
    (tmp_path / "twice.csv").write_text("Image Index,Finding Labels\na.png,Mass\nb.png,No Finding\na.png,Nodule\n")
    with pytest.raises(LabelsError, match=r"twice\.csv, line 4: 'a\.png' is listed twice with different labels"):
        read_labels(tmp_path / "twice.csv")
    (tmp_path / "short.csv").write_text("image,effusion\na.png,1\n\n,0\n")
    with pytest.raises(LabelsError, match=r"short\.csv, line 4: the 'image' column is empty"):
        read_labels(tmp_path / "short.csv")
    (tmp_path / "nokey.csv").write_text("name_of_file,effusion\na.png,1\n")
    with pytest.raises(LabelsError, match=r"nokey\.csv: a labels CSV needs an image column.*name_of_file"):
        read_labels(tmp_path / "nokey.csv")


def test_coco_json_gives_image_level_labels(tmp_path: Path):
    _pngs(tmp_path / "images", ["a.png", "b.png", "c.png"])
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png"},
            {"id": 2, "file_name": "sub/b.png"},
            {"id": 3, "file_name": "c.png"},
        ],
        "categories": [{"id": 7, "name": "nodule"}, {"id": 9, "name": "fracture"}],
        "annotations": [
            {"image_id": 1, "category_id": 7},
            {"image_id": 1, "category_id": 7},
            {"image_id": 2, "category_id": 9},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    summary, _ = ingest_studies(
        tmp_path / "images", None, tmp_path / "s.zarr", 16, tmp_path / "coco.json", progress=False
    )
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    assert store.spec.label_names == ["fracture", "nodule"]
    assert _labels_by_study(store) == {"a": [0, 1], "b": [1, 0], "c": [0, 0]}
    (tmp_path / "broken.json").write_text(json.dumps({"images": []}))
    with pytest.raises(LabelsError, match=r"broken\.json: not a COCO JSON"):
        read_labels(tmp_path / "broken.json")


def test_class_folders_are_the_images_folder_itself_and_unlabelled_images_are_refused(tmp_path: Path):
    root = tmp_path / "xrays"
    _pngs(root, ["normal/n1.png", "normal/n2.png", "pneumonia/p1.png", "pneumonia/deep/p2.png"])
    summary, _ = ingest_studies(root, None, tmp_path / "s.zarr", 16, root, progress=False)
    assert summary.ok
    store = TileStore(tmp_path / "s.zarr")
    assert store.spec.label_names == ["normal", "pneumonia"]
    assert _labels_by_study(store) == {"n1": [1, 0], "n2": [1, 0], "p1": [0, 1], "p2": [0, 1]}
    _pngs(root, ["loose.png"])
    with pytest.raises(PairingError, match=r"1 images without a row in the labels:\s+\S*loose\.png"):
        ingest_studies(root, None, tmp_path / "t.zarr", 16, root, progress=False)


def test_neither_reports_nor_labels_is_refused(tmp_path: Path):
    _pngs(tmp_path / "images", ["a.png"])
    with pytest.raises(PairingError, match=r"--reports .* and/or --labels"):
        ingest_studies(tmp_path / "images", None, tmp_path / "s.zarr", 16, progress=False)


def test_label_only_store_trains_a_classifier_and_refuses_convirt_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    names = [f"{c}/{c}{i}.png" for c in ("normal", "effusion") for i in range(6)]
    _pngs(tmp_path / "x", names)
    rows = "\n".join(f"{Path(n).stem},{'train' if i % 6 < 4 else 'test'}" for i, n in enumerate(names))
    (tmp_path / "splits.csv").write_text(f"study,split\n{rows}\n")
    store = str(tmp_path / "s.zarr")
    ingest = ["radiology", "ingest", "--images", str(tmp_path / "x"), "--labels", str(tmp_path / "x")]
    assert main([*ingest, "--splits", str(tmp_path / "splits.csv"), "--out", store, "--size", "16"]) == 0
    capsys.readouterr()
    run = ["--store", store, "--out", str(tmp_path / "run"), "--epochs", "1", "--batch_size", "4", "--device", "cpu"]
    assert main(["radiology", "pretrain", *run]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "holds no reports" in error and "--reports" in error
    train = ["--store", store, "--out", str(tmp_path / "clf"), "--epochs", "1", "--batch_size", "4"]
    assert main(["radiology", "train", *train, "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["train_images"], result["test_images"]) == (8, 4)
    assert (tmp_path / "clf" / "classifier.safetensors").is_file()


def test_chexpert_csv_matches_relative_paths_and_skips_its_metadata_columns(tmp_path: Path):
    root = tmp_path / "CheXpert-v1.0-small" / "train"
    _pngs(root, ["patient00001/study1/view1_frontal.jpg", "patient00002/study1/view1_frontal.jpg"])
    (tmp_path / "train.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Pleural Effusion\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,87,Frontal,AP,,-1.0\n"
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,1.0\n"
    )
    table = read_labels(tmp_path / "train.csv")
    assert table.names == ["No Finding", "Pleural Effusion"]
    first, second = sorted(root.rglob("*.jpg"))
    assert table.rows[table.key_of(first, "study1")].tolist() == [1, 0]
    assert table.rows[table.key_of(second, "study1")].tolist() == [0, 0]  # uncertain (-1) is not positive
    assert table.key_of(tmp_path / "elsewhere" / "view1_frontal.jpg", "study1") is None
    summary, _ = ingest_studies(tmp_path, None, tmp_path / "s.zarr", 16, tmp_path / "train.csv", progress=False)
    assert summary.ok  # every image has the same stem: the patient folder is the split group, not the stem
    assert sorted(map(str, TileStore(tmp_path / "s.zarr").companion("group")[:])) == ["patient00001", "patient00002"]


def test_a_label_only_store_is_probed_with_a_convirt_checkpoint_and_needs_a_test_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    reports = tmp_path / "reports"
    _pngs(reports, [f"r{i}.png" for i in range(4)])
    (tmp_path / "r.csv").write_text("study,report\n" + "".join(f"r{i},Finding {i} is seen.\n" for i in range(4)))
    ingest = ["radiology", "ingest", "--images", str(reports), "--reports", str(tmp_path / "r.csv")]
    ingest += ["--out", str(tmp_path / "r.zarr"), "--size", "16", "--val_fraction", "0", "--test_fraction", "0"]
    assert main(ingest) == 0
    text = "{hidden: 16, layers: 1, heads: 2, intermediate: 32, vocab_size: 100, frozen_layers: 0}"
    run = ["--store", str(tmp_path / "r.zarr"), "--out", str(tmp_path / "c"), "--text", text, "--epochs", "1"]
    assert main(["radiology", "pretrain", *run, "--batch_size", "4", "--projection_dim", "8", "--device", "cpu"]) == 0
    names = [f"{c}/{c}{i}.png" for c in ("normal", "effusion") for i in range(4)]
    _pngs(tmp_path / "x", names)
    for name, rows in (("split", "normal0,test\neffusion0,test\n"), ("all_train", "")):
        rows += "".join(f"{Path(n).stem},train\n" for n in names if f"{Path(n).stem},test" not in rows)
        (tmp_path / f"{name}.csv").write_text(f"image,split\n{rows}")
        ingest = ["radiology", "ingest", "--images", str(tmp_path / "x"), "--labels", str(tmp_path / "x")]
        assert main([*ingest, "--splits", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / f"{name}.zarr")]) == 0
    capsys.readouterr()
    probe = ["radiology", "eval", "knn", "--checkpoint", str(tmp_path / "c" / "convirt.safetensors")]
    probe += ["--fractions", "[1.0]", "--neighbours", "2", "--device", "cpu", "--json"]
    assert main([*probe, "--store", str(tmp_path / "split.zarr")]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["init"], r["train_images"]) for r in rows] == [("convirt", 6), ("random", 6)]
    assert main([*probe, "--store", str(tmp_path / "all_train.zarr")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "radiology eval knn needs images in train, test" in error


def test_dicom_files_without_a_suffix_are_found_and_dicomdir_is_not(tmp_path: Path):
    from domainfm.domains.radiology.data import find_images
    from domainfm.studies.radiology.phantom import write_dicom

    (tmp_path / "series").mkdir()
    write_dicom(tmp_path / "series" / "x.dcm", np.ones((8, 8)), monochrome1=False, study_id="s")
    (tmp_path / "series" / "x.dcm").rename(tmp_path / "series" / "IM000001")
    (tmp_path / "series" / "DICOMDIR").write_bytes((tmp_path / "series" / "IM000001").read_bytes())
    (tmp_path / "series" / "notes").write_text("not an image")
    assert [p.name for p in find_images(tmp_path)] == ["IM000001"]
