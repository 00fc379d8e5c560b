"""Attention rollout for ViT-family backbones (Abnar & Zuidema, ACL 2020, arXiv 2005.00928).

Per block, the attention probabilities ``A = softmax(q k^T * scale)`` are recomputed from the block's own
``qkv`` projection in a forward pre-hook (timm runs fused scaled-dot-product attention, which never
materialises ``A``; the hook leaves the modules and their outputs untouched). Heads are averaged, the
residual connection is accounted for by adding the identity and renormalising the rows,
``Â = (A + I) / 2``, and the blocks are multiplied in order: ``R = Â_L ... Â_1``.

The row of the token the head reads is taken: the class token (row 0) for class-token pooling, the mean
of the patch-token rows for average pooling. Its entries on the **patch tokens** (the last ``h x w``
tokens of the sequence) form the map; class/register tokens and prompt tokens sit before the patches and
are left out. VPT prompts (:class:`domainfm.shared.peft.adapters.VisualPrompts`) are such extra tokens;
DVPT adds no tokens (its prompts are cross-attention queries inside a module parallel to each MLP, so
they are not in the sequence and the rollout does not see them). ``patch_share`` reports how much of the
row reached the patches at all. The patch grid is renormalised to sum to 1, upsampled to the input by
nearest neighbour and renormalised again: **the map sums to 1 over the input pixels** (a distribution of
where the pooled token looks). It does not depend on the target class: rollout is class-agnostic.

Swin, SwinV2 (windowed attention, patch merging) and CNNs have no single token sequence; they are
refused with a pointer to ``integrated_gradients``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.explain.targets import ExplainError, explained_scores

ROLLOUT_FAMILIES = ("vit", "flexivit")


def find_backbone(network: nn.Module) -> Any:
    """The first :class:`~domainfm.shared.backbones.wrapper.Backbone` inside ``network`` (``None`` if none)."""
    from domainfm.shared.backbones.wrapper import Backbone

    return next((m for m in network.modules() if isinstance(m, Backbone)), None)


def rollout_backbone(deployable: Deployable) -> Any:
    """The ViT-family backbone of ``deployable``, or an :class:`ExplainError` saying rollout does not apply."""
    backbone = find_backbone(deployable.network)
    family = getattr(getattr(backbone, "spec", None), "family", None)
    if backbone is None or family not in ROLLOUT_FAMILIES:
        what = f"a {family} backbone ({backbone.name})" if backbone is not None else "no transformer backbone"
        raise ExplainError(
            f"attention_rollout applies to ViT-family backbones ({', '.join(ROLLOUT_FAMILIES)}); "
            f"{deployable.card.kind} has {what}. Use --method integrated_gradients (or gradient_shap, "
            "occlusion) instead."
        )
    return backbone


def _attention_probabilities(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T * scale)`` ``[B, heads, N, N]`` of a timm ``Attention`` module for its input ``x``."""
    for name in ("qkv", "num_heads", "scale", "q_norm", "k_norm"):
        if not hasattr(module, name):
            raise ExplainError(
                f"attention_rollout cannot read {type(module).__name__} (no {name!r}); use integrated_gradients"
            )
    batch, tokens, width = x.shape
    heads = module.num_heads
    head_dim = getattr(module, "head_dim", width // heads)
    qkv = module.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    return torch.softmax((q * module.scale) @ k.transpose(-2, -1), dim=-1)


@torch.no_grad()
def attention_rollout(
    deployable: Deployable, image: torch.Tensor, head_fusion: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Rollout maps of ``image`` ``[B, C, H, W]``.

    Args:
        deployable: A deployed model with a ViT-family backbone.
        image: Raw inputs.
        head_fusion: How heads are combined per block: ``mean`` (Abnar & Zuidema), ``max`` or ``min``.

    Returns:
        ``(maps [B, H, W]`` each summing to 1, ``explained scores [B, K]``, details: token counts, patch
        grid, ``patch_share`` per input).
    """
    if head_fusion not in ("mean", "max", "min"):
        raise ExplainError(f"unknown head_fusion {head_fusion!r}; choose mean, max or min")
    model = rollout_backbone(deployable).model
    attentions: list[torch.Tensor] = []
    grid: list[tuple[int, int]] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            raise ExplainError("attention_rollout does not support masked attention; use integrated_gradients")
        attentions.append(_attention_probabilities(module, args[0] if args else kwargs["x"]).float())

    def patches(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if output.ndim == 4:  # dynamic image size: NHWC
            grid.append((int(output.shape[1]), int(output.shape[2])))
        else:
            grid.append(tuple(int(g) for g in module.grid_size))

    handles = [model.patch_embed.register_forward_hook(patches)]
    handles += [block.attn.register_forward_pre_hook(capture, with_kwargs=True) for block in model.blocks]
    try:
        scores = explained_scores(deployable, image)
    finally:
        for handle in handles:
            handle.remove()
    rows, cols = grid[-1]
    n_patches = rows * cols
    tokens = attentions[0].shape[-1]
    rollout = torch.eye(tokens, device=image.device).expand(image.shape[0], tokens, tokens)
    for attention in attentions:
        if attention.shape[-1] != tokens:
            raise ExplainError("attention_rollout needs the same token count in every block")
        fused = {"mean": attention.mean(1), "max": attention.amax(1), "min": attention.amin(1)}[head_fusion]
        fused = fused + torch.eye(tokens, device=fused.device)
        rollout = (fused / fused.sum(-1, keepdim=True)) @ rollout
    pools_class_token = (
        getattr(model, "cls_token", None) is not None and getattr(model, "global_pool", "token") == "token"
    )
    row = rollout[:, 0] if pools_class_token else rollout[:, -n_patches:].mean(1)
    patch_part = row[:, -n_patches:]
    share = patch_part.sum(-1)
    grid_map = (patch_part / share[:, None]).reshape(-1, 1, rows, cols)
    maps = nn.functional.interpolate(grid_map, size=tuple(image.shape[-2:]), mode="nearest")[:, 0]
    maps = maps / maps.sum(dim=(-2, -1), keepdim=True)
    details = {
        "tokens": tokens,
        "patch_grid": [rows, cols],
        "extra_tokens": tokens - n_patches,
        "row": "class token" if pools_class_token else "mean of patch tokens",
        "patch_share": [float(s) for s in share],
        "head_fusion": head_fusion,
    }
    return maps, scores, details
