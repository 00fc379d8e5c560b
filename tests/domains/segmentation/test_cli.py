"""The segmentation CLI end to end on a small phantom: phantom, ingest, train-vae, train, eval."""

import json
from pathlib import Path

import pytest

from domainfm.cli import main


def test_phantom_ingest_train_and_eval_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    from domainfm.domains.segmentation import evaluate

    predicted = []  # the probabilities and masks each evaluation scores
    real_predict = evaluate.predict

    def predict_spy(*args, **kwargs):
        predicted.append(real_predict(*args, **kwargs))
        return predicted[-1]

    monkeypatch.setattr(evaluate, "predict", predict_spy)
    phantom = tmp_path / "phantom"
    assert main(["segmentation", "phantom", "--out", str(phantom), "--n", "24", "--size", "32"]) == 0
    for site in ("site_a", "site_b"):
        args = ["--images", str(phantom / site / "images"), "--masks", str(phantom / site / "masks")]
        assert main(["segmentation", "ingest", *args, "--out", str(tmp_path / f"{site}.zarr"), "--size", "32"]) == 0
    common = ["--store", str(tmp_path / "site_a.zarr"), "--device", "cpu"]
    assert main(["segmentation", "train-vae", *common, "--out", str(tmp_path / "vae"), "--epochs", "1"]) == 0
    vae = tmp_path / "vae" / "vae.safetensors"
    assert vae.is_file() and (tmp_path / "vae" / "config.yaml").is_file()
    mapper = ["--mapper", "{base: 8, groups: 4}"]
    assert (
        main(
            [
                "segmentation",
                "train",
                *common,
                "--out",
                str(tmp_path / "gms"),
                "--vae",
                str(vae),
                *mapper,
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert (tmp_path / "gms" / "val_predictions.png").is_file()
    capsys.readouterr()
    checkpoint = str(tmp_path / "gms" / "model.safetensors")
    assert (
        main(["segmentation", "eval", "--checkpoint", checkpoint, "--store", str(tmp_path / "site_b.zarr"), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "gms" and result["images"] > 0
    assert result["trainable_parameters"] > 0
    # dice_mean is the mean over images of 2 |P & T| / (|P| + |T|) (1 when both are empty), P = probability > 0.5
    predictions = predicted[-1]
    assert len(predictions["mask"]) == result["images"]
    dices = []
    for probability, mask in zip(predictions["probability"], predictions["mask"], strict=True):
        p, t = probability > 0.5, mask.bool()
        total = int(p.sum()) + int(t.sum())
        dices.append(1.0 if total == 0 else 2 * int((p & t).sum()) / total)
    assert any(int(m.sum()) > 0 for m in predictions["mask"]), "the evaluated images must hold foreground"
    assert result["dice_mean"] == pytest.approx(sum(dices) / len(dices))


def test_gms_without_a_vae_explains_how_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    phantom = tmp_path / "phantom"
    main(["segmentation", "phantom", "--out", str(phantom), "--n", "8", "--size", "32"])
    args = ["--images", str(phantom / "site_a" / "images"), "--masks", str(phantom / "site_a" / "masks")]
    main(["segmentation", "ingest", *args, "--out", str(tmp_path / "a.zarr"), "--size", "32"])
    capsys.readouterr()
    assert main(["segmentation", "train", "--store", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "g")]) == 2
    assert "train-vae" in capsys.readouterr().err


def test_eval_refuses_a_store_of_another_tile_size(tmp_path: Path, capsys: pytest.CaptureFixture[str], site_stores):
    from domainfm.domains.segmentation.models import UNetSegmenter, save_segmenter

    checkpoint = save_segmenter(UNetSegmenter([8, 16], [2]), tmp_path / "unet.safetensors", image_size=32)
    capsys.readouterr()
    assert main(["segmentation", "eval", "--checkpoint", str(checkpoint), "--store", str(site_stores["site_a"])]) == 2
    assert "--size 32" in capsys.readouterr().err
