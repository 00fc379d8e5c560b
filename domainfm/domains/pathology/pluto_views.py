"""Views for PLUTO-style pretraining: multi-crop on the device, token masks, patch targets.

Part of :mod:`.pluto` (Juyal et al. 2024, arXiv 2405.07905). Crops are made on the device from normalised
``[B, 3, S, S]`` batches: random resized crops via ``affine_grid``/``grid_sample`` combined with a random
element of the dihedral group (90-degree rotations and flips: tissue has no orientation) and a per-channel
affine colour jitter in normalised space. The masks are applied by the backbone itself
(``Backbone.forward_features(x, mask=..., mask_token=...)``: before the position embedding, as iBOT).
With one generator per image (:func:`batch_views`, :func:`batch_token_masks`), an image's crops, jitter
and mask depend only on its own generator, not on the batch or the process it is in (data parallelism).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------- randomness


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform ``[0, 1)`` samples drawn on the generator's device, returned on ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` integers in ``[0, high)`` (via :func:`_rand`, so any generator device works)."""
    return (_rand((n,), generator, device) * high).long().clamp_(max=high - 1)


# --------------------------------------------------------------------------------------------- multi-crop


def crop_transforms(
    n: int,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Affine matrices ``[n, 2, 3]`` (``affine_grid`` convention) of random resized, rotated, flipped crops.

    Area fraction uniform in ``scale``, aspect ratio log-uniform in [3/4, 4/3] (torchvision's
    RandomResizedCrop), crop fully inside the image, then a random 90-degree rotation and horizontal flip.

    Args:
        n: Number of crops.
        scale: Range of the crop's area as a fraction of the image.
        generator: Seeds the draws.
        device: Where the matrices live.
    """
    device = torch.device(device)
    u = _rand((n, 4), generator, device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # half-extents in [-1, 1] coordinates = side fractions
    half_h = torch.sqrt(area / ratio).clamp(max=1.0)
    center_x = (2 * u[:, 2] - 1) * (1 - half_w)
    center_y = (2 * u[:, 3] - 1) * (1 - half_h)
    quarter = _randint(4, n, generator, device).float() * (math.pi / 2)
    flip = 1 - 2 * _randint(2, n, generator, device).float()
    cos, sin = torch.cos(quarter).round(), torch.sin(quarter).round()
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = half_w * cos * flip, -half_w * sin
    theta[:, 1, 0], theta[:, 1, 1] = half_h * sin * flip, half_h * cos
    theta[:, 0, 2], theta[:, 1, 2] = center_x, center_y
    return theta


def color_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x * (1 + a) + b`` per image and channel, ``a, b`` uniform in ``[-strength, strength]`` (normalised units)."""
    if strength <= 0:
        return images
    u = _rand((images.shape[0], images.shape[1], 2), generator, images.device).to(images.dtype)
    scale_shift = (2 * u - 1) * strength
    return images * (1 + scale_shift[..., 0, None, None]) + scale_shift[..., 1, None, None]


def multi_crop(
    images: torch.Tensor,
    n_views: int,
    size: int,
    scale: tuple[float, float],
    generator: torch.Generator | None = None,
    jitter: float = 0.0,
) -> torch.Tensor:
    """``n_views`` augmented crops of every image, view-major: ``[n_views * B, C, size, size]``.

    Args:
        images: Normalised batch ``[B, C, S, S]``.
        n_views: Crops per image.
        size: Output side in pixels.
        scale: Area fraction range (see :func:`crop_transforms`).
        generator: Seeds crops and jitter.
        jitter: Colour jitter strength (see :func:`color_jitter`).
    """
    batch, channels = images.shape[:2]
    source = images.repeat(n_views, 1, 1, 1)
    theta = crop_transforms(n_views * batch, scale, generator, images.device).to(images.dtype)
    grid = F.affine_grid(theta, [n_views * batch, channels, size, size], align_corners=False)
    crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return color_jitter(crops, jitter, generator)


def random_token_mask(
    n: int, tokens: int, ratio: float, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Boolean ``[n, tokens]`` masks with exactly ``round(ratio * tokens)`` (at least 1 if ratio > 0) set each."""
    device = torch.device(device)
    count = max(1, round(ratio * tokens)) if ratio > 0 else 0
    order = _rand((n, tokens), generator, device).argsort(dim=1)
    mask = torch.zeros(n, tokens, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :count], True)


# --------------------------------------------------------------------------------------------- patches


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, N, patch * patch * C]`` in row-major token order (MAE's layout)."""
    batch, channels, height, width = images.shape
    h, w = height // patch, width // patch
    x = images.reshape(batch, channels, h, patch, w, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(batch, h * w, patch * patch * channels)


# --------------------------------------------------------------------------------------------- one generator per image

Generators = torch.Generator | Sequence[torch.Generator] | None


def _crop_matrices(
    u: torch.Tensor, turns: torch.Tensor, flips: torch.Tensor, scale: tuple[float, float]
) -> torch.Tensor:
    """:func:`crop_transforms`' matrices ``[n, 2, 3]`` from its draws ``u [n, 4]``, ``turns [n]`` and ``flips [n]``."""
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1])
    half_w, half_h = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    center_x, center_y = (2 * u[:, 2] - 1) * (1 - half_w), (2 * u[:, 3] - 1) * (1 - half_h)
    quarter = (turns * 4).long().clamp_(max=3).float() * (math.pi / 2)
    flip = 1 - 2 * (flips * 2).long().clamp_(max=1).float()
    cos, sin = torch.cos(quarter).round(), torch.sin(quarter).round()
    theta = torch.zeros(len(u), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = half_w * cos * flip, -half_w * sin
    theta[:, 1, 0], theta[:, 1, 1] = half_h * sin * flip, half_h * cos
    theta[:, 0, 2], theta[:, 1, 2] = center_x, center_y
    return theta


def batch_views(
    images: torch.Tensor, n_views: int, size: int, scale: tuple[float, float], generator: Generators, jitter: float
) -> torch.Tensor:
    """:func:`multi_crop` with one generator, or with each image's crops and jitter drawn from its own generator.

    Per image, the draws are :func:`multi_crop`'s for that image alone (crop matrices, then colour jitter,
    in the same order, on the CPU); the matrices and the crops are then made for the whole batch at once,
    view-major as :func:`multi_crop` returns them.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return multi_crop(images, n_views, size, scale, generator, jitter)
    _check_generators(generator, len(images))
    batch, channels = images.shape[:2]
    draws: list[list[torch.Tensor]] = [[], [], [], []]
    for g in generator:
        draws[0].append(torch.rand(n_views, 4, generator=g))
        draws[1].append(torch.rand(n_views, generator=g))
        draws[2].append(torch.rand(n_views, generator=g))
        if jitter > 0:
            draws[3].append(torch.rand(n_views, channels, 2, generator=g))
    u, turns, flips = (torch.stack(d, 1).flatten(0, 1) for d in draws[:3])  # view-major rows
    theta = _crop_matrices(u, turns, flips, scale).to(images.device, images.dtype)
    grid = F.affine_grid(theta, [n_views * batch, channels, size, size], align_corners=False)
    source = images.repeat(n_views, 1, 1, 1)
    crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if jitter <= 0:
        return crops
    scale_shift = (2 * torch.stack(draws[3], 1).flatten(0, 1).to(crops) - 1) * jitter  # as color_jitter
    return crops * (1 + scale_shift[..., 0, None, None]) + scale_shift[..., 1, None, None]


def batch_token_masks(
    n_views: int, batch: int, tokens: int, ratio: float, generator: Generators, device: torch.device
) -> torch.Tensor:
    """:func:`random_token_mask` of ``n_views * batch`` view-major rows, per image when given a generator each."""
    if generator is None or isinstance(generator, torch.Generator):
        return random_token_mask(n_views * batch, tokens, ratio, generator, device)
    _check_generators(generator, batch)
    count = max(1, round(ratio * tokens)) if ratio > 0 else 0  # as random_token_mask, image by image
    scores = torch.stack([torch.rand(n_views, tokens, generator=g) for g in generator], 1).flatten(0, 1)
    mask = torch.zeros(n_views * batch, tokens, dtype=torch.bool)
    return mask.scatter_(1, scores.argsort(dim=1)[:, :count], True).to(device)


def _check_generators(generators: Sequence[torch.Generator], batch: int) -> None:
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for {batch} images")
