"""SimMIM masked-image modelling on a shared SwinV2 backbone, as SatVision-TOA pretrains it.

Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022 (arXiv 2111.09886), in the
SatVision-TOA setting (arXiv 2411.17000; ``shared/methods/satvision.md`` section 3):

* :class:`MaskGenerator`: the image is cut into ``mask_patch`` x ``mask_patch`` cells, ``ceil(ratio x
  cells)`` of them are masked, and the cell mask is repeated onto the backbone's patch-token grid
  (SatVision: 128 px, mask patch 8, ratio 0.6, model patch 4);
* the encoder sees every token; masked patch embeddings are replaced by a learnable ``mask_token``
  (``Backbone.forward_features(x, mask=..., mask_token=...)``, before the first stage);
* head: 1 x 1 convolution to ``stride^2 x channels`` and PixelShuffle(stride) back to the input size;
* loss: L1 on masked pixels that are also valid (fill values never enter the loss), averaged over them;
  under data parallelism the average is over the masked valid pixels of the global batch (the count is
  summed over the processes, :func:`~domainfm.shared.engine.distributed.global_masked_mean`), not a mean
  of per-process means, since the number of valid pixels differs from chip to chip.

Works on both timm SwinV2 families (``swinv2_*``, the SatVision-TOA giant's: NHWC tokens; ``swinv2_cr_*``: NCHW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from domainfm.shared.engine.distributed import global_masked_mean


class MaskGenerator:
    """Random cell masks on the token grid.

    Args:
        input_size: Image side in pixels.
        mask_patch: Side of a masked cell in pixels.
        model_patch: The backbone's patch size in pixels.
        ratio: Fraction of cells masked.
    """

    def __init__(self, input_size: int = 128, mask_patch: int = 8, model_patch: int = 4, ratio: float = 0.6) -> None:
        if input_size % mask_patch or mask_patch % model_patch:
            raise ValueError(f"input {input_size} must divide by mask patch {mask_patch}, and it by {model_patch}")
        self.cells = input_size // mask_patch
        self.repeat = mask_patch // model_patch
        self.masked = math.ceil(ratio * self.cells**2)

    def __call__(
        self, batch: int, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """``[batch, tokens, tokens]`` float mask (1 = masked).

        Args:
            batch: Masks to draw.
            generator: One generator for the batch, or one per mask (a mask then depends on its own only).
        """
        if generator is None or isinstance(generator, torch.Generator):
            scores = torch.rand(batch, self.cells**2, generator=generator)
        elif len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} masks")
        else:
            scores = torch.stack([torch.rand(self.cells**2, generator=g) for g in generator])
        order = scores.argsort(dim=1)
        mask = torch.zeros(batch, self.cells**2)
        mask.scatter_(1, order[:, : self.masked], 1.0)
        mask = mask.view(batch, self.cells, self.cells)
        return mask.repeat_interleave(self.repeat, 1).repeat_interleave(self.repeat, 2)


def _nhwc(model: nn.Module) -> bool:
    """Whether the model keeps tokens NHWC (timm ``swinv2_*``, with ``layers``) or NCHW (``swinv2_cr_*``)."""
    return hasattr(model, "layers")


def encode(
    backbone: nn.Module, images: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
) -> torch.Tensor:
    """Last-stage features ``[B, C, h, w]``: ``backbone.forward_features`` with a mask (any dtype, 1 = masked)."""
    return backbone.forward_features(images, mask=None if mask is None else mask.bool(), mask_token=mask_token)


def token_grid(backbone: nn.Module, image_size: int) -> int:
    """Side of the patch-token grid for ``image_size`` inputs."""
    with torch.no_grad():
        tokens = backbone.model.patch_embed(torch.zeros(1, backbone.in_chans, image_size, image_size))
    return int(tokens.shape[1] if _nhwc(backbone.model) else tokens.shape[-1])


class SimMIM(nn.Module):
    """A SwinV2 backbone with a mask token and SimMIM's reconstruction head.

    Args:
        backbone: A shared SwinV2 :class:`~domainfm.shared.backbones.Backbone` with the data's channels.
        image_size: Input side (the head's stride is measured from it).
    """

    def __init__(self, backbone: nn.Module, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_token = nn.Parameter(torch.zeros(backbone.patch_embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            probe = encode(backbone, torch.zeros(1, backbone.in_chans, image_size, image_size))
        self.stride = image_size // probe.shape[-1]
        self.head = nn.Sequential(
            nn.Conv2d(probe.shape[1], self.stride**2 * backbone.in_chans, 1), nn.PixelShuffle(self.stride)
        )
        self.patch_size = image_size // token_grid(backbone, image_size)

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``[B, C, H, W]`` of images whose masked cells were hidden."""
        return self.head(encode(self.backbone, images, mask, self.mask_token))

    def forward(self, images: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """SimMIM's L1 loss on masked (and valid) pixels, averaged over those of the global batch."""
        pixel_mask = mask.repeat_interleave(self.patch_size, 1).repeat_interleave(self.patch_size, 2).unsqueeze(1)
        weight = pixel_mask.expand_as(images)
        if valid is not None:
            weight = weight * valid.to(images.dtype)
        error = (self.reconstruct(images, mask) - images).abs()
        return global_masked_mean((error * weight).sum(), weight.sum(), eps=1e-5)
