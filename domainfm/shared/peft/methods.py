"""``apply_peft(backbone, method, **cfg)``: every PEFT method behind one call, with one way to count.

Methods: ``linear`` (nothing in the backbone trains), ``full``, ``bitfit`` (biases), ``vpt_shallow``,
``vpt_deep``, ``adaptformer``, ``lora`` (HF ``peft``), ``dvpt``. Each freezes what it freezes and
marks its own parameters trainable; the task head is the caller's and always trains. ResNet backbones
take ``linear``, ``full`` and ``bitfit`` only (the others act on attention blocks); VPT needs a ViT.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainfm.shared.backbones import Backbone, create_backbone
from domainfm.shared.errors import DomainfmError
from domainfm.shared.peft.adapters import AdaptFormerAdapter, VisualPrompts, attach_parallel_to_mlp
from domainfm.shared.peft.dvpt import DVPT
from domainfm.shared.registry import Registry

PEFT_METHODS: Registry[Callable[..., None]] = Registry("PEFT method")
METADATA_KEY = "domainfm_peft"


class PeftError(DomainfmError):
    """A PEFT method cannot be applied to this backbone, or adapter weights do not fit."""


def list_peft_methods() -> list[str]:
    """Registered method names."""
    return PEFT_METHODS.names()


def _freeze(backbone: Backbone) -> None:
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)


def _blocks(backbone: Backbone, method: str) -> list[nn.Module]:
    blocks = backbone.transformer_blocks()
    if not blocks:
        raise PeftError(
            f"{method} adapts attention blocks; {backbone.name} ({backbone.spec.family}) has none. "
            "Use linear, bitfit or full for CNNs."
        )
    return blocks


def _block_dim(block: nn.Module) -> int:
    return int(block.mlp.fc1.in_features)


@PEFT_METHODS.register("linear")
def _linear(backbone: Backbone) -> None:
    _freeze(backbone)


@PEFT_METHODS.register("full")
def _full(backbone: Backbone) -> None:
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)


@PEFT_METHODS.register("bitfit")
def _bitfit(backbone: Backbone) -> None:
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(name.endswith(".bias"))


def _vpt(backbone: Backbone, tokens: int, deep: bool) -> None:
    if backbone.spec.family not in ("vit", "flexivit"):
        raise PeftError(f"VPT is implemented for ViT/FlexiViT; {backbone.name} is {backbone.spec.family}")
    _freeze(backbone)
    backbone.peft_vpt = VisualPrompts(backbone.model, tokens=tokens, deep=deep)


@PEFT_METHODS.register("vpt_shallow")
def _vpt_shallow(backbone: Backbone, tokens: int = 50) -> None:
    _vpt(backbone, tokens, deep=False)


@PEFT_METHODS.register("vpt_deep")
def _vpt_deep(backbone: Backbone, tokens: int = 50) -> None:
    _vpt(backbone, tokens, deep=True)


@PEFT_METHODS.register("adaptformer")
def _adaptformer(backbone: Backbone, bottleneck: int = 64, scale: float = 0.1) -> None:
    blocks = _blocks(backbone, "adaptformer")
    _freeze(backbone)
    for block in blocks:
        attach_parallel_to_mlp(block, AdaptFormerAdapter(_block_dim(block), bottleneck, scale), "peft_adaptformer")


@PEFT_METHODS.register("dvpt")
def _dvpt(
    backbone: Backbone,
    bottleneck: int = 64,
    prompts: int = 50,
    share_every: int = 3,
    aggregation: str = "broadcast_pool",
) -> None:
    blocks = _blocks(backbone, "dvpt")
    if share_every < 1:
        raise PeftError(f"share_every must be >= 1, got {share_every}")
    _freeze(backbone)
    module, served = None, 0
    for block in blocks:
        dim = _block_dim(block)
        if module is None or served == share_every or module.norm.normalized_shape[0] != dim:
            module, served = DVPT(dim, bottleneck, prompts, aggregation), 0
        attach_parallel_to_mlp(block, module, "peft_dvpt")  # the same object in every block it serves
        served += 1


# timm's SwinV2 attention computes q/k/v with F.linear on qkv.weight and its own biases, bypassing the
# module call a LoRA layer hooks into, so there LoRA adapts the attention output projection instead.
LORA_TARGETS = {"swinv2": ("attn.proj",)}


@PEFT_METHODS.register("lora")
def _lora(
    backbone: Backbone,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] | None = None,
) -> None:
    from domainfm.shared.optional import require

    peft = require("peft", "peft")
    _blocks(backbone, "lora")
    _freeze(backbone)
    targets = list(target_modules or LORA_TARGETS.get(backbone.spec.family, ("qkv",)))
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    peft.inject_adapter_in_model(config, backbone.model)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_("lora_" in name)


def apply_peft(backbone: Backbone, method: str, **config: Any) -> Backbone:
    """Adapts ``backbone`` in place with ``method`` and returns it; see ``list_peft_methods()``.

    Args:
        backbone: A shared backbone (``create_backbone``).
        method: A registered method name.
        **config: The method's options (e.g. ``bottleneck``, ``prompts``, ``share_every`` for DVPT).
    """
    if getattr(backbone, "peft_method", None) is not None:
        raise PeftError(f"{backbone.name} already carries {backbone.peft_method}; build a fresh backbone")
    builder = PEFT_METHODS.get(method)
    try:
        builder(backbone, **config)
    except TypeError as error:
        raise PeftError(f"bad options for {method}: {error}") from error
    backbone.peft_method, backbone.peft_config = method, dict(config)
    return backbone


def count_parameters(backbone: Backbone) -> dict[str, Any]:
    """Trainable and total parameters, and the trainable fraction of the original backbone (head excluded)."""
    added = {id(p) for name, p in backbone.named_parameters() if "peft_" in name or "lora_" in name}
    unique = {id(p): p for p in backbone.parameters()}
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    total = sum(p.numel() for p in unique.values())
    original = sum(p.numel() for i, p in unique.items() if i not in added)
    return {
        "backbone": backbone.name,
        "method": getattr(backbone, "peft_method", None),
        "trainable": trainable,
        "total": total,
        "backbone_parameters": original,
        "fraction_of_backbone": trainable / original,
    }


def peft_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """What an adapter checkpoint holds.

    The trainable tensors (shared modules once), plus BatchNorm running statistics, which change whenever
    a CNN runs in training mode, whatever the method trains.
    """
    state = {name: p.detach().cpu().contiguous() for name, p in backbone.named_parameters() if p.requires_grad}
    for module_name, module in backbone.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buffer_name, buffer in module.named_buffers(recurse=False):
                state[f"{module_name}.{buffer_name}"] = buffer.detach().cpu().contiguous()
    return state


def save_adapter(backbone: Backbone, path: str | Path) -> Path:
    """Writes the adapter-only weights with the method, its options and the backbone's build arguments."""
    from domainfm.shared.tasks.checkpoint import save_checkpoint

    meta = {"method": backbone.peft_method, "config": backbone.peft_config, "backbone": backbone.build_args}
    return save_checkpoint(path, peft_state_dict(backbone), {METADATA_KEY: meta})


def load_adapter(path: str | Path, backbone: Backbone | None = None) -> Backbone:
    """Re-attaches saved adapter weights: to ``backbone`` (frozen weights already loaded) or a fresh one."""
    from domainfm.shared.tasks.checkpoint import read_checkpoint

    weights, metadata = read_checkpoint(path, PeftError)
    meta = metadata.get(METADATA_KEY)
    if meta is None:
        raise PeftError(f"{path} is not a domainfm adapter file (no {METADATA_KEY} metadata)")
    if backbone is None:
        args = dict(meta["backbone"])
        backbone = create_backbone(args.pop("name"), **args)
    if meta["backbone"]["name"] != backbone.name:
        raise PeftError(f"adapter {path} was trained on {meta['backbone']['name']}; it does not fit {backbone.name}")
    apply_peft(backbone, meta["method"], **meta["config"])
    expected = peft_state_dict(backbone)
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise PeftError(
            f"adapter {path} does not fit {backbone.name}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"shape mismatches {shapes[:8]}"
        )
    backbone.load_state_dict(weights, strict=False)
    return backbone
