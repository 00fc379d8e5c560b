"""Periodic extra LayerNorms on timm's plain SwinV2, as large SwinV2 models train them.

SwinV2 (Liu et al., arXiv 2111.09883, section 3.1 and appendix) stabilises its largest models (SwinV2-G)
with an extra LayerNorm on the main branch every few blocks. Microsoft's SwinV2 code, and pytorch-caney,
which trains SatVision-TOA (NASA GSFC, arXiv 2411.17000) with it, build it as ``norm3`` in every block
``i`` of a stage with ``(i + 1) % period == 0``, applied to the block's output after the MLP residual
(``SwinTransformerBlock.forward`` ends with ``x = self.norm3(x)``; SatVision-TOA giant: period 6).

timm's ``swinv2_cr_*`` family has such norms but other maths and keys; timm's ``swinv2_*`` family
(``SwinTransformerV2``) follows Microsoft's layout but has no extra norms. :func:`add_periodic_norms`
adds them to a built timm ``SwinTransformerV2``: each selected block's class is swapped for
:class:`PeriodicNormBlock` (which applies ``norm3`` after the block) and a ``norm3`` LayerNorm is added
to it, so the state-dict keys are Microsoft's ``layers.S.blocks.I.norm3.weight/bias``. It works on a
model built under ``with torch.device("meta")`` (the norm is created on the block's device).
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import nn


class PeriodicNormBlock(SwinTransformerV2Block):
    """A timm SwinV2 block followed by its extra LayerNorm ``norm3`` (Microsoft/pytorch-caney ``extra_norm``)."""

    norm3: nn.LayerNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block, then ``norm3`` over the channels (the last dimension of timm's NHWC tokens)."""
        return self.norm3(super().forward(x))


def periodic_norm_indices(depth: int, period: int) -> list[int]:
    """Indices of a stage's blocks that end with an extra norm: ``i`` with ``(i + 1) % period == 0``."""
    return [i for i in range(depth) if period and (i + 1) % period == 0]


def add_periodic_norms(model: nn.Module, period: int, eps: float = 1e-5) -> int:
    """Adds ``norm3`` to every ``period``-th block of every stage of a timm ``SwinTransformerV2``.

    Args:
        model: A timm ``SwinTransformerV2`` (stages in ``model.layers``, blocks in ``stage.blocks``).
        period: Every ``period``-th block of a stage (counting from 1) gets the norm; 0 adds none.
        eps: The norm's epsilon (PyTorch's LayerNorm default, as pytorch-caney builds it).

    Returns:
        How many norms were added.
    """
    if period < 0:
        raise ValueError(f"extra_norm_period must be >= 0, got {period}")
    stages = getattr(model, "layers", None)
    if stages is None:
        raise ValueError(f"periodic norms are added to timm SwinTransformerV2 models, not {type(model).__name__}")
    added = 0
    for stage in stages:
        for index in periodic_norm_indices(len(stage.blocks), period):
            block = stage.blocks[index]
            if not isinstance(block, SwinTransformerV2Block):
                raise ValueError(f"block {index} is a {type(block).__name__}, not a timm SwinTransformerV2Block")
            reference = block.norm1.weight
            norm = nn.LayerNorm(block.norm1.normalized_shape, eps=eps, device=reference.device, dtype=reference.dtype)
            block.__class__ = PeriodicNormBlock
            block.add_module("norm3", norm)
            added += 1
    return added
