"""Every domain's downstream checkpoint loads as a deployable network whose predictions match the domain's own."""

from pathlib import Path

import pytest
import torch

from domainfm.shared.deploy import build_network, load_deployable, predict, read_input
from domainfm.shared.deploy.registry import NotDeployableError


def test_every_kind_loads_and_predicts(deployables: dict[str, tuple[Path, list[Path]]]):
    for kind, (checkpoint, inputs) in deployables.items():
        deployable = load_deployable(checkpoint)
        card = deployable.card
        assert card.kind == kind
        for path in inputs:
            image = read_input(path, card)
            assert image.shape[1] == card.in_channels
            pred = predict(deployable, image)
            assert pred.shape[:2] == (1, card.out_channels), kind
            if card.task == "segmentation":
                assert pred.shape[-2:] == image.shape[-2:] or kind == "remote_sensing.curtain"
            assert torch.isfinite(pred).all()
            if card.activation != "none" or card.task == "segmentation":
                assert float(pred.min()) >= 0 and float(pred.max()) <= 1
            if card.activation == "softmax":  # one distribution over the classes per input (or pixel)
                torch.testing.assert_close(pred.sum(1), torch.ones_like(pred.sum(1)), rtol=0, atol=1e-5)
                assert pred.std() > 0, kind


def test_rebuilt_network_takes_the_trained_weights(deployables: dict[str, tuple[Path, list[Path]]]):
    for checkpoint, inputs in deployables.values():
        deployable = load_deployable(checkpoint)
        rebuilt = build_network(deployable.card.kind, deployable.card.build)
        rebuilt.load_state_dict(deployable.network.state_dict())
        image = read_input(inputs[0], deployable.card)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt(image), deployable.network(image))


def test_curtain_is_a_one_channel_map(deployables: dict[str, tuple[Path, list[Path]]]):
    checkpoint, inputs = deployables["remote_sensing.curtain"]
    deployable = load_deployable(checkpoint)
    assert predict(deployable, read_input(inputs[0], deployable.card)).shape == (1, 1, 91, 40)


def test_pathology_prediction_equals_the_classifier_on_normalised_tiles(deployables):
    from domainfm.domains.pathology.heads import load_tile_classifier
    from domainfm.domains.pathology.pretrain import normalise

    checkpoint, inputs = deployables["pathology.tile_classifier"]
    model, meta = load_tile_classifier(checkpoint)
    image = read_input(inputs[0], load_deployable(checkpoint).card)
    with torch.no_grad():
        expected = torch.softmax(model(normalise(image, meta["normalization"])), 1)
    torch.testing.assert_close(predict(load_deployable(checkpoint), image), expected)


def test_other_files_are_refused_by_name(tmp_path: Path, deployables):
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.backbones.checkpoint import save_backbone

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NotDeployableError, match=r"junk\.safetensors"):
        load_deployable(junk)
    encoder = save_backbone(create_backbone("test_vit"), tmp_path / "encoder.safetensors")
    with pytest.raises(NotDeployableError, match="not a downstream checkpoint"):
        load_deployable(encoder)
    with pytest.raises(NotDeployableError, match="does not exist"):
        load_deployable(tmp_path / "missing.safetensors")


def test_wrong_input_shapes_name_the_file(tmp_path: Path, deployables):
    import numpy as np

    from domainfm.shared.deploy.inputs import InputError

    checkpoint, _ = deployables["remote_sensing.cloud_mask"]
    card = load_deployable(checkpoint).card
    wrong = tmp_path / "three_bands.npy"
    np.save(wrong, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(InputError, match=r"three_bands\.npy"):
        read_input(wrong, card)
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((card.in_channels, 32, 32), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN"):
        read_input(nan, card)


def test_curtain_refuses_inputs_of_another_size_instead_of_sliding(deployables):
    checkpoint, _ = deployables["remote_sensing.curtain"]
    deployable = load_deployable(checkpoint)
    assert not deployable.card.sliding_window  # its 91 x 40 output is not on the input's grid
    with pytest.raises(ValueError, match="takes exactly 32x32 inputs, got 64x64"):
        predict(deployable, torch.zeros(1, deployable.card.in_channels, 64, 64))
    # Cloud masks lie on the chip grid (chips are windows of a granule): larger inputs slide a window.
    assert load_deployable(deployables["remote_sensing.cloud_mask"][0]).card.sliding_window
    # GMS trained on whole images resized to a square: it resizes, never slides a window.
    gms = load_deployable(deployables["segmentation.gms"][0]).card
    assert gms.geometry == "resize" and not gms.sliding_window


def test_dicom_inputs_are_read_by_the_radiology_adapter(deployables):
    from domainfm.domains.radiology.images import read_dicom

    checkpoint, _ = deployables["radiology.classifier"]
    dicoms = sorted((checkpoint.parents[1] / "phantom" / "images").rglob("*.dcm"))
    assert dicoms, "the radiology phantom writes some DICOM files"
    image = read_input(dicoms[0], load_deployable(checkpoint).card)
    assert image.shape[:2] == (1, 1)
    torch.testing.assert_close(image[0, 0], torch.from_numpy(read_dicom(dicoms[0]) * 255).float())
