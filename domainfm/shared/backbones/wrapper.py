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
        pooling: ``model`` (the architecture's own: class token or average) or ``cls_mean`` (class token
            concatenated with the mean patch token, registers excluded: Virchow's published embedding;
            ``embed_dim`` is then twice the token width).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        in_chans: int,
        img_size: int | None,
        pooling: str = "model",
        **kwargs: Any,
    ):
        super().__init__()
        self.spec = spec
        self.model = model
        self.in_chans = in_chans
        self.img_size = img_size
        self.feature_format = spec.feature_format
        if pooling not in ("model", "cls_mean"):
            raise ValueError(f"pooling {pooling!r} is not 'model' or 'cls_mean'")
        if pooling == "cls_mean" and self.feature_format != "tokens":
            raise ValueError(f"pooling 'cls_mean' needs a token backbone (ViT), not {spec.family}")
        self.pooling = pooling
        self.embed_dim: int = int(model.num_features) * (2 if pooling == "cls_mean" else 1)
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
        pooling = {} if self.pooling == "model" else {"pooling": self.pooling}
        return {
            "name": self.name,
            "in_chans": self.in_chans,
            "img_size": self.img_size,
            **pooling,
            **self._extra_kwargs,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding ``[B, embed_dim]`` (class token or average pool, as the architecture pools)."""
        if self.pooling == "cls_mean":
            return self.forward_head(self.model.forward_features(x))
        return self.model(x)

    @property
    def patch_embed_dim(self) -> int:
        """Width of the patch embeddings, and of the ``mask_token`` that :meth:`forward_features` takes.

        ``embed_dim`` for ViTs; the first stage's width for Swin (its ``embed_dim`` is the last stage's).
        """
        self._require_patch_embed()
        return int(self.model.patch_embed.proj.out_channels)

    def forward_features(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unpooled features: tokens ``[B, prefix + N, D]`` for ViTs, maps ``[B, C, H, W]`` otherwise.

        With ``mask``, masked patch embeddings are replaced by ``mask_token`` right after the patch
        embedding (DINOv2's ``prepare_tokens_with_masks``, SimMIM, iBOT): for ViTs before the position
        embedding and the class/register tokens, for Swin before the first stage. Everything after it
        (position embedding, PEFT hooks and prompts, blocks, final norm) runs as without a mask.

        Args:
            x: Input batch ``[B, in_chans, H, W]``.
            mask: Boolean ``[B, N]`` or ``[B, h, w]`` over the patch grid (row-major; True = masked);
                ``None`` is exactly timm's ``forward_features``. Not defined for CNNs (ResNet).
            mask_token: ``[patch_embed_dim]`` embedding written at masked positions; required with
                ``mask``. Not rounded to the embeddings' dtype: under bf16 autocast an fp32 token keeps the
                masked embeddings fp32 (as the position embedding makes them in a ViT anyway).
        """
        features = self.model.forward_features(x) if mask is None else self._masked_features(x, mask, mask_token)
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)
        return features

    def _require_patch_embed(self) -> None:
        if not hasattr(self.model, "patch_embed"):
            raise ValueError(
                f"{self.name} ({self.spec.family}) has no patch embedding: masking patch positions is "
                "defined for ViT, FlexiViT, Swin and SwinV2 backbones only"
            )

    def _masked_features(self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None) -> torch.Tensor:
        """The model's own ``forward_features`` (before the NHWC permute), masked patch embeddings replaced."""
        self._require_patch_embed()
        if mask_token is None:
            raise ValueError("forward_features got a mask but no mask_token to write at the masked positions")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = masked), got {mask.dtype}")
        model = self.model
        x = model.patch_embed(x)  # ViT: [B, h, w, D] (dynamic size) or [B, N, D]; Swin: NHWC; SwinV2-CR: NCHW
        channels_last = not hasattr(model, "stages")  # only SwinV2-CR embeds patches NCHW
        grid = x.shape[1:-1] if channels_last else x.shape[2:]
        if mask.shape[0] != x.shape[0] or mask.numel() != x.shape[0] * grid.numel():
            raise ValueError(f"mask {tuple(mask.shape)} does not fit {x.shape[0]} images of {tuple(grid)} patches")
        if mask_token.shape != (self.patch_embed_dim,):
            raise ValueError(f"mask_token must be [{self.patch_embed_dim}], got {tuple(mask_token.shape)}")
        if channels_last:
            where, token = mask.reshape(*x.shape[:-1], 1), mask_token
        else:
            where, token = mask.reshape(x.shape[0], 1, *grid), mask_token.view(-1, 1, 1)
        x = torch.where(where, token, x)  # the wider dtype: under autocast an fp32 token is not rounded to bf16
        if self.feature_format == "tokens":  # timm VisionTransformer.forward_features from here on
            x = model.norm_pre(model.patch_drop(model._pos_embed(x)))
            if model.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models import checkpoint_seq

                x = checkpoint_seq(model.blocks, x)
            else:
                x = model.blocks(x)
            return model.norm(x)
        if hasattr(model, "stages"):  # timm SwinTransformerV2Cr: NCHW stages, no final norm
            return model.stages(x)
        return model.norm(model.layers(x))  # timm Swin / SwinV2: NHWC layers (checkpointing inside)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pools the output of :meth:`forward_features` into ``[B, embed_dim]``."""
        if self.pooling == "cls_mean":
            return torch.cat([features[:, 0], features[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)
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
        **kwargs: Passed to ``timm.create_model`` (e.g. ``drop_path_rate``, ``patch_size``), except
            ``pooling`` (see :class:`Backbone`) and, on timm's plain SwinV2 (``swinv2_*``),
            ``extra_norm_period``: an extra LayerNorm after every N-th block of each stage
            (:mod:`~domainfm.shared.backbones.periodic_norm`; ``swinv2_cr_*`` builds its own).
    """
    import timm

    spec = get_backbone_spec(name)
    img_size = img_size or spec.img_size
    pooling = kwargs.pop("pooling", "model")
    timm_kwargs = {**spec.timm_kwargs, **kwargs, "in_chans": in_chans, "num_classes": 0, "pretrained": False}
    if img_size is not None and spec.family != "resnet":
        timm_kwargs["img_size"] = img_size
    periodic = _periodic_norm_period(spec, timm_kwargs)
    model = timm.create_model(spec.timm_name, **timm_kwargs)
    if periodic:
        from domainfm.shared.backbones.periodic_norm import add_periodic_norms

        add_periodic_norms(model, periodic)
    image_size = img_size if spec.family != "resnet" else None
    backbone = Backbone(spec, model, in_chans, image_size, pooling=pooling, **kwargs)
    if checkpoint is not None:
        load_backbone_state(backbone, checkpoint)
    return backbone


def _periodic_norm_period(spec: BackboneSpec, timm_kwargs: dict[str, Any]) -> int:
    """Pops ``extra_norm_period`` where domainfm adds the norms (timm's plain SwinV2), else leaves it to timm."""
    if spec.timm_name.startswith("swinv2_cr"):
        return 0  # timm's SwinV2-CR takes extra_norm_period itself
    period = timm_kwargs.pop("extra_norm_period", None)
    if not period:
        return 0
    if not spec.timm_name.startswith("swinv2_"):
        raise ValueError(f"extra_norm_period applies to SwinV2 backbones; {spec.name} is {spec.timm_name}")
    return int(period)


def load_backbone(path: str | Path, **overrides: Any) -> Backbone:
    """Rebuilds a backbone saved by ``save_backbone`` from its stored build arguments and weights."""
    meta = read_backbone_metadata(path)
    if meta is None:
        raise ValueError(
            f"{path} carries no domainfm backbone metadata; use create_backbone(name, checkpoint={str(path)!r})"
        )
    args = {**meta, **overrides}
    return create_backbone(args.pop("name"), checkpoint=path, **args)
