"""`models convert satvision_toa_giant` against pytorch-caney's own SwinV2: the same features, exactly.

The original is pytorch-caney 0.1.0's ``SwinTransformerV2`` (the released SatVision-TOA code's encoder) at a
tiny width, with the main branch's extra norms (``norm3`` closing every ``period``-th block of a stage)
added as modules and applied after each such block by a forward hook, saved the way DeepSpeed saves
SatVision-TOA's SimMIM model (``module`` -> ``encoder.*``, ``encoder.mask_token``, ``decoder.0.*``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from domainfm.cli import main
from domainfm.shared.backbones import load_backbone
from domainfm.shared.backbones.periodic_norm import PeriodicNormBlock
from domainfm.shared.foundation.convert import (
    convert_checkpoint,
    foundation_transform,
    read_extras,
    read_foundation_metadata,
)
from domainfm.shared.foundation.sources import ConversionError

caney = pytest.importorskip("pytorch_caney.models.swinv2_model")

SIZE, PATCH, CHANNELS, EMBED = 64, 4, 14, 16
DEPTHS, HEADS, WINDOW, PERIOD = (2, 2, 4, 2), (1, 2, 4, 8), 4, 2
STRIDE = PATCH * 2 ** (len(DEPTHS) - 1)


@contextlib.contextmanager
def cpu_get_device():
    """pytorch-caney's attention moves a constant ``.to(logit_scale.get_device())``, -1 on CPU: give the device."""
    original = torch.Tensor.get_device
    torch.Tensor.get_device = lambda self: self.device  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.get_device = original  # type: ignore[method-assign]


def caney_encoder(seed: int = 0, num_classes: int = 5) -> nn.Module:
    """pytorch-caney's SwinV2 with main-branch periodic norms; every weight random, so every block matters."""
    torch.manual_seed(seed)
    model = caney.SwinTransformerV2(
        img_size=SIZE, patch_size=PATCH, in_chans=CHANNELS, num_classes=num_classes, embed_dim=EMBED,
        depths=list(DEPTHS), num_heads=list(HEADS), window_size=WINDOW, drop_path_rate=0.0,
    )  # fmt: skip
    for stage in model.layers:
        for index, block in enumerate(stage.blocks):
            if (index + 1) % PERIOD == 0:  # main branch: BasicLayer(extra_norm_period) -> block.norm3
                block.norm3 = nn.LayerNorm(block.dim)
                block.register_forward_hook(lambda module, args, out: module.norm3(out))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.LayerNorm):
                param.copy_(torch.randn_like(param) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith(("q_bias", "v_bias")):
                param.normal_(0, 0.1)
    return model.eval()


def caney_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pytorch-caney's pooled ``forward_features`` and the normed last stage as ``[B, C, h, w]``."""
    with torch.no_grad(), cpu_get_device():
        pooled = model.forward_features(x)
        tokens = model.patch_embed(x)
        for layer in model.layers:
            tokens = layer(tokens)
        tokens = model.norm(tokens)
    side = SIZE // STRIDE
    return pooled, tokens.reshape(len(x), side, side, -1).permute(0, 3, 1, 2)


def write_release(folder: Path, model: nn.Module, drop: tuple[str, ...] = ()) -> tuple[Path, Path, dict]:
    """A DeepSpeed ``mp_rank_00_model_states.pt`` of caney's SimMIM model, and its YAML config."""
    module = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    module["encoder.mask_token"] = torch.randn(1, 1, EMBED)
    decoder = nn.Conv2d(model.num_features, STRIDE**2 * CHANNELS, 1)
    module["decoder.0.weight"], module["decoder.0.bias"] = decoder.weight.detach(), decoder.bias.detach()
    for key in drop:
        del module[key]
    path = folder / "mp_rank_00_model_states.pt"
    torch.save(
        {
            "module": module,
            "buffer_names": [k for k, _ in model.named_buffers()],
            "param_shapes": [{k: v.shape for k, v in module.items()}],
            "ds_config": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}},
            "ds_version": "0.14.0",
            "optimizer": None,
            "global_steps": 10,
        },
        path,
    )
    config = {
        "MODEL": {
            "TYPE": "swinv2",
            "NAME": "mim_satvision_pretrain-tiny",
            "DROP_PATH_RATE": 0.1,
            "SWINV2": {
                "IN_CHANS": CHANNELS,
                "EMBED_DIM": EMBED,
                "DEPTHS": list(DEPTHS),
                "NUM_HEADS": list(HEADS),
                "WINDOW_SIZE": WINDOW,
                "NORM_PERIOD": PERIOD,
            },
        },
        "DATA": {"IMG_SIZE": SIZE, "MASK_PATCH_SIZE": 8, "MASK_RATIO": 0.6},
    }
    config_path = folder / "mim_pretrain_swinv2_satvision_tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return path, config_path, module


