"""Periodic extra norms on timm's plain SwinV2 (``extra_norm_period``): placed, applied, rebuilt, meta-safe."""

from __future__ import annotations

import pytest
import torch

from domainfm.shared.backbones import create_backbone, load_backbone, save_backbone
from domainfm.shared.backbones.periodic_norm import PeriodicNormBlock, periodic_norm_indices

TINY = {"embed_dim": 16, "depths": (2, 2, 4, 2), "num_heads": (1, 2, 4, 8), "window_size": 4}


def test_norms_close_every_period_th_block_of_every_stage():
    backbone = create_backbone("test_swinv2", in_chans=14, img_size=32, extra_norm_period=2, **TINY)
    keys = sorted(k for k in backbone.model.state_dict() if ".norm3." in k)
    expected = sorted(
        f"layers.{s}.blocks.{i}.norm3.{p}"
        for s, depth in enumerate(TINY["depths"])
        for i in periodic_norm_indices(depth, 2)
        for p in ("weight", "bias")
    )
    assert keys == expected and "layers.2.blocks.3.norm3.weight" in keys
    assert periodic_norm_indices(42, 6) == [5, 11, 17, 23, 29, 35, 41]
    assert periodic_norm_indices(2, 6) == []


def test_the_norm_is_applied_after_the_block():
    torch.manual_seed(0)
    backbone = create_backbone("test_swinv2", in_chans=3, img_size=32, extra_norm_period=1, **TINY).eval()
    block = backbone.model.layers[0].blocks[0]
    assert isinstance(block, PeriodicNormBlock)
    with torch.no_grad():
        block.norm3.weight.normal_()
        block.norm3.bias.normal_()
        x = torch.randn(2, 8, 8, 16)
        plain = super(PeriodicNormBlock, block).forward(x)
        expected = torch.nn.functional.layer_norm(plain, (16,), block.norm3.weight, block.norm3.bias, 1e-5)
        assert torch.allclose(block(x), expected, atol=1e-6)
        assert not torch.allclose(block(x), plain, atol=1e-2)


def test_period_round_trips_through_a_saved_backbone(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("test_swinv2", in_chans=3, img_size=32, extra_norm_period=2, **TINY).eval()
    with torch.no_grad():
        for name, param in backbone.named_parameters():
            if ".norm3." in name:
                param.normal_()
    assert backbone.build_args["extra_norm_period"] == 2
    path = save_backbone(backbone, tmp_path / "b.safetensors")
    again = load_backbone(path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), backbone(x))


def test_builds_on_the_meta_device_and_only_for_swinv2():
    with torch.device("meta"):
        backbone = create_backbone("test_swinv2", in_chans=3, img_size=32, extra_norm_period=2, **TINY)
    assert backbone.model.layers[2].blocks[1].norm3.weight.is_meta
    with pytest.raises(ValueError, match="extra_norm_period applies to SwinV2"):
        create_backbone("test_vit", extra_norm_period=2)
