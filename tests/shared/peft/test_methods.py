import json
from pathlib import Path

import pytest
import torch

from domainfm.cli import main
from domainfm.shared.backbones import create_backbone
from domainfm.shared.errors import DomainfmError
from domainfm.shared.peft import (
    DVPT,
    PeftError,
    apply_peft,
    count_parameters,
    list_peft_methods,
    load_adapter,
    peft_state_dict,
    save_adapter,
)

TRANSFORMERS = ["test_vit", "test_flexivit", "test_swin", "test_swinv2"]
APPLICABLE = [
    (backbone, method)
    for backbone in [*TRANSFORMERS, "test_resnet"]
    for method in list_peft_methods()
    if not (method.startswith("vpt") and backbone not in ("test_vit", "test_flexivit"))
    and not (backbone == "test_resnet" and method in ("adaptformer", "lora", "dvpt"))
]


def _input(backbone) -> torch.Tensor:
    size = backbone.img_size or 64
    return torch.randn(4, backbone.in_chans, size, size)


def _pretrained_like(name: str):
    """timm initialises SwinV2's post-norm weights to zero (its res-post-norm init), which silences every
    MLP-parallel adapter until training moves them; give them the non-zero values a trained model has."""
    backbone = create_backbone(name)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.weight is not None and not module.weight.any():
                module.weight.fill_(1.0)
    return backbone


def _names_of_added(backbone) -> set[str]:
    return {n for n, _ in backbone.named_parameters() if "peft_" in n or "lora_" in n}


@pytest.mark.parametrize(("name", "method"), APPLICABLE)
def test_only_peft_parameters_and_head_train(name: str, method: str):
    backbone = apply_peft(_pretrained_like(name), method)
    if method == "dvpt":  # open the zero gates so every DVPT parameter gets a gradient
        for module in backbone.modules():
            if isinstance(module, DVPT):
                torch.nn.init.constant_(module.gate, 0.5)
    head = torch.nn.Linear(backbone.embed_dim, 3)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    expected = {
        "linear": set(),
        "full": {n for n, _ in backbone.named_parameters()},
        "bitfit": {n for n, _ in backbone.named_parameters() if n.endswith(".bias")},
    }.get(method, _names_of_added(backbone))
    assert trainable == expected and (method in ("linear",) or trainable)
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad] + list(head.parameters()), lr=0.5)
    loss = torch.nn.functional.cross_entropy(head(backbone(_input(backbone))), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for n, p in backbone.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    optimizer.step()
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(before[n], p)}
    assert changed <= trainable
    if method != "linear":
        assert changed, "a trained parameter must change after a step"


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_dvpt_default_equals_the_frozen_backbone_at_initialisation(name: str):
    frozen = create_backbone(name).eval()
    adapted = apply_peft(create_backbone(name), "dvpt").eval()
    adapted.load_state_dict(frozen.state_dict(), strict=False)
    x = _input(frozen)
    with torch.no_grad():
        assert torch.equal(frozen(x), adapted(x))
        for a, b in zip(frozen.forward_intermediates(x), adapted.forward_intermediates(x), strict=True):
            assert torch.equal(a, b)


def test_dvpt_modules_are_shared_across_blocks():
    counts = {}
    for share in (1, 2, 3, 6):
        backbone = apply_peft(create_backbone("test_vit", depth=6), "dvpt", bottleneck=8, prompts=4, share_every=share)
        modules = {id(block.peft_dvpt) for block in backbone.transformer_blocks()}
        assert len(modules) == 6 // share
        counts[share] = count_parameters(backbone)["trainable"]
    assert counts[1] == 2 * counts[2] == 3 * counts[3] == 6 * counts[6]
    per_module = 2 * 64 + 64 * 8 + 8 + 4 * 8 + 8 * 64 + 64 + 1  # LN + down + prompts + up + gate (dvpt.md §4)
    assert counts[6] == per_module


