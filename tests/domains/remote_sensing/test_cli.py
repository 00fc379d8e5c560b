"""The remote-sensing CLI end to end: phantom granules, ingest, pretrain, eval, downstream tasks with PEFT."""

import json
from pathlib import Path

import numpy as np
import pytest

from domainfm.cli import main
from domainfm.studies.remote_sensing.phantom import write_phantom_splits


def test_granules_to_simmim_to_curtain_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.remote_sensing import downstream

    scored = []  # the test chips' logits and targets each training run is scored on
    real_scores = downstream._scores

    def spy(task, logits, target):
        scored.append((logits.clone(), target.clone()))
        return real_scores(task, logits, target)

    monkeypatch.setattr(downstream, "_scores", spy)
    granules = [tmp_path / f"MOD021KM.{i}.hdf" for i in range(2)]
    for seed, path in enumerate(granules):
        assert main(["remote-sensing", "phantom", "--out", str(path), "--size", "128", "--seed", str(seed)]) == 0
    store = str(tmp_path / "chips.zarr")
    splits = str(write_phantom_splits(granules, tmp_path / "splits.csv"))  # chips split per granule
    ingest = ["remote-sensing", "ingest", *map(str, granules), "--out", store, "--chip", "32", "--curtains"]
    assert main([*ingest, "--splits", splits]) == 0
    run = ["--store", store, "--out", str(tmp_path / "simmim"), "--epochs", "1", "--device", "cpu"]
    assert main(["remote-sensing", "pretrain", *run]) == 0
    checkpoint = str(tmp_path / "simmim" / "simmim.safetensors")
    capsys.readouterr()
    assert main(["remote-sensing", "eval", "--checkpoint", checkpoint, "--store", store, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["masked_l1"] > 0 and result["mean_predictor_l1"] > 0
    for task, peft in (("curtain", "linear"), ("segment", "lora")):
        args = ["remote-sensing", "train", "--store", store, "--task", task, "--checkpoint", checkpoint]
        assert main([*args, "--peft", peft, "--epochs", "1", "--labelled", "8", "--device", "cpu", "--json"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert scores["task"] == task and scores["init"] == "simmim"
        # the reported scores are those of the test chips' predictions, counted here pixel by pixel
        logits, target = scored.pop()
        assert len(logits) == scores["test_chips"] > 0
        cloud, truth = (logits > 0).flatten().tolist(), (target > 0.5).flatten().tolist()
        tp = sum(c and t for c, t in zip(cloud, truth, strict=True))
        fp = sum(c and not t for c, t in zip(cloud, truth, strict=True))
        fn = sum(t and not c for c, t in zip(cloud, truth, strict=True))
        tn = len(cloud) - tp - fp - fn
        assert tp + fn > 0 and tn + fp > 0, "the test chips must hold both cloud and clear pixels"
        assert scores["cloud_iou"] == pytest.approx(tp / max(tp + fp + fn, 1))
        assert scores["miou"] == pytest.approx((tp / max(tp + fp + fn, 1) + tn / max(tn + fp + fn, 1)) / 2)
        assert scores["false_negative_rate"] == pytest.approx(fn / (tp + fn))


def test_rasters_with_scene_labels_train_a_multilabel_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    names = []
    for i in range(6):
        for band, resolution in (("B02", 10), ("B05", 20)):
            n = 640 // resolution
            transform = from_origin(500000, 4000000, resolution, resolution)
            profile = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint16"}
            profile |= {"crs": "EPSG:32633", "transform": transform}
            with rasterio.open(tmp_path / f"patch{i}_{band}.tif", "w", **profile) as handle:
                handle.write(np.random.default_rng(i).integers(100, 3000, (n, n)).astype(np.uint16), 1)
        names.append(f"patch{i}")
    (tmp_path / "labels.csv").write_text(
        "name,forest,water\n" + "".join(f"{n},{i % 2},{(i + 1) % 2}\n" for i, n in enumerate(names))
    )
    splits = tmp_path / "splits.csv"  # scenes, not chips, are split: six scenes need their splits given
    splits.write_text(
        "scene,split\n" + "".join(f"{n},{'test' if i % 3 == 0 else 'train'}\n" for i, n in enumerate(names))
    )
    store = str(tmp_path / "s2.zarr")
    files = [str(p) for p in sorted(tmp_path.glob("*.tif"))]
    assert (
        main(
            [
                "remote-sensing",
                "ingest",
                *files,
                "--out",
                store,
                "--chip",
                "32",
                "--labels",
                str(tmp_path / "labels.csv"),
                "--splits",
                str(splits),
            ]
        )
        == 0
    )
    capsys.readouterr()
    args = ["remote-sensing", "train", "--store", store, "--task", "multilabel", "--peft", "dvpt", "--epochs", "1"]
    assert main([*args, "--device", "cpu", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["init"] == "scratch" and scores["peft"] == "dvpt" and "macro_auroc" in scores
