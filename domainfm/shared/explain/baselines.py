"""Reference inputs ("baselines") for path and perturbation methods, in the network's raw input space.

Attributions explain ``f(x) - f(baseline)``, so the baseline says what "absence of signal" means. Zeros in
the raw space are often out of distribution (a black H&E tile, a chip of invalid pixels), so the default is
the **training mean**:

* ``mean`` (default): the per-channel mean of the normalisation the network applies to its raw input
  (the :class:`~domainfm.shared.model.TransformModule` every deployed network runs first: a tile store's
  or an encoder's statistics, a radiograph store's grey mean, a chip store's band means, GMS's mid-grey). It
  is the input that standardises to zero, i.e. a flat image of the average colour. Satellite chips
  without an input transform have mean 0 (invalid/zero reflectance), so ``mean`` equals ``zeros`` there.
* ``zeros``: raw zeros (black pictures, zero band values).
* ``blur``: the input blurred by a Gaussian of ``sigma = blur_sigma * max(H, W)`` (default 0.1):
  removes detail but keeps colour and layout (a harder, more local reference).

Gradient SHAP draws its reference set around the chosen baseline: ``n`` copies plus Gaussian noise of
``noise`` times each channel's training standard deviation (the input's own when no normalisation is
found), seeded, so repeated runs give the same map.
"""

from __future__ import annotations

import torch
from torch import nn

from domainfm.shared.explain.targets import ExplainError
from domainfm.shared.model import TransformModule

BASELINES = ("mean", "zeros", "blur")


def input_statistics(network: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel ``(mean, std)`` ``[C]`` in raw input units from the network's input transform."""
    for module in network.modules():
        if isinstance(module, TransformModule):
            scale = module.record.scale
            mean = module.mean.reshape(-1).double() / scale
            std = module.std.reshape(-1).double() / abs(scale)
            return mean.expand(channels).float().cpu(), std.expand(channels).float().cpu()
    return None


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` ``[B, C, H, W]`` blurred by a separable Gaussian (edges replicated)."""
    radius = max(1, min(int(3 * sigma + 0.5), max(image.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    kernel = kernel / kernel.sum()
    channels = image.shape[1]
    out = nn.functional.pad(image, (radius, radius, radius, radius), mode="replicate")
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def make_baseline(network: nn.Module, image: torch.Tensor, kind: str = "mean", blur_sigma: float = 0.1) -> torch.Tensor:
    """The baseline of ``kind`` for ``image`` ``[B, C, H, W]`` (same shape, dtype and device).

    Raises:
        ExplainError: An unknown kind (the message lists :data:`BASELINES`).
    """
    if kind == "zeros":
        return torch.zeros_like(image)
    if kind == "blur":
        return gaussian_blur(image, blur_sigma * max(image.shape[-2:]))
    if kind == "mean":
        stats = input_statistics(network, image.shape[1])
        if stats is None:
            return torch.zeros_like(image)
        return stats[0].to(image).view(1, -1, 1, 1).expand_as(image).clone()
    raise ExplainError(f"unknown baseline {kind!r}; choose from {', '.join(BASELINES)}")


def shap_baselines(
    network: nn.Module, image: torch.Tensor, baseline: torch.Tensor, n: int = 16, noise: float = 0.25, seed: int = 0
) -> torch.Tensor:
    """``[n, C, H, W]`` references for gradient SHAP: ``baseline`` plus seeded per-channel Gaussian noise."""
    stats = input_statistics(network, image.shape[1])
    std = stats[1] if stats is not None else image.detach().float().cpu().std(dim=(0, 2, 3))
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn((n, *image.shape[1:]), generator=generator, dtype=torch.float64)
    draws = draws * (noise * std.double()).view(1, -1, 1, 1)
    return baseline[:1].expand(n, *image.shape[1:]) + draws.to(baseline)
