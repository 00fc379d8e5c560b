"""Each source layout against the original architecture in its original library, at tiny width.

A random model is built with the library the publisher used (transformers' ``ViTModel``/``Dinov2Model``,
open_clip's CLIP with a timm trunk, timm), saved in the publisher's file format and key layout, converted
with ``domainfm models convert`` and rebuilt with ``load_backbone``; the embeddings must agree to 1e-4
(float32). LayerScale gammas and tokens are randomised, so a block or token mapped wrongly shows.

The original DINOv2 code (facebookresearch/dinov2) is not on the package registry, so its layout is
written from a timm DINOv2 model by the inverse of the documented mapping (registers: the class token
without its position, ``pos_embed`` with the class position first; ``blocks.chunk.i``; ``mlp.w12/w3``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from domainfm.cli import main
from domainfm.shared.backbones import load_backbone
from domainfm.shared.foundation.convert import convert_checkpoint, read_extras, read_foundation_metadata
from domainfm.shared.foundation.sources import ConversionError

TOL = 1e-4


def _convert(name: str, source: Path, out: Path, *extra: str) -> torch.nn.Module:
    assert main(["models", "convert", name, "--input", str(source), "--out", str(out), *extra]) == 0
    return load_backbone(out).eval()


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter perturbed (norm weights away from 1, LayerScale from 1e-5, tokens from ~0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim == 1:  # norms, biases, LayerScale: around 1 with spread 0.5
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=generator))
            else:  # matrices and tokens: small, random
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


# ---------------------------------------------------------------- hf_vit: transformers ViTModel (Phikon)


def _hf_vit(folder: Path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=16,
        layer_norm_eps=1e-12,
        qkv_bias=True,
    )
    model = ViTModel(config, add_pooling_layer=True).eval()
    _randomise(model)
    model.save_pretrained(folder)  # the published layout: model.safetensors + config.json
    return model


def test_hf_vit_phikon_matches_transformers(tmp_path):
    model = _hf_vit(tmp_path / "phikon")
    backbone = _convert("phikon", tmp_path / "phikon", tmp_path / "phikon.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state[:, 0]
        got = backbone(x)
    assert (got - expected).abs().max().item() < TOL
    meta = read_foundation_metadata(tmp_path / "phikon.safetensors")
    assert sorted(meta["dropped"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    assert meta["layout"] == "hf_vit" and meta["transform"]["size"] == [32, 32]


def test_hf_vit_refuses_another_layernorm_eps(tmp_path):
    _hf_vit(tmp_path / "phikon")
    config = json.loads((tmp_path / "phikon" / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (tmp_path / "phikon" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="layer_norm_eps 1e-06"):
        convert_checkpoint("phikon", tmp_path / "phikon", tmp_path / "out.safetensors")


# ------------------------------------------------------ hf_dinov2: transformers Dinov2Model (RAD-DINO, Phikon-v2)


def _hf_dinov2(folder: Path, **kwargs):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    args = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    model = Dinov2Model(Dinov2Config(**{**args, **kwargs})).eval()
    _randomise(model)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize(
    ("name", "options", "kwargs"),
    [
        ("rad_dino", [], {"mlp_ratio": 2}),
        ("phikon_v2", [], {"patch_size": 16, "image_size": 32}),
        # SwiGLU FFN (weights_in/weights_out) into a SwiGLUPacked spec: the layout chosen on the command line
        ("h_optimus_0", ["--layout", "hf_dinov2"], {"use_swiglu_ffn": True}),
    ],
)
def test_hf_dinov2_matches_transformers(tmp_path, name, options, kwargs):
    model = _hf_dinov2(tmp_path / name, **kwargs)
    out = tmp_path / f"{name}.safetensors"
    backbone = _convert(name, tmp_path / name, out, *options)
    side = model.config.image_size  # native size: no position interpolation on either side
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state
        got = backbone.forward_features(x)
        pooled = backbone(x)
    assert (got - expected).abs().max().item() < TOL
    assert (pooled - expected[:, 0]).abs().max().item() < TOL
    extras = read_extras(out)
    assert torch.equal(extras["mask_token"], model.embeddings.mask_token.detach().reshape(-1))


# ------------------------------------------------------------ dinov2_github: the DINOv2 code's own layout


def _timm_dinov2(arch: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).eval()
    _randomise(model, seed=1)
    return model


def _github_layout(model: torch.nn.Module, chunks: int) -> dict[str, torch.Tensor]:
    """The inverse of timm's ``_convert_dinov2``: what DinoVisionTransformer.state_dict() holds."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if "reg_token" in state:
        class_pos = torch.randn(1, 1, state["cls_token"].shape[-1])
        out["register_tokens"] = state.pop("reg_token")
        out["cls_token"] = state.pop("cls_token") - class_pos
        out["pos_embed"] = torch.cat([class_pos, state.pop("pos_embed")], dim=1)
    out["mask_token"] = torch.randn(1, state["norm.weight"].shape[-1])
    swiglu = type(model.blocks[0].mlp).__name__ == "GluMlp"  # timm's SwiGLUPacked
    depth = len(model.blocks)
    per_chunk = -(-depth // chunks) if chunks else depth
    for key, value in state.items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            if swiglu:
                rest = rest.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
            key = f"blocks.{int(index) // per_chunk}.{index}.{rest}" if chunks else f"blocks.{index}.{rest}"
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("name", "arch", "kwargs", "chunks"),
    [
        # H-optimus-0's architecture: SwiGLU (w12/w3), 4 registers, block_chunks as the giant was trained
        ("h_optimus_0", "vit_giant_patch14_reg4_dinov2", {"mlp_ratio": 4.0}, 2),
        # RAD-DINO's: plain MLP, no registers, the class position inside pos_embed, no chunks
        ("rad_dino", "vit_base_patch14_dinov2", {"mlp_ratio": 2.0}, 0),
    ],
)
def test_dinov2_github_layout_matches_timm(tmp_path, name, arch, kwargs, chunks):
    model = _timm_dinov2(arch, embed_dim=64, depth=4, num_heads=2, img_size=28, **kwargs)
    source = tmp_path / "checkpoint.pth"
    torch.save(_github_layout(model, chunks), source)
    config = tmp_path / "heads.json"
    config.write_text(json.dumps({"num_heads": 2}))  # heads are in no tensor's shape
    out = tmp_path / f"{name}.safetensors"
    backbone = _convert(name, source, out, "--layout", "dinov2_github", "--config", str(config))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (backbone(x) - model(x)).abs().max().item() < TOL
        assert (backbone.forward_features(x) - model.forward_features(x)).abs().max().item() < TOL
    assert read_foundation_metadata(out)["layout"] == "dinov2_github"
    assert read_extras(out)["mask_token"].shape == (64,)