def _projected(out: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A loss with a non-degenerate gradient: the output against a fixed seeded random direction.

    ``out.sum()`` would not do: the backbone ends in a LayerNorm, whose output (at its initial unit
    weight) sums to a constant, its bias times the width; every gradient of that sum is float noise
    (1e-7..1e-5, or exactly 0 on some CPUs).
    """
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out * direction).sum()


def test_dvpt_trains_only_once_the_gate_moves():
    torch.manual_seed(0)
    backbone = apply_peft(create_backbone("test_vit"), "dvpt", share_every=1)
    module = backbone.transformer_blocks()[0].peft_dvpt
    x = torch.randn(4, backbone.in_chans, 64, 64, generator=torch.Generator().manual_seed(1))
    _projected(backbone(x)).backward()
    assert module.gate.grad is not None, "the zero gate must receive a gradient"
    gate_grad = float(module.gate.grad)
    assert abs(gate_grad) > 1e-2, f"gate gradient {gate_grad} is float noise, not a signal"
    # the gradient is the real slope of the loss in the gate: a central difference agrees
    step = 1e-2
    with torch.no_grad():
        losses = []
        for sign in (1.0, -1.0):
            torch.nn.init.constant_(module.gate, sign * step)
            losses.append(float(_projected(backbone(x))))
        torch.nn.init.constant_(module.gate, 0.0)
    assert gate_grad == pytest.approx((losses[0] - losses[1]) / (2 * step), rel=0.05)
    for parameter in (module.prompts, module.down.weight, module.up.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() == 0, "with a zero gate nothing else moves"
    backbone.zero_grad()
    torch.nn.init.constant_(module.gate, 1.0)
    _projected(backbone(x)).backward()
    for name, parameter in (("prompts", module.prompts), ("down", module.down.weight), ("up", module.up.weight)):
        assert parameter.grad is not None, name
        assert parameter.grad.norm() > 1e-2, f"{name}: gradient norm {float(parameter.grad.norm())} is float noise"


@pytest.mark.parametrize(("name", "method"), [p for p in APPLICABLE if p[1] != "linear"])
def test_adapter_only_weights_round_trip(name: str, method: str, tmp_path: Path):
    torch.manual_seed(1)
    base = create_backbone(name)
    frozen_state = base.state_dict()
    adapted = apply_peft(base, method)
    with torch.no_grad():
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    path = save_adapter(adapted, tmp_path / "adapter.safetensors")
    fresh = create_backbone(name)
    fresh.load_state_dict(frozen_state)
    restored = load_adapter(path, fresh).eval()
    x = _input(adapted)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(x), restored(x))
    assert set(peft_state_dict(restored)) == set(peft_state_dict(adapted))
    if method not in ("full",):
        assert path.stat().st_size < 0.5 * sum(v.numel() * 4 for v in frozen_state.values())


def test_adapter_for_another_backbone_is_refused(tmp_path: Path):
    path = save_adapter(apply_peft(create_backbone("test_vit"), "dvpt"), tmp_path / "a.safetensors")
    with pytest.raises(DomainfmError, match="does not fit test_flexivit"):
        load_adapter(path, create_backbone("test_flexivit"))


def test_inapplicable_methods_and_bad_options_are_clear():
    with pytest.raises(PeftError, match="VPT is implemented for ViT/FlexiViT; test_swin is swin"):
        apply_peft(create_backbone("test_swin"), "vpt_deep")
    with pytest.raises(PeftError, match="dvpt adapts attention blocks; test_resnet"):
        apply_peft(create_backbone("test_resnet"), "dvpt")
    with pytest.raises(PeftError, match="bad options for dvpt"):
        apply_peft(create_backbone("test_vit"), "dvpt", bottlenek=8)
    with pytest.raises(DomainfmError, match="unknown PEFT method 'dvtp'"):
        apply_peft(create_backbone("test_vit"), "dvtp")


def test_vpt_prompts_are_skipped_by_pooling_and_intermediates():
    backbone = apply_peft(create_backbone("test_vit"), "vpt_deep", tokens=5)
    x = _input(backbone)
    assert backbone(x).shape == (4, backbone.embed_dim)
    assert backbone.forward_features(x).shape[1] == 1 + 5 + 16
    assert backbone.forward_intermediates(x)[-1].shape == (4, 64, 4, 4)
    assert backbone(torch.randn(2, 3, 96, 96)).shape == (2, backbone.embed_dim)  # other sizes still work


def test_count_cli_reports_dvpt_under_one_percent_of_vit_base(capsys: pytest.CaptureFixture[str]):
    assert main(["peft", "count", "--backbone", "vit_base_patch16_224", "--method", "dvpt", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["trainable"] == 415_492 and counts["fraction_of_backbone"] < 0.01
    assert counts["backbone_parameters"] == 85_798_656


@pytest.mark.parametrize("method", ["dvpt", "adaptformer", "vpt_deep"])
def test_deep_copies_use_their_own_adapters(method: str):
    import copy
    import pickle

    original = apply_peft(create_backbone("test_vit"), method).eval()
    if method == "dvpt":
        for module in original.modules():
            if isinstance(module, DVPT):
                torch.nn.init.constant_(module.gate, 1.0)
    twin = copy.deepcopy(original)
    x = _input(original)
    with torch.no_grad():
        assert torch.equal(original(x), twin(x))
        for parameter in twin.parameters():
            if parameter.requires_grad:
                parameter.add_(1.0)
        assert not torch.equal(original(x), twin(x)), "the copy must run its own (changed) adapter"
    restored = pickle.loads(pickle.dumps(twin))
    with torch.no_grad():
        assert torch.equal(restored(x), twin(x))


def test_batchnorm_statistics_travel_with_the_adapter(tmp_path: Path):
    torch.manual_seed(0)
    base = create_backbone("test_resnet")
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    adapted = apply_peft(base, "bitfit").train()
    for _ in range(3):
        adapted(torch.randn(4, 3, 64, 64) * 3 + 1)  # training-mode forwards move the running statistics
    path = save_adapter(adapted, tmp_path / "bitfit.safetensors")
    fresh = create_backbone("test_resnet")
    fresh.load_state_dict(frozen)
    restored = load_adapter(path, fresh).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(adapted.eval()(x), restored(x))
