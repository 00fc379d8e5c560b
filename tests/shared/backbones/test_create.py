import pytest
import torch

from domainfm.shared.backbones import BACKBONES, create_backbone, get_backbone_spec, list_backbones
from domainfm.shared.errors import DomainfmError

NON_GIANT = list_backbones(include_giant=False)
TINY = [n for n in NON_GIANT if get_backbone_spec(n).test_variant]
REQUIRED = {
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "flexivit_small",
    "swin_tiny_patch4_window7_224",
    "swinv2_tiny_window8_256",
    "resnet50",
    "satvision_toa_giant",
}


def test_registry_covers_the_required_families():
    assert set(BACKBONES.names()) >= REQUIRED
    families = {get_backbone_spec(n).family for n in TINY}
    assert families == {"vit", "flexivit", "swin", "swinv2", "resnet"}, "every family needs a tiny test variant"


@pytest.mark.parametrize("in_chans", [1, 3, 14])
@pytest.mark.parametrize("name", NON_GIANT)
def test_every_backbone_builds_with_any_channels(name: str, in_chans: int):
    backbone = create_backbone(name, in_chans=in_chans).eval()
    size = backbone.img_size or 64
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        pooled = backbone(x)
        features = backbone.forward_features(x)
    assert pooled.shape == (2, backbone.embed_dim)
    assert torch.isfinite(pooled).all()
    if backbone.feature_format == "tokens":
        assert features.ndim == 3 and features.shape[0] == 2 and features.shape[2] == backbone.embed_dim
    else:
        assert features.ndim == 4 and features.shape[:2] == (2, backbone.embed_dim)
    with torch.no_grad():
        assert torch.allclose(backbone.forward_head(features), pooled, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_intermediate_layers_follow_feature_info(name: str):
    backbone = create_backbone(name, in_chans=3).eval()
    size = backbone.img_size or 64
    with torch.no_grad():
        maps = backbone.forward_intermediates(torch.randn(1, 3, size, size))
        last_two = backbone.forward_intermediates(torch.randn(1, 3, size, size), indices=2)
    assert len(maps) == backbone.num_layers == len(backbone.feature_info)
    for feature, info in zip(maps, backbone.feature_info, strict=True):
        assert feature.ndim == 4 and feature.shape[1] == info["num_chs"]
        assert feature.shape[-1] == size // info["reduction"]
    assert [m.shape for m in last_two] == [m.shape for m in maps[-2:]]
    assert len(backbone.layers()) >= 1


def test_vit_accepts_other_input_sizes():
    backbone = create_backbone("test_vit", in_chans=1).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 1, 96, 96)).shape == (1, backbone.embed_dim)


def test_giant_spec_is_registered_with_the_satvision_shape():
    spec = get_backbone_spec("satvision_toa_giant")
    assert spec.giant and spec.img_size == 128 and spec.timm_kwargs["in_chans"] == 14
    assert spec.timm_kwargs["window_size"] == 8
    assert "satvision_toa_giant" not in NON_GIANT
    with torch.device("meta"):  # shapes only: no memory is allocated
        giant = create_backbone("satvision_toa_giant", in_chans=14)
    params = sum(p.numel() for p in giant.parameters())
    assert giant.embed_dim == 4096 and 2.0e9 < params < 3.5e9
    assert [len(stage.blocks) for stage in giant.layers()] == [2, 2, 42, 2]


def test_unknown_name_is_a_clear_error():
    with pytest.raises(DomainfmError, match=r"unknown backbone 'vit_smal_patch16_224'.*vit_small_patch16_224"):
        create_backbone("vit_smal_patch16_224")


@pytest.mark.gpu
@pytest.mark.parametrize("name", TINY)
def test_backbones_run_in_bf16_on_cuda(name: str):
    backbone = create_backbone(name, in_chans=14).cuda().eval()
    size = backbone.img_size or 64
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        pooled = backbone(torch.randn(2, 14, size, size, device="cuda"))
    assert pooled.shape == (2, backbone.embed_dim) and torch.isfinite(pooled.float()).all()
