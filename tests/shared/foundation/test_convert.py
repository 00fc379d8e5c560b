"""`domainfm models convert` on a timm-layout file: strict, streamed, rebuilt exactly by load_backbone."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

from domainfm.cli import main
from domainfm.shared.backbones import load_backbone
from domainfm.shared.foundation.convert import convert_checkpoint, foundation_transform, read_foundation_metadata
from domainfm.shared.foundation.safetensors_stream import write_streaming
from domainfm.shared.foundation.sources import ConversionError

TINY_UNI = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32}


def _tiny_uni(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_large_patch16_224", pretrained=False, num_classes=0, init_values=1e-5, dynamic_img_size=True, **TINY_UNI
    )
    for block in model.blocks:  # LayerScale at 1e-5 would hide a wrong block; make it count
        torch.nn.init.normal_(block.ls1.gamma, std=0.5)
        torch.nn.init.normal_(block.ls2.gamma, std=0.5)
    return model.eval()


def _write_uni(folder, model, with_head: bool = True):
    state = dict(model.state_dict())
    if with_head:
        state["head.weight"] = torch.randn(5, 64)
        state["head.bias"] = torch.randn(5)
    path = folder / "pytorch_model.bin"
    torch.save(state, path)
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_large_patch16_224", "model_args": TINY_UNI}))
    return path


def test_timm_layout_converts_and_rebuilds_the_same_model(tmp_path):
    original = _tiny_uni()
    source = _write_uni(tmp_path, original)
    out = tmp_path / "uni.safetensors"
    assert (
        main(
            [
                "models",
                "convert",
                "uni",
                "--input",
                str(source),
                "--config",
                str(tmp_path / "config.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    backbone = load_backbone(out).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (backbone(x) - original(x)).abs().max().item() < 1e-5
    meta = read_foundation_metadata(out)
    assert meta["model"] == "uni"
    assert sorted(meta["dropped"]) == ["head.bias", "head.weight"]
    record = foundation_transform(out)
    assert record.size == [32, 32] and record.mean == [0.485, 0.456, 0.406] and record.scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("edit", ["missing", "unexpected", "misshaped"])
def test_a_tensor_that_does_not_fit_fails_by_name(tmp_path, edit):
    state = dict(_tiny_uni().state_dict())
    if edit == "missing":
        del state["blocks.1.ls2.gamma"]
        name = "blocks.1.ls2.gamma"
    elif edit == "unexpected":
        state["blocks.1.extra_norm.weight"] = torch.ones(64)
        name = "blocks.1.extra_norm.weight"
    else:
        state["blocks.0.mlp.fc1.bias"] = torch.zeros(100)
        name = "blocks.0.mlp.fc1.bias (100,) vs (256,)"
    source = tmp_path / "pytorch_model.bin"
    torch.save(state, source)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_args": TINY_UNI}))
    out = tmp_path / "uni.safetensors"
    with pytest.raises(ConversionError, match=r"does not fit uni") as error:
        convert_checkpoint("uni", source, out, config)
    assert name in str(error.value)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_a_pickle_that_is_not_tensors_is_refused(tmp_path):
    source = tmp_path / "model.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, source)  # a whole module: needs unsafe unpickling
    with pytest.raises(ConversionError, match="weights_only=True") as error:
        convert_checkpoint("uni", source, tmp_path / "out.safetensors")
    assert "torch.nn.modules.linear.Linear" in str(error.value)  # names what was refused
    assert "torch.save({'state_dict'" in str(error.value)  # and how to keep the weights alone
    assert not (tmp_path / "out.safetensors").exists()


def test_streaming_writer_is_read_back_by_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4, dtype=torch.float64).to(torch.bfloat16),
        "d": torch.tensor([True, False]),
    }
    entries = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    path = write_streaming(tmp_path / "x.safetensors", entries, tensors.__getitem__, {"k": "v"})
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)


def test_streaming_writer_leaves_nothing_when_a_tensor_changes(tmp_path):
    entries = [("a", torch.float32, (2,))]
    with pytest.raises(ValueError, match="changed while writing"):
        write_streaming(tmp_path / "x.safetensors", entries, lambda _: torch.zeros(3), {})
    assert list(tmp_path.iterdir()) == []


def test_models_list_json_names_each_model_with_size_and_normalisation(capsys):
    assert main(["models", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["uni"]["input_size"] == [224, 224]
    assert rows["uni"]["normalisation"]["std"] == [0.229, 0.224, 0.225]
    assert rows["uni"]["mpp"] == 0.5 and rows["uni"]["gated"] is True


def test_bench_convert_reports_both_runs_against_the_file_size(capsys):
    from domainfm.studies.shared.foundation.bench import bench_convert

    assert bench_convert(size_mb=24, json_out=True) == 0
    report = json.loads(capsys.readouterr().out)
    baseline = report["convert baseline: torch.load + save_file"]
    converted = report["domainfm models convert"]
    # torch.load holds the whole file privately; the streamed conversion holds one tensor at a time
    assert baseline["peak_anon_mb"] >= 0.9 * report["file_mb"]
    assert converted["peak_anon_mb"] < baseline["peak_anon_mb"]
    assert report["anon_ratio_convert_over_baseline"] == pytest.approx(
        converted["peak_anon_mb"] / baseline["peak_anon_mb"], rel=1e-6
    )


def test_convert_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    """A user's file at --out (or a .partial sibling) is kept byte for byte; --overwrite replaces only ours."""
    source = _write_uni(tmp_path, _tiny_uni())
    argv = ["models", "convert", "uni", "--input", str(source), "--config", str(tmp_path / "config.json")]
    out = tmp_path / "uni.safetensors"
    out.write_bytes(b"a user's file")
    sibling = tmp_path / "uni.safetensors.partial"
    sibling.write_bytes(b"also theirs")
    for extra in ([], ["--overwrite"]):
        assert main([*argv, "--out", str(out), *extra]) == 2
        assert "domainfm did not write" in capsys.readouterr().err
        assert out.read_bytes() == b"a user's file" and sibling.read_bytes() == b"also theirs"
    out.unlink()
    assert main([*argv, "--out", str(out)]) == 0
    written = out.read_bytes()
    assert main([*argv, "--out", str(out)]) == 2  # ours, but replacing it needs --overwrite
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == written
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert "blocks.0.attn.qkv.weight" in load_file(str(out))
    assert sibling.read_bytes() == b"also theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["config.json", "pytorch_model.bin", "uni.safetensors", "uni.safetensors.partial"]
    )
