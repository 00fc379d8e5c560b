"""DVPT: dynamic visual prompt tuning, implemented clean-room from the paper's description.

He et al., "DVPT: Dynamic Visual Prompt Tuning of Large Pre-trained Models for Medical Image Analysis",
arXiv 2307.09787 (Neural Networks 185, 2025). Frozen tokens pass a bottleneck down-projection; a few
learnable prompts act as queries that cross-attend over the projected tokens; the attended prompts are
projected back, gated by a zero-initialised scalar, and aggregated with the frozen features. One module
may serve several consecutive blocks. Nothing is ported from the authors' code.

Placement: in parallel to each block's MLP (added to the MLP output), so the frozen weights keep their
names. Aggregation ``broadcast_pool`` (default) adds the mean of the attended prompts to every token:
with the zero gate the adapted model computes exactly what the frozen one does. ``first_k`` adds the n
prompt outputs to the first n token positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from domainfm.shared.peft.adapters import ParallelAdapter

AGGREGATIONS = ("broadcast_pool", "first_k")


class DVPT(ParallelAdapter):
    """One DVPT module for tokens of width ``dim``.

    Args:
        dim: Token width of the blocks it serves.
        bottleneck: Width ``r`` of the down-projection.
        prompts: Number ``n`` of learnable prompt queries.
        aggregation: ``broadcast_pool`` or ``first_k``.
    """

    def __init__(self, dim: int, bottleneck: int = 64, prompts: int = 50, aggregation: str = "broadcast_pool") -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown DVPT aggregation {aggregation!r}; choose from {AGGREGATIONS}")
        self.aggregation = aggregation
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.prompts = nn.Parameter(nn.init.trunc_normal_(torch.empty(prompts, bottleneck), std=0.02))
        self.up = nn.Linear(bottleneck, dim)  # normally initialised: exactly one of (gate, up) is zero
        self.gate = nn.Parameter(torch.zeros(1))
        self.scale = 1.0 / math.sqrt(bottleneck)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The term to add to the block's MLP output; ``hidden`` is ``[B, N, d]`` or ``[B, H, W, d]``."""
        tokens = hidden.reshape(hidden.shape[0], -1, hidden.shape[-1])
        z = self.act(self.down(self.norm(tokens)))  # [B, N, r]
        attention = torch.softmax(self.prompts @ z.transpose(1, 2) * self.scale, dim=-1)  # [B, n, N]
        attended = self.up(attention @ z)  # [B, n, d]
        if self.aggregation == "broadcast_pool":
            pooled = attended.mean(1)  # [B, d], added to every token
            return self.gate * pooled.reshape(hidden.shape[0], *([1] * (hidden.ndim - 2)), hidden.shape[-1])
        out = torch.zeros_like(tokens)
        k = min(attended.shape[1], tokens.shape[1])
        out[:, :k] = attended[:, :k]
        return self.gate * out.reshape(hidden.shape)
