"""SatVision-TOA's release end to end: convert -> continue SimMIM (``--init``) -> curtain with DVPT -> bundle.

The release is :func:`~domainfm.studies.remote_sensing.satvision_release.write_satvision_release` (pytorch-
caney's DeepSpeed layout at a tiny width; the layout itself is checked against pytorch-caney in
``tests/shared/foundation/test_satvision_layout.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domainfm.cli import main
from domainfm.domains.remote_sensing.data import ingest_chips
from domainfm.domains.remote_sensing.foundation import satvision_transform
from domainfm.domains.remote_sensing.pretrain import continued_transform, prepare, pretrain, read_simmim
from domainfm.shared.backbones.periodic_norm import PeriodicNormBlock
from domainfm.shared.errors import DomainfmError
from domainfm.shared.foundation.convert import read_extras
from domainfm.shared.model import InputTransform
from domainfm.shared.tasks.checkpoint import read_checkpoint
from domainfm.studies.remote_sensing.phantom import write_granule, write_phantom_splits
from domainfm.studies.remote_sensing.satvision_release import write_satvision_release

pytest.importorskip("pyhdf")


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Phantom granules chipped at 64 px (all 14 bands, curtains) and the converted tiny release."""
    folder = tmp_path_factory.mktemp("satvision")
    granules = [write_granule(folder / f"MOD021KM.{i}.hdf", (128, 128), seed=i) for i in range(2)]
    store = folder / "chips.zarr"
    splits = write_phantom_splits(granules, folder / "splits.csv")
    assert ingest_chips(granules, store, chip=64, curtains=True, progress=False, splits=splits).ok
    weights, config = write_satvision_release(folder / "release", img_size=64, dtype=torch.bfloat16)
    converted = folder / "satvision.safetensors"
    argv = ["models", "convert", "satvision_toa_giant", "--input", str(weights), "--config", str(config)]
    assert main([*argv, "--out", str(converted)]) == 0
    return {"folder": folder, "granules": granules, "store": store, "converted": converted, "weights": weights}


def test_continued_pretraining_starts_from_the_release_and_keeps_its_transform(release, capsys):
    out = release["folder"] / "continued"
    run = ["--store", str(release["store"]), "--out", str(out), "--init", str(release["converted"])]
    assert main(["remote-sensing", "pretrain", *run, "--epochs", "1", "--device", "cpu"]) == 0
    _, trained_meta = read_simmim(out / "simmim.safetensors")
    assert trained_meta["encoder"]["extra_norm_period"] == 2  # the CLI's --init built the release's architecture
    # lr 0 (the CLI refuses it; the Python API allows it): the saved model is exactly what was loaded
    frozen = release["folder"] / "continued_lr0"
    pretrain(release["store"], frozen, epochs=1, lr=0.0, device="cpu", progress=False, init=release["converted"])
    state, meta = read_simmim(frozen / "simmim.safetensors")
    converted, _ = read_checkpoint(release["converted"])
    extras = read_extras(release["converted"])
    for key, value in converted.items():
        if not key.startswith("extra."):
            assert torch.equal(state["backbone.model." + key], value.float()), key
    assert torch.equal(state["mask_token"], extras["mask_token"].float().reshape(-1))
    assert torch.equal(state["head.0.weight"], extras["decoder.0.weight"].float())
    assert torch.equal(state["head.0.bias"], extras["decoder.0.bias"].float())
    assert meta["encoder"]["extra_norm_period"] == 2 and meta["encoder"]["embed_dim"] == 16
    record = InputTransform.from_dict(meta["transform"])
    assert record.channels == [c["name"] for c in meta["bands"]]
    # a MODIS store holds SatVision's scaling already: the release's transform composed with it is the identity
    assert record.mean == [0.0] * 14 and record.std == [1.0] * 14 and meta["input_transform"] is None
    assert record.details["band_table"][5]["scaling"] == [223.1222, 352.7182]


