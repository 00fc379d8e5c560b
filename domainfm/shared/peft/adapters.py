"""Baseline PEFT modules next to DVPT: AdaptFormer, VPT (shallow/deep) and the MLP-parallel hook.

AdaptFormer: Chen et al., arXiv 2205.13535 (a ReLU bottleneck parallel to each MLP, up-projection
zero-initialised, output scaled by ``s``). VPT: Jia et al., arXiv 2203.12119 (learnable tokens after the
class token: at the input only (shallow) or replaced before every block (deep)).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


class ParallelAdapter(nn.Module):
    """Base of adapters added in parallel to a block's MLP.

    The hook is a bound method, so ``deepcopy`` (EMA teachers, ``AveragedModel``) and pickling rebind it
    to the copied adapter.
    """

    def add_to_output(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook on the MLP: ``mlp(u) + adapter(u)``."""
        return output + self(inputs[0])


class AdaptFormerAdapter(ParallelAdapter):
    """``s * up(relu(down(x)))`` with ``up`` zero-initialised (identity at initialisation)."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The term added to the block's MLP output."""
        return self.scale * self.up(torch.relu(self.down(hidden)))


def attach_parallel_to_mlp(block: nn.Module, adapter: ParallelAdapter, name: str) -> None:
    """Registers ``adapter`` on ``block`` and adds ``adapter(mlp_input)`` to the block's MLP output.

    A forward hook leaves the frozen MLP and its parameter names untouched, so backbone checkpoints still
    load. The MLP input is ``norm2(h)`` in pre-norm blocks (ViT, Swin) and ``h`` in SwinV2's post-norm
    blocks.
    """
    block.add_module(name, adapter)
    block.mlp.register_forward_hook(adapter.add_to_output)


class VisualPrompts(nn.Module):
    """VPT prompt tokens for a timm ViT: inserted after the prefix tokens, optionally replaced per block."""

    def __init__(self, model: nn.Module, tokens: int = 50, deep: bool = False) -> None:
        super().__init__()
        dim, depth = model.embed_dim, len(model.blocks)
        self.start = int(model.num_prefix_tokens)
        self.tokens = tokens
        self.prompts = nn.Parameter(nn.init.trunc_normal_(torch.empty(depth if deep else 1, tokens, dim), std=0.02))
        self.model = [model]  # a plain list: not a submodule (no parameter duplication)
        # timm reads num_prefix_tokens both before the prompts exist (position embeddings) and after
        # (pooling, forward_intermediates): it counts the prompts only from their insertion on. Hooks are
        # bound methods so deepcopy and pickling rebind them to the copy.
        model.patch_embed.register_forward_pre_hook(self._reset_prefix)
        model.norm_pre.register_forward_hook(self._insert_hook)
        if deep:
            for index, block in enumerate(model.blocks):
                if index:
                    block.register_forward_pre_hook(functools.partial(self._replace_hook, index))

    def _reset_prefix(self, module: nn.Module, inputs: tuple) -> None:
        self._set_prefix(self.start)

    def _insert_hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.insert(output)

    def _replace_hook(self, layer: int, module: nn.Module, inputs: tuple) -> tuple:
        return (self.replace(inputs[0], layer),)

    def _set_prefix(self, count: int) -> None:
        self.model[0].num_prefix_tokens = count

    def insert(self, x: torch.Tensor) -> torch.Tensor:
        """Inserts the first layer's prompts after the class/register tokens."""
        prompts = self.prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)
        self._set_prefix(self.start + self.tokens)  # pooling and forward_intermediates skip the prompts
        return torch.cat([x[:, : self.start], prompts, x[:, self.start :]], dim=1)

    def replace(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Swaps in layer ``layer``'s prompts (VPT-deep)."""
        prompts = self.prompts[layer].to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, : self.start], prompts, x[:, self.start + self.tokens :]], dim=1)
