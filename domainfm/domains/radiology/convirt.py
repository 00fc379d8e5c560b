"""ConVIRT: contrastive image-text pretraining on radiographs and their report sentences.

Zhang, Jiang, Miura, Manning, Langlotz, "Contrastive Learning of Medical Visual Representations from
Paired Images and Text", MLHC 2022 (arXiv 2010.00747). The official repository holds no training code, so
this is written from the paper and ``shared/methods/convirt.md``:

* image tower: any backbone of the shared registry (ResNet-50 in the paper), pooled features h_v;
* text tower: :class:`.text.TextTower` (BERT, lower layers frozen, max pooling), features h_u;
* projection heads g_v, g_u: Linear -> ReLU -> Linear into 512 dimensions, then L2 normalisation;
* loss: bidirectional InfoNCE with temperature tau = 0.1 and weight lambda = 0.75 on the image->text
  direction: ``L = lambda * CE(S, I) + (1 - lambda) * CE(S^T, I)`` with ``S = v u^T / tau``.

Under data parallelism the loss is the global batch's: :func:`convirt_loss` gathers the embeddings of every
process with their gradients (:func:`~domainfm.shared.engine.distributed.gather_with_grad`), so each pair's
negatives are all other pairs of the step, as in the paper's single-GPU batch, and a DDP step over N
processes gives the gradient of one process on the whole batch.

:func:`augment_images` is the paper's image augmentation, done on the device in one resampling per image:
random crop (side ratio 0.6-1), horizontal flip, affine (rotation +-20 deg, translation 0.1, scale
0.95-1.05), brightness and contrast in [0.6, 1.4], Gaussian blur (sigma 0.1-3 px at 224 px, scaled with
the image size). Given one generator per image, each image's draws come from its own generator only
(:func:`~domainfm.shared.engine.distributed.tile_generators`), whatever the batch around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from domainfm.domains.radiology.text import TextTower
from domainfm.shared.engine.distributed import gather_with_grad, tile_uniforms


class ProjectionHead(nn.Sequential):
    """Linear -> ReLU -> Linear (ConVIRT's g_v and g_u)."""

    def __init__(self, in_features: int, hidden: int = 512, out_features: int = 512) -> None:
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


def convirt_loss(v: torch.Tensor, u: torch.Tensor, tau: float = 0.1, lam: float = 0.75) -> torch.Tensor:
    """Bidirectional InfoNCE of L2-normalised image (``v``) and text (``u``) embeddings, pairs on the diagonal.

    Under ``torch.distributed`` the pairs of every process are gathered first (with gradient), so every
    process computes the loss of the global batch (see the module docstring).
    """
    v, u = gather_with_grad(v), gather_with_grad(u)
    logits = v @ u.T / tau
    target = torch.arange(len(v), device=v.device)
    image_to_text = nn.functional.cross_entropy(logits, target)
    text_to_image = nn.functional.cross_entropy(logits.T, target)
    return lam * image_to_text + (1 - lam) * text_to_image


class ConVIRT(nn.Module):
    """Image and text towers with projection heads into one normalised space.

    Args:
        image_tower: A shared :class:`~domainfm.shared.backbones.Backbone` (pooled features, ``embed_dim``).
        text_tower: A :class:`TextTower`.
        projection_dim: Output dimension of both heads (512 in the paper).
    """

    def __init__(self, image_tower: nn.Module, text_tower: TextTower, projection_dim: int = 512) -> None:
        super().__init__()
        self.image_tower, self.text_tower = image_tower, text_tower
        self.image_head = ProjectionHead(image_tower.embed_dim, projection_dim, projection_dim)
        self.text_head = ProjectionHead(text_tower.embed_dim, projection_dim, projection_dim)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised projected image embeddings (for retrieval)."""
        return nn.functional.normalize(self.image_head(self.image_tower(images)), dim=-1)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised projected sentence embeddings."""
        return nn.functional.normalize(self.text_head(self.text_tower(input_ids, attention_mask)), dim=-1)

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, u)``: normalised image and text embeddings of the pairs."""
        return self.embed_images(images), self.embed_text(input_ids, attention_mask)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (separable, reflect padding) with standard deviations ``sigma`` ``[B]``."""
    radius = math.ceil(3 * float(sigma.max()))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # [B, K]
    b, c, h, w = images.shape
    x = images.reshape(1, b * c, h, w)
    weight = kernels.repeat_interleave(c, 0)
    x = nn.functional.conv2d(
        nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=b * c
    )
    x = nn.functional.conv2d(
        nn.functional.pad(x, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=b * c
    )
    return x.reshape(b, c, h, w)


_DRAWS = 11  # uniform draws per image made by augment_images


def _uniform_source(
    b: int, generator: torch.Generator | Sequence[torch.Generator] | None
) -> Callable[[], torch.Tensor]:
    """Successive ``[b]`` uniform draws: from one generator, or column by column of one row per image."""
    if generator is None or isinstance(generator, torch.Generator):
        return lambda: torch.rand(b, generator=generator)
    if len(generator) != b:
        raise ValueError(f"{len(generator)} generators for {b} images")
    columns = iter(tile_uniforms(generator, _DRAWS).T)
    return lambda: next(columns)


def augment_images(
    images: torch.Tensor,
    hflip: float = 0.5,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """ConVIRT's augmentation of images in [0, 1] ``[B, C, H, W]`` (see the module docstring); black fills.

    Args:
        images: Images in [0, 1].
        hflip: Horizontal-flip probability.
        generator: Seeds the draws: one generator for the batch, or one per image.
        strength: Scales every range (1: the paper's; 0: only the flip), for short runs on small data.
    """
    b, device = len(images), images.device
    draw = _uniform_source(b, generator)

    def uniform(low: float, high: float) -> torch.Tensor:
        return (draw() * (high - low) + low).to(device)

    crop, scale = uniform(1 - 0.4 * strength, 1.0), uniform(1 - 0.05 * strength, 1 + 0.05 * strength)
    angle = uniform(-20 * strength, 20 * strength) * math.pi / 180
    flip = torch.where(uniform(0, 1) < hflip, -1.0, 1.0)
    # where the crop sits inside the image, plus the affine translation (0.1 of the side = 0.2 in [-1, 1])
    shift_x, shift_y = (uniform(-1, 1) * (1 - crop) + uniform(-0.2 * strength, 0.2 * strength) for _ in range(2))
    zoom, cos, sin = crop / scale, torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([zoom * cos * flip, -zoom * sin, shift_x], 1),
            torch.stack([zoom * sin * flip, zoom * cos, shift_y], 1),
        ],
        1,
    ).to(images.dtype)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    out = nn.functional.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    jitter = 0.4 * strength
    brightness = uniform(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
    contrast = uniform(1 - jitter, 1 + jitter).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (((out - mean) * contrast + mean) * brightness).clamp(0, 1)
    if strength == 0:
        return out
    scale_to_paper = images.shape[-1] / 224  # the paper's blur range is in pixels of 224 px images
    sigma = uniform(0.1, 3.0 * strength) * scale_to_paper
    return _gaussian_blur(out, sigma.clamp_min(0.05).to(images.dtype))