def test_the_curtain_trains_with_dvpt_on_the_continued_encoder_and_exports(release, capsys):
    from domainfm.domains.remote_sensing.downstream import load_task_model

    pretrained = release["folder"] / "continued_dvpt"
    pretrain(release["store"], pretrained, epochs=1, device="cpu", progress=False, init=release["converted"])
    out = release["folder"] / "curtain"
    args = ["remote-sensing", "train", "--store", str(release["store"]), "--task", "curtain", "--peft", "dvpt"]
    checkpoint = str(pretrained / "simmim.safetensors")
    assert main([*args, "--checkpoint", checkpoint, "--epochs", "1", "--labelled", "4", "--device", "cpu",
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert scores["init"] == "simmim" and scores["peft"] == "dvpt"
    model, meta = load_task_model(out / "curtain.safetensors")
    assert sum(isinstance(b, PeriodicNormBlock) for b in model.backbone.transformer_blocks()) == 5
    trained_meta = read_simmim(Path(checkpoint))[1]
    assert meta["transform"] == {**trained_meta["transform"], "geometry": "exact", "size": [64, 64]}
    bundle = release["folder"] / "bundle"
    assert main(["export", "bundle", "--checkpoint", str(out / "curtain.safetensors"), "--out", str(bundle)]) == 0
    card = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "remote_sensing.curtain" in json.dumps(card)


def test_the_release_transform_maps_physical_values_as_satvision_scales_them():
    record = satvision_transform(64)
    phys = torch.tensor([42.0, 10.0, 0.0, 5.0, 100.0, 300.0, 1.0, 200.0, 250.0, 260.0, 250.0, 280.0, 270.0, 240.0])
    images = phys.view(1, 14, 1, 1).expand(1, 14, 64, 64)
    model_input = record.module()(images)[0, :, 0, 0]
    lows = np.array(record.details["min"])
    highs = np.array(record.details["max"])
    assert torch.allclose(model_input, torch.as_tensor((phys.numpy() - lows) / (highs - lows)).float(), atol=1e-6)
    # re-expressed on a store of another scaling (or of physical values), the same chip gives the same input
    channels = [
        dict(row, scaling=[row["scaling"][0] - 10, row["scaling"][1] + 50]) for row in record.details["band_table"]
    ]
    stored = torch.stack(
        [(phys[i] - c["scaling"][0]) / (c["scaling"][1] - c["scaling"][0]) for i, c in enumerate(channels)]
    )
    on_store = continued_transform(record, channels, 64, Path("x.safetensors"))
    prepared = prepare(stored.view(1, 14, 1, 1), {"mean": on_store.mean, "std": on_store.std})[0, :, 0, 0]
    assert torch.allclose(prepared, model_input, atol=1e-5)
    physical = [{"name": c["name"]} for c in channels]
    on_raw = continued_transform(record, physical, 64, Path("x.safetensors"))
    assert torch.allclose(
        prepare(images[..., :1, :1], {"mean": on_raw.mean, "std": on_raw.std})[0, :, 0, 0], model_input
    )


def test_other_bands_or_a_foreign_decoder_are_refused_by_name(release, tmp_path):
    subset = tmp_path / "two_bands.zarr"
    splits = write_phantom_splits(release["granules"], tmp_path / "splits.csv")
    assert ingest_chips(release["granules"], subset, chip=64, bands=["B01", "B31"], progress=False, splits=splits).ok
    with pytest.raises(DomainfmError, match=r"\['B01', 'B31'\] are not .*satvision.safetensors's"):
        pretrain(subset, tmp_path / "a", epochs=1, device="cpu", progress=False, init=release["converted"])
    source = torch.load(release["weights"], weights_only=True)
    source["module"]["decoder.0.weight"] = torch.zeros(32 * 32 * 3, 128, 1, 1)
    source["module"]["decoder.0.bias"] = torch.zeros(32 * 32 * 3)
    foreign = tmp_path / "mp_rank_00_model_states.pt"
    torch.save(source, foreign)
    converted = tmp_path / "foreign.safetensors"
    config = release["weights"].parent / "mim_pretrain_swinv2_satvision_tiny.yaml"
    assert main(["models", "convert", "satvision_toa_giant", "--input", str(foreign), "--config", str(config),
                 "--out", str(converted)]) == 0  # fmt: skip
    with pytest.raises(DomainfmError, match="released SimMIM decoder does not fit"):
        pretrain(release["store"], tmp_path / "b", epochs=1, device="cpu", progress=False, init=converted)
    with pytest.raises(DomainfmError, match="not a converted foundation checkpoint"):
        pretrain(release["store"], tmp_path / "c", epochs=1, device="cpu", progress=False, init=release["store"])


def test_fsdp_wraps_the_blocks_with_and_without_the_extra_norm():
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block

    from domainfm.domains.remote_sensing.pretrain import _strategy
    from domainfm.shared.backbones import create_backbone

    backbone = create_backbone("test_swinv2", in_chans=14, img_size=32, depths=(2, 2), extra_norm_period=2)
    strategy = _strategy("fsdp", None, backbone)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {SwinTransformerV2Block, PeriodicNormBlock}
