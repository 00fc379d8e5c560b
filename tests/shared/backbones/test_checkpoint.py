import pickle
from pathlib import Path

import pytest
import timm
import torch

from domainfm.shared.backbones import (
    CheckpointError,
    CheckpointMismatchError,
    adapt_input_channels,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    load_backbone,
    read_backbone_metadata,
    save_backbone,
)

TINY = [n for n in list_backbones() if get_backbone_spec(n).test_variant]


def _input(backbone, channels: int | None = None) -> torch.Tensor:
    size = backbone.img_size or 64
    return torch.randn(2, channels or backbone.in_chans, size, size)


def _outputs_equal(a, b, x) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip_is_exact(name: str, tmp_path: Path):
    original = create_backbone(name, in_chans=14).eval()
    path = save_backbone(original, tmp_path / "weights.safetensors")
    assert read_backbone_metadata(path) == {"name": name, "in_chans": 14, "img_size": original.img_size}
    x = _input(original)
    assert _outputs_equal(original, load_backbone(path), x)
    assert _outputs_equal(original, create_backbone(name, in_chans=14, checkpoint=path), x)


def test_plain_pth_lightning_and_ddp_checkpoints_load(tmp_path: Path):
    original = create_backbone("test_swinv2", in_chans=3).eval()
    state = original.model.state_dict()
    files = {
        "plain.pth": state,
        "ddp.pt": {"module." + k: v for k, v in state.items()},
        "lightning.ckpt": {
            "state_dict": {
                **{"backbone.model." + k: v for k, v in state.items()},
                "head.weight": torch.zeros(2, 64),  # a task head outside the backbone prefix is ignored
            },
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.6.0",
        },
    }
    x = _input(original)
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        loaded = create_backbone("test_swinv2", in_chans=3, checkpoint=tmp_path / name)
        assert _outputs_equal(original, loaded, x), name


def test_timm_checkpoint_with_classifier_loads(tmp_path: Path):
    spec = get_backbone_spec("test_vit")
    classifier = timm.create_model(spec.timm_name, num_classes=10, img_size=64, **spec.timm_kwargs)
    torch.save(classifier.state_dict(), tmp_path / "timm.pth")
    backbone = create_backbone("test_vit", checkpoint=tmp_path / "timm.pth").eval()
    x = _input(backbone)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), classifier.eval().forward_head(classifier.forward_features(x), True))


@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "test_swin"])
@pytest.mark.parametrize("in_chans", [14, 1])
def test_rgb_checkpoint_loads_into_other_channel_counts_by_the_rule(name: str, in_chans: int, tmp_path: Path):
    rgb = create_backbone(name, in_chans=3).eval()
    path = save_backbone(rgb, tmp_path / "rgb.safetensors")
    adapted = create_backbone(name, in_chans=in_chans, checkpoint=path).eval()
    stem = rgb.model.pretrained_cfg["first_conv"] + ".weight"
    torch.testing.assert_close(
        adapted.model.state_dict()[stem], adapt_input_channels(rgb.model.state_dict()[stem], in_chans)
    )
    grey = _input(rgb, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(grey.expand(-1, in_chans, -1, -1)), rgb(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4
        )


def test_vit_checkpoint_loads_at_another_size_and_patch(tmp_path: Path):
    path = save_backbone(create_backbone("test_flexivit"), tmp_path / "f.safetensors")
    resized = create_backbone("test_flexivit", img_size=96, patch_size=8, checkpoint=path)
    assert resized.model.patch_embed.proj.weight.shape[-1] == 8
    assert resized(torch.randn(1, 3, 96, 96)).shape == (1, resized.embed_dim)


def test_checkpoint_of_another_architecture_names_the_keys(tmp_path: Path):
    path = save_backbone(create_backbone("test_vit"), tmp_path / "vit.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        create_backbone("test_flexivit", checkpoint=path)
    message = str(info.value)
    assert str(path) in message and "blocks.0.attn.qkv.weight (192, 64) vs (144, 48)" in message


def test_missing_and_unexpected_keys_are_named(tmp_path: Path):
    state = create_backbone("test_resnet").model.state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer9.bogus.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        create_backbone("test_resnet", checkpoint=tmp_path / "edited.pth")
    assert info.value.missing == ["layer2.0.conv1.weight"]
    assert info.value.unexpected == ["layer9.bogus.weight"]
    assert "layer2.0.conv1.weight" in str(info.value) and "layer9.bogus.weight" in str(info.value)


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path: Path):
    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump({"state_dict": _Payload()}, handle)
    with pytest.raises(CheckpointError, match=r"evil\.pth cannot be loaded safely \(weights_only=True\)"):
        create_backbone("test_vit", checkpoint=tmp_path / "evil.pth")


def test_missing_and_truncated_files_are_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pth does not exist"):
        create_backbone("test_vit", checkpoint=tmp_path / "nowhere.pth")
    path = save_backbone(create_backbone("test_vit"), tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"t\.safetensors is not a readable safetensors file"):
        create_backbone("test_vit", checkpoint=path)
    torch.save({"epoch": 1}, tmp_path / "empty.ckpt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        create_backbone("test_vit", checkpoint=tmp_path / "empty.ckpt")


def test_whole_model_checkpoint_of_another_shape_is_named_with_its_producer(tmp_path: Path):
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint, save_model_checkpoint

    path = save_model_checkpoint(torch.nn.Linear(4, 3), tmp_path / "head.safetensors", "test_key", {"outputs": 3})
    model, meta = load_model_checkpoint(path, "test_key", "make-head", lambda m: torch.nn.Linear(4, m["outputs"]))
    assert meta == {"outputs": 3} and model.weight.shape == (3, 4)
    with pytest.raises(CheckpointError) as info:
        load_model_checkpoint(path, "test_key", "make-head", lambda m: torch.nn.Sequential(torch.nn.Linear(4, 3)))
    message = str(info.value)
    assert str(path) in message and "make-head" in message and "0.weight" in message
