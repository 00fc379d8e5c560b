"""``domainfm segmentation predict``: masks at each input's size and name, read back with Pillow and nibabel."""

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from domainfm.cli import main
from domainfm.shared.deploy import load_deployable, predict, read_input
from domainfm.shared.predict.pictures import SOFTWARE


@pytest.fixture(scope="module")
def segmenter(deployables) -> tuple[Path, list[Path]]:
    return deployables["segmentation.gms"]


def _probability(checkpoint: Path, image: torch.Tensor) -> np.ndarray:
    return predict(load_deployable(checkpoint), image)[0, 0].numpy()


def test_masks_come_back_at_each_inputs_size_and_equal_the_deployed_model(segmenter, tmp_path, capsys):
    checkpoint, inputs = segmenter
    out = tmp_path / "out"
    argv = ["segmentation", "predict", "--checkpoint", str(checkpoint), "--input", *map(str, inputs),
            "--out", str(out), "--probabilities", "--threshold", "0.5", "--json"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["predicted"], summary["skipped"], summary["failed"]) == (len(inputs), 0, {})
    sizes = set()
    for path in inputs:
        with Image.open(path) as picture:
            size = picture.size
        sizes.add(size)
        probability = _probability(checkpoint, read_input(path, load_deployable(checkpoint).card))
        with Image.open(out / "masks" / f"{path.stem}.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert mask.info["Software"] == SOFTWARE
            np.testing.assert_array_equal(np.asarray(mask), (probability >= 0.5).astype(np.uint8) * 255)
        np.testing.assert_allclose(tifffile.imread(out / "probabilities" / f"{path.stem}.tif"), probability, atol=1e-6)
        with Image.open(out / "overlays" / f"{path.stem}.png") as overlay:
            assert overlay.size == size and overlay.mode == "RGB"
    assert len(sizes) >= 3  # square tiles, a larger picture and non-square raw images
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "input,height,width,slices,foreground,mask"
    assert len(rows) == len(inputs) + 1
    # a rerun finds everything done and predicts nothing
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == len(inputs)


def test_a_nifti_volume_gets_a_nifti_mask_with_its_affine(segmenter, tmp_path, capsys):
    checkpoint, inputs = segmenter
    with Image.open(inputs[0]) as picture:
        grey = np.asarray(picture.convert("L"), dtype=np.int16)
    volume = np.stack([grey, grey[::-1], 255 - grey], axis=2) * 4  # 3 slices, 12-bit-like values
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-10, 5, 30]
    source = tmp_path / "in" / "case.nii.gz"
    source.parent.mkdir()
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(source))
    out = tmp_path / "out"
    assert main(["segmentation", "predict", "--checkpoint", str(checkpoint), "--input", str(source.parent),
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    written = nibabel.load(str(out / "masks" / "case.nii.gz"))
    assert written.shape == volume.shape
    np.testing.assert_allclose(written.affine, affine)
    mask = np.asarray(written.dataobj)
    low, high = np.percentile(volume, [0.5, 99.5])
    for z in range(volume.shape[2]):  # each slice as the model sees a grey picture of it
        scaled = np.clip((volume[:, :, z] - low) / (high - low) * 255 + 0.5, 0, 255).astype(np.uint8)
        image = torch.from_numpy(np.repeat(scaled[None], 3, axis=0).astype(np.float32))[None]
        np.testing.assert_array_equal(mask[:, :, z], (_probability(checkpoint, image) >= 0.5).astype(np.uint8))
    with Image.open(out / "overlays" / "case.png") as overlay:
        assert overlay.size == (volume.shape[1], volume.shape[0])


def test_bad_inputs_are_named_and_the_others_predicted(segmenter, tmp_path, capsys):
    checkpoint, inputs = segmenter
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(inputs[0].read_bytes())
    (folder / "broken.png").write_bytes(b"not a picture")
    code = main(["segmentation", "predict", "--checkpoint", str(checkpoint), "--input", str(folder),
                 "--out", str(tmp_path / "out"), "--json"])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 2 and summary["predicted"] == 1
    assert list(summary["failed"]) == ["broken.png"] and "broken.png" in summary["failed"]["broken.png"]
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    assert not (tmp_path / "out" / "masks" / "broken.png").exists()


def test_a_model_of_another_domain_is_refused_by_name(deployables, tmp_path, capsys):
    checkpoint, inputs = deployables["radiology.classifier"]
    code = main(["segmentation", "predict", "--checkpoint", str(checkpoint), "--input", str(inputs[0]),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 2
    assert "domainfm radiology predict" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explain_writes_the_same_overlay_as_the_explain_command(segmenter, tmp_path, capsys):
    checkpoint, inputs = segmenter
    picture = inputs[0]
    out = tmp_path / "out"
    assert main(["segmentation", "predict", "--checkpoint", str(checkpoint), "--input", str(picture),
                 "--out", str(out), "--explain", "--json"]) == 0  # fmt: skip
    single = tmp_path / "single.png"
    assert main(["explain", "--checkpoint", str(checkpoint), "--input", str(picture), "--out", str(single),
                 "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    with Image.open(out / "explanations" / f"{picture.stem}.png") as ours, Image.open(single) as theirs:
        assert ours.size == theirs.size
        np.testing.assert_array_equal(np.asarray(ours.convert("RGB")), np.asarray(theirs.convert("RGB")))
