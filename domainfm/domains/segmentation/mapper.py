"""The GMS latent mapping network: image latent -> mask latent, with deep supervision.

Huo et al., "Generative Medical Segmentation", AAAI 2025 (arXiv 2403.18198), section "Latent mapping
model"; the shape follows the description in ``shared/methods/gms.md`` section 4 (the authors' code has no
licence, so this is written from the description). A UNet of residual + self-attention blocks **without
any down-sampling**: every block runs at the latent's resolution (28 x 28 for 224 px inputs), encoder widths
``base x (1, 2, 4, 4)``, decoder blocks fed by concatenated skips, and a GroupNorm -> SiLU -> 3x3 conv head
after each decoder stage (``level3, level2, level1, out``; GMS's loss uses the last three). At the paper's
size (base 32, 4 latent channels) it has 1,565,440 parameters; the reference count 1,564,976 differs by 464,
less than the unused ``level3`` head (4,868), see ``docs/segmentation.md``.
"""

from __future__ import annotations

import torch
from torch import nn

SUPERVISED_LEVELS = ("level2", "level1", "out")


class ResidualBlock(nn.Module):
    """(GroupNorm -> PReLU -> 3x3 conv) twice, plus a 1x1 projection of the input when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, in_channels),
            nn.PReLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.PReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output at ``out_channels``."""
        return self.skip(x) + self.body(x)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all positions (1x1 q/k/v/proj convolutions), residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus attention over its ``H x W`` positions."""
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (layer(normed).flatten(2).transpose(1, 2) for layer in (self.q, self.k, self.v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(1, 2).reshape(b, c, h, w))


class MappingBlock(nn.Sequential):
    """Residual block, then self-attention."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__(ResidualBlock(in_channels, out_channels, groups), SpatialSelfAttention(out_channels, groups))


class LatentMapper(nn.Module):
    """Maps an image latent to mask latents at four decoder depths (a dict: ``level3 .. out``).

    Args:
        channels: Latent channels in and out (4 for SD-layout VAEs).
        base: Width of the first stage.
        multipliers: Width multipliers of the encoder stages.
        groups: GroupNorm groups (must divide every width).
    """

    def __init__(
        self, channels: int = 4, base: int = 32, multipliers: tuple[int, ...] = (1, 2, 4, 4), groups: int = 16
    ) -> None:
        super().__init__()
        widths = [base * m for m in multipliers]
        self.stem = nn.Conv2d(channels, base, 3, padding=1)
        skips, width = [base], base
        self.encoder = nn.ModuleList()
        for out in widths:
            self.encoder.append(MappingBlock(width, out, groups))
            skips.append(out)
            width = out
        skips.pop()  # the last encoder output is the decoder's input, not a skip
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleDict()
        names = [f"level{i}" for i in range(len(widths) - 1, 0, -1)] + ["out"]
        for name, out in zip(names, [widths[-2], *reversed(widths[:-2]), base], strict=True):
            self.decoder.append(MappingBlock(width + skips.pop(), out, groups))
            self.heads[name] = nn.Sequential(
                nn.GroupNorm(groups, out), nn.SiLU(), nn.Conv2d(out, channels, 3, padding=1)
            )
            width = out
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mask-latent predictions ``{level3, level2, level1, out}``, each shaped like ``latent``."""
        h = self.stem(latent)
        skips = [h]
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        skips.pop()
        outputs = {}
        for block, (name, head) in zip(self.decoder, self.heads.items(), strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1))
            outputs[name] = head(h)
        return outputs
