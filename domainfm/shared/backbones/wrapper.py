"""One interface over every timm backbone: pooled embedding, token/feature maps, intermediate layers.

PEFT methods, heads, export and explanation code are written once against :class:`Backbone`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainfm.shared.backbones.checkpoint import load_backbone_state, read_backbone_metadata
from domainfm.shared.backbones.specs import BackboneSpec, get_backbone_spec


class Backbone(nn.Module):
    """A timm model without classifier, behind domainfm's backbone contract.

    Attributes:
        spec: The registry entry it was built from.
        model: The wrapped timm model (``num_classes=0``).
        in_chans: Input channels (1 for X-ray, 3 for H&E, 14 for MODIS, ...).
        img_size: Input size it was built for (``None`` for size-agnostic CNNs).
        embed_dim: Width of the pooled embedding returned by :meth:`forward`.
        feature_format: ``"tokens"`` (ViT: ``[B, prefix + N, D]``) or ``"nchw"`` (Swin, ResNet).
        num_prefix_tokens: Class/register tokens ahead of the patch tokens (0 for ``"nchw"``).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, in_chans: int, img_size: int | None, **kwargs: Any):
        super().__init__()
        self.spec = spec
        self.model = model
        self.in_chans = in_chans
        self.img_size = img_size
        self.embed_dim: int = int(model.num_features)
        self.feature_format = spec.feature_format
        self.num_prefix_tokens: int = (
            int(getattr(model, "num_prefix_tokens", 0)) if self.feature_format == "tokens" else 0
        )
        self._extra_kwargs = kwargs

    @property
    def name(self) -> str:
        """Registry name."""
        return self.spec.name

    @property
    def build_args(self) -> dict[str, Any]:
        """Arguments that rebuild this backbone with :func:`create_backbone` (saved with checkpoints)."""
        return {"name": self.name, "in_chans": self.in_chans, "img_size": self.img_size, **self._extra_kwargs}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``[B, embed_dim]`` (class token or average pool, as the architecture pools)."""
        return self.model(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: tokens ``[B, prefix + N, D]`` for ViTs, maps ``[B, C, H, W]`` otherwise."""
        features = self.model.forward_features(x)
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pools the output of :meth:`forward_features` into ``[B, embed_dim]``."""
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 2, 3, 1)
        return self.model.forward_head(features, pre_logits=True)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False
    ) -> list[torch.Tensor]:
        """Feature maps ``[B, C, h, w]`` after selected blocks (ViT) or stages (Swin, ResNet).

        Args:
            x: Input batch ``[B, in_chans, H, W]``.
            indices: The last ``n`` layers when an int, explicit layer indices when a list, all when ``None``.
            norm: Apply the final norm to each map (ViT families).
        """
        return self.model.forward_intermediates(
            x, indices=indices, norm=norm, output_fmt="NCHW", intermediates_only=True
        )

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """One entry (``num_chs``, ``reduction``, ``module``) per map of :meth:`forward_intermediates`."""
        return [dict(info) for info in self.model.feature_info]

    @property
    def num_layers(self) -> int:
        """How many maps :meth:`forward_intermediates` can return: ViT blocks; Swin stages; ResNet stem + stages."""
        return len(self.model.feature_info)

    def layers(self) -> list[nn.Module]:
        """The blocks (ViT) or stages (Swin, ResNet) in forward order, for adapters and layer-wise decay."""
        model = self.model
        if hasattr(model, "blocks"):
            return list(model.blocks)
        if hasattr(model, "layers"):  # timm Swin, SwinV2
            return list(model.layers)
        if hasattr(model, "stages"):  # timm SwinV2-CR
            return list(model.stages)
        return [getattr(model, f"layer{i}") for i in range(1, 5)]  # ResNet

    def transformer_blocks(self) -> list[nn.Module]:
        """All attention blocks in forward order (every Swin stage's blocks flattened); empty for CNNs."""
        if self.spec.family == "resnet":
            return []
        if hasattr(self.model, "blocks"):
            return list(self.model.blocks)
        return [block for stage in self.layers() for block in stage.blocks]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trades compute for memory during training (timm's activation checkpointing)."""
        self.model.set_grad_checkpointing(enable)


def create_backbone(
    name: str,
    in_chans: int = 3,
    img_size: int | None = None,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> Backbone:
    """Builds a registered backbone, random-initialised or from a local checkpoint.

    Args:
        name: A registered name (``domainfm info`` lists them).
        in_chans: Input channels; a checkpoint with another count is adapted (see ``channels``).
        img_size: Input size; the spec's default when ``None``. Ignored by CNNs.
        checkpoint: A local ``.safetensors``/``.pth``/``.ckpt`` file; nothing is downloaded.
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``patch_size``).
    """
    import timm

    spec = get_backbone_spec(name)
    img_size = img_size or spec.img_size
    timm_kwargs = {**spec.timm_kwargs, **kwargs, "in_chans": in_chans, "num_classes": 0, "pretrained": False}
    if img_size is not None and spec.family != "resnet":
        timm_kwargs["img_size"] = img_size
    model = timm.create_model(spec.timm_name, **timm_kwargs)
    backbone = Backbone(spec, model, in_chans, img_size if spec.family != "resnet" else None, **kwargs)
    if checkpoint is not None:
        load_backbone_state(backbone, checkpoint)
    return backbone


def load_backbone(path: str | Path, **overrides: Any) -> Backbone:
    """Rebuilds a backbone saved by ``save_backbone`` from its stored build arguments and weights."""
    meta = read_backbone_metadata(path)
    if meta is None:
        raise ValueError(
            f"{path} carries no domainfm backbone metadata; use create_backbone(name, checkpoint={str(path)!r})"
        )
    args = {**meta, **overrides}
    return create_backbone(args.pop("name"), checkpoint=path, **args)