def test_converted_release_gives_caney_features(tmp_path):
    original = caney_encoder()
    source, config, module = write_release(tmp_path, original)
    out = tmp_path / "satvision.safetensors"
    argv = ["models", "convert", "satvision_toa_giant", "--input", str(source), "--config", str(config)]
    assert main([*argv, "--out", str(out)]) == 0
    backbone = load_backbone(out).eval()
    assert sum(isinstance(b, PeriodicNormBlock) for b in backbone.transformer_blocks()) == 5  # 1 + 1 + 2 + 1
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    pooled, last = caney_features(original, x)
    with torch.no_grad():
        assert (backbone(x) - pooled).abs().max().item() < 1e-4
        assert (backbone.forward_features(x) - last).abs().max().item() < 1e-4
    extras = read_extras(out)
    assert sorted(extras) == ["decoder.0.bias", "decoder.0.weight", "mask_token"]
    assert torch.equal(extras["mask_token"], module["encoder.mask_token"])
    assert torch.equal(extras["decoder.0.weight"], module["decoder.0.weight"])
    meta = read_foundation_metadata(out)
    dropped = meta["dropped"]
    assert dropped["encoder.head.weight"].startswith("classifier head")
    buffers = [k for k in module if k.endswith(("relative_position_index", "relative_coords_table", "attn_mask"))]
    assert buffers and all("recomputed by timm" in dropped[k] for k in buffers)
    assert "encoder.layers.0.downsample.reduction.weight" in module  # caney's end-of-stage merge ...
    assert "layers.1.downsample.reduction.weight" in backbone.model.state_dict()  # ... starts timm's next stage
    record = foundation_transform(out)
    assert record.size == [SIZE, SIZE] and record.channels[5] == "B21"


def test_the_periodic_norms_are_used(tmp_path):
    original = caney_encoder()
    source, config, _ = write_release(tmp_path, original)
    out = convert_checkpoint("satvision_toa_giant", source, tmp_path / "s.safetensors", config).out
    backbone = load_backbone(out).eval()
    for block in backbone.transformer_blocks():
        if isinstance(block, PeriodicNormBlock):
            block.__class__ = PeriodicNormBlock.__mro__[1]  # the plain timm block: norms skipped
    x = torch.randn(2, CHANNELS, SIZE, SIZE)
    pooled, _ = caney_features(original, x)
    with torch.no_grad():
        assert (backbone(x) - pooled).abs().max().item() > 1e-2


def test_a_release_without_its_norms_fails_naming_them(tmp_path):
    original = caney_encoder()
    drop = ("encoder.layers.2.blocks.3.norm3.weight", "encoder.layers.2.blocks.3.norm3.bias")
    source, config, _ = write_release(tmp_path, original, drop=drop)
    out = tmp_path / "s.safetensors"
    with pytest.raises(ConversionError, match="does not fit satvision_toa_giant") as error:
        convert_checkpoint("satvision_toa_giant", source, out, config)
    assert "missing tensors (2): layers.2.blocks.3.norm3.bias, layers.2.blocks.3.norm3.weight" in str(error.value)
    assert not out.exists()


def test_the_config_beside_the_weights_is_read_and_a_wrong_one_refused(tmp_path):
    original = caney_encoder(num_classes=0)
    source, _, _ = write_release(tmp_path, original)
    out = convert_checkpoint("satvision_toa_giant", source, tmp_path / "s.safetensors").out  # YAML found beside
    assert load_backbone(out).build_args["extra_norm_period"] == PERIOD
    wrong = tmp_path / "other" / "wrong.yaml"
    wrong.parent.mkdir()
    wrong.write_text(yaml.safe_dump({"MODEL": {"SWINV2": {"EMBED_DIM": 16, "APE": True}}}))
    with pytest.raises(ConversionError, match="APE"):
        convert_checkpoint("satvision_toa_giant", source, tmp_path / "t.safetensors", wrong)
