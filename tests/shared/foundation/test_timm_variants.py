"""The timm layout for the published timm encoders: Virchow(2), H-optimus, Prov-GigaPath, UNI2-h.

Each is built with timm and the publisher's own arguments (SwiGLUPacked + SiLU, registers, no_embed_class)
at tiny width, saved as the hub ships it (``pytorch_model.bin`` with timm keys and a ``config.json`` whose
``model_args`` give the width), converted with ``domainfm models convert`` and rebuilt with
``load_backbone``; the embedding must match the publisher's recipe to 1e-4. LayerScale gammas and tokens are
randomised, so a wrong block or token shows. Widths keep SwiGLU's packed hidden size even.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked

from domainfm.cli import main
from domainfm.shared.backbones import load_backbone

TOL = 1e-4
SWIGLU = {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _publish(tmp_path, architecture: str, model_args: dict, code_only: dict | None = None):
    """A random timm model saved as its hub folder; ``code_only`` are arguments no config.json can hold."""
    torch.manual_seed(0)
    model = timm.create_model(architecture, pretrained=False, **model_args, **(code_only or {})).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or name in ("cls_token", "reg_token", "pos_embed"):  # LayerScale 1e-5, tokens ~0
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": architecture, "model_args": model_args}))
    return model


def _convert(name: str, tmp_path):
    out = tmp_path / f"{name}.safetensors"
    assert main(["models", "convert", name, "--input", str(tmp_path / "pytorch_model.bin"), "--out", str(out)]) == 0
    return load_backbone(out).eval()


@pytest.mark.parametrize(("name", "registers"), [("virchow", 0), ("virchow2", 4)])
def test_virchow_class_and_mean_patch_token(tmp_path, name, registers):
    args = {"img_size": 28, "embed_dim": 160, "depth": 2, "num_heads": 2, "init_values": 1e-5, "mlp_ratio": 5.3375}
    args |= {"num_classes": 0, "global_pool": "", "dynamic_img_size": True, "reg_tokens": registers}
    model = _publish(tmp_path, "vit_huge_patch14_224", args, SWIGLU)
    backbone = _convert(name, tmp_path)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = model(x)  # the card: global_pool "" returns every token
        expected = torch.cat([tokens[:, 0], tokens[:, 1 + registers :].mean(1)], dim=-1)  # registers excluded
        got = backbone(x)
    assert got.shape == (2, 320) and backbone.embed_dim == 320
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("name", ["h_optimus_0", "h_optimus_1"])
def test_h_optimus_registers(tmp_path, name):
    args = {"img_size": 28, "embed_dim": 64, "depth": 2, "num_heads": 2, "mlp_ratio": 4.0, "num_classes": 0}
    model = _publish(tmp_path, "vit_giant_patch14_reg4_dinov2", {**args, "init_values": 1e-5})
    backbone = _convert(name, tmp_path)
    assert backbone.num_prefix_tokens == 5
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (backbone(x) - model(x)).abs().max().item() < TOL


def test_prov_gigapath_patch16_dinov2_giant(tmp_path):
    args = {"img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1e-5}
    model = _publish(tmp_path, "vit_giant_patch14_dinov2", {**args, "mlp_ratio": 4.0, "num_classes": 0})
    backbone = _convert("prov_gigapath", tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (backbone(x) - model(x)).abs().max().item() < TOL


def test_uni2_h_swiglu_eight_registers(tmp_path):
    args = {"img_size": 28, "patch_size": 14, "embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1e-5}
    args |= {"mlp_ratio": 4.0, "num_classes": 0, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True}
    model = _publish(tmp_path, "vit_giant_patch14_224", args, SWIGLU)
    backbone = _convert("uni2_h", tmp_path)
    assert backbone.num_prefix_tokens == 9
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert (backbone(x) - model(x)).abs().max().item() < TOL


def test_models_list_json_names_the_published_encoders(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    expected = {
        "uni2_h": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "virchow": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "virchow2": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "h_optimus_0": ([224, 224], [0.707223, 0.578729, 0.703617], 0.5),
        "h_optimus_1": ([224, 224], [0.707223, 0.578729, 0.703617], 0.5),
        "prov_gigapath": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "phikon": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "phikon_v2": ([224, 224], [0.485, 0.456, 0.406], 0.5),
        "rad_dino": ([518, 518], [0.5307, 0.5307, 0.5307], None),
        "biomedclip": ([224, 224], [0.48145466, 0.4578275, 0.40821073], None),
    }
    for name, (size, mean, mpp) in expected.items():
        row = rows[name]
        assert (row["input_size"], row["normalisation"]["mean"], row["mpp"]) == (size, mean, mpp), name
        assert row["normalisation"]["scale"] == pytest.approx(1 / 255) and row["source"] and row["licence"], name
    assert rows["virchow2"]["pooling"] == "cls_mean" and rows["uni2_h"]["pooling"] == "model"
    assert rows["rad_dino"]["channels"] == ["grey", "grey", "grey"] and rows["rad_dino"]["layout"] == "hf_dinov2"
    assert rows["h_optimus_0"]["normalisation"]["std"] == [0.211883, 0.230117, 0.177517]