def test_dinov2_github_heads_are_in_no_tensor_so_config_gives_them(tmp_path):
    """Without --config the heads are width / 64: shapes fit, the model differs (hence the documented option)."""
    model = _timm_dinov2("vit_base_patch14_dinov2", embed_dim=128, depth=2, num_heads=4, img_size=28)
    source = tmp_path / "checkpoint.pth"
    torch.save(_github_layout(model, 0), source)
    out = tmp_path / "rad_dino.safetensors"
    backbone = _convert("rad_dino", source, out, "--layout", "dinov2_github")  # 128 / 64 = 2 heads, not 4
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert (backbone(x) - model(x)).abs().max().item() > TOL  # shapes fit; only the heads differ


# ----------------------------------------------------------------- open_clip: BiomedCLIP's timm trunk + proj


def _open_clip_model():
    from open_clip.model import CustomTextCLIP

    torch.manual_seed(2)
    vision = {
        "timm_model_name": "vit_tiny_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    }
    text = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    model = CustomTextCLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    _randomise(model.visual, seed=2)
    return model, {"model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}}


def test_open_clip_biomedclip_matches_encode_image(tmp_path):
    model, config = _open_clip_model()
    source = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), source)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    out = tmp_path / "biomedclip.safetensors"
    backbone = _convert("biomedclip", source, out)
    extras = read_extras(out)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        pooled = backbone(x)
        assert (pooled - model.visual.trunk(x)).abs().max().item() < TOL
        assert (pooled @ extras["proj"].T - model.encode_image(x)).abs().max().item() < TOL
    text_keys = {f"text.{k}" for k in model.text.state_dict()}
    assert text_keys <= set(extras) and "logit_scale" in extras
    assert read_foundation_metadata(out)["dropped"] == {}


def test_open_clip_refuses_another_pooling(tmp_path):
    model, config = _open_clip_model()
    config["model_cfg"]["vision_cfg"]["timm_pool"] = "avg"
    source = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), source)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="timm_pool='avg'"):
        convert_checkpoint("biomedclip", source, tmp_path / "out.safetensors")


def test_a_file_in_another_layout_names_the_file_and_the_fix(tmp_path):
    torch.save({"blocks.0.norm1.weight": torch.ones(4)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ConversionError, match=r"pytorch_model\.bin has no 'embeddings\.cls_token'"):
        convert_checkpoint("phikon", tmp_path, tmp_path / "out.safetensors")


def test_rad_dino_on_one_grey_channel_equals_the_grey_copied_into_rgb(tmp_path):
    """RAD-DINO's mean/std are equal over RGB, so folding the filters (in_chans=1) is exact (module docstring)."""
    _hf_dinov2(tmp_path / "rad_dino", mlp_ratio=2)
    out = tmp_path / "rad_dino.safetensors"
    rgb = _convert("rad_dino", tmp_path / "rad_dino", out)
    grey = load_backbone(out, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (grey(x) - rgb(x.expand(-1, 3, -1, -1))).abs().max().item() < TOL
