"""PLUTO-style self-supervised pretraining: DINO + iBOT masked tokens + MAE pixels + a Fourier term.

Juyal et al., "PLUTO: Pathology-Universal Transformer", 2024 (arXiv 2405.07905) sums four objectives on a
FlexiViT-S student/teacher pair (``shared/methods/pluto.md`` section 1). This module implements them on the
shared timm ViT :class:`~domainfm.shared.backbones.Backbone`:

* **DINO** (Caron et al., arXiv 2104.14294): an EMA teacher sees the 2 global crops; its centred, sharpened
  softmax over ``out_dim`` prototypes is the target of the student's softmax on every other crop (2 global +
  ``n_local`` local crops, same-view pairs skipped). Heads: 3-layer MLP, L2-normalised bottleneck, prototype
  layer with unit-norm rows (DINO's ``norm_last_layer``).
* **iBOT** (Zhou et al., arXiv 2111.07832): ``mask_ratio`` of the patch tokens of the student's global views
  are replaced by a learned mask token before the position embedding; the student's output at a masked
  position must match the teacher's output at that position of the same, unmasked view. The CLS and patch
  tokens share one projection head by default (iBOT's ``shared_head``; set ``shared_head=False`` for
  DINOv2-style separate heads). The patch centre is updated from the teacher's outputs at the masked
  positions only (an unbiased estimate of iBOT's all-token mean under uniform random masking, at a
  ``mask_ratio`` fraction of the teacher head's cost). Both centres warm-start at the first training batch's
  mean instead of DINO's zero (see :func:`teacher_probabilities`).
* **MAE** (He et al., arXiv 2111.06377): a shallow decoder (``decoder_depth`` timm ``Block`` of width
  ``decoder_dim``, or one linear layer when 0) maps the student's tokens of the global views to patch pixels;
  mean squared error on masked patches against per-patch normalised pixels (MAE's ``norm_pix_loss``). The mask
  tokens enter at the encoder input with their position embedding (as in iBOT/SimMIM), so the decoder needs
  no position embedding of its own.
* **Fourier** (not specified by the PLUTO paper; our definition): the L1 distance between the
  ``log(1 + |FFT2|)`` amplitude spectra of the reconstructed and the true (normalised) masked patches, per
  channel. ``fourier_weight=0`` disables it and skips its computation.

Crops and token masks are in :mod:`.pluto_views` (made on the device: random resized crops, dihedral
flips/rotations, per-channel colour jitter; re-exported here); the masked token forward is the backbone's
``forward_features(x, mask=..., mask_token=...)``.

Under data parallelism every term is a mean over equal per-process parts (same crops and masked-token
count per image), so DDP's gradient average is the global batch's; the two teacher centres use the batch
mean all-reduced over the processes (DINO's ``update_center``). Given one generator per image
(:func:`~domainfm.shared.engine.distributed.tile_generators`), an image's crops and masks do not depend on
the process or the batch it is in.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from domainfm.domains.pathology.pluto_views import (
    Generators,
    batch_token_masks,
    batch_views,
    crop_transforms,
    multi_crop,
    patchify,
    random_token_mask,
)
from domainfm.shared.backbones.wrapper import Backbone
from domainfm.shared.engine.distributed import all_reduce_mean

__all__ = [
    "Pluto",
    "PlutoConfig",
    "crop_transforms",
    "multi_crop",
    "patchify",
    "random_token_mask",
    "teacher_momentum",
]


@dataclass
class PlutoConfig:
    """Hyper-parameters of the PLUTO-style objective (defaults: ViT-S at 224 px; tiny configs in comments).

    Attributes:
        out_dim: DINO/iBOT prototypes (tiny: 256).
        head_hidden: Hidden width of the projection MLP (tiny: 128).
        head_bottleneck: Bottleneck width before the prototypes (tiny: 64).
        teacher_temp: Teacher softmax temperature.
        student_temp: Student softmax temperature.
        center_momentum: EMA momentum of the teacher-output centres.
        global_size: Global crop side in pixels (tiny: the tile size); a multiple of the patch size.
        local_size: Local crop side in pixels (tiny: 32); a multiple of the patch size.
        n_local: Local crops per image (tiny: 2; 0 = global crops only).
        global_scale: Area fraction range of global crops.
        local_scale: Area fraction range of local crops.
        mask_ratio: Fraction of patch tokens masked in the student's global views.
        dino_weight: Weight of the CLS distillation loss.
        ibot_weight: Weight of the masked patch-token distillation loss.
        mae_weight: Weight of the masked-patch pixel reconstruction loss.
        fourier_weight: Weight of the Fourier amplitude loss (0 disables).
        decoder_depth: Transformer blocks in the MAE decoder (0 = one linear layer).
        decoder_dim: Width of the MAE decoder.
        shared_head: One projection head for CLS and patch tokens (iBOT default) or two.
        color_jitter: Per-channel scale/shift amplitude in normalised units (0 disables).
    """

    out_dim: int = 4096
    head_hidden: int = 2048
    head_bottleneck: int = 256
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    global_size: int = 224
    local_size: int = 96
    n_local: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    mask_ratio: float = 0.4
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    mae_weight: float = 1.0
    fourier_weight: float = 0.1
    decoder_depth: int = 1
    decoder_dim: int = 128
    shared_head: bool = True
    color_jitter: float = 0.1


# --------------------------------------------------------------------------------------------- modules


class DinoHead(nn.Module):
    """DINO projection head: 3-layer MLP, L2-normalised bottleneck, unit-norm prototypes (no bias).

    Args:
        in_dim: Backbone width.
        out_dim: Number of prototypes.
        hidden: MLP hidden width.
        bottleneck: Bottleneck width.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype logits ``[..., out_dim]`` in ``[-1, 1]`` (cosine similarities)."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(z, F.normalize(self.prototypes, dim=-1, eps=1e-6))


class PixelDecoder(nn.Module):
    """MAE's shallow decoder: linear in, ``depth`` transformer blocks, norm, linear to patch pixels.

    ``depth=0`` is a single linear layer from the encoder width to the pixels.

    Args:
        in_dim: Encoder width.
        pixels: Output values per patch (``patch * patch * channels``).
        dim: Decoder width.
        depth: Transformer blocks.
    """

    def __init__(self, in_dim: int, pixels: int, dim: int, depth: int) -> None:
        super().__init__()
        if depth == 0:
            self.embed, self.blocks, self.norm = nn.Identity(), nn.Sequential(), nn.Identity()
            self.pred = nn.Linear(in_dim, pixels)
            return
        from timm.models.vision_transformer import Block

        heads = dim // 32 if dim % 32 == 0 else 1
        self.embed = nn.Linear(in_dim, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, pixels)

    def forward(self, tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
        """Pixels ``[B, N, pixels]`` of the patch tokens (prefix tokens take part in attention only)."""
        x = self.norm(self.blocks(self.embed(tokens)))
        return self.pred(x[:, num_prefix:])


# --------------------------------------------------------------------------------------------- losses


def dino_loss(student: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Mean cross-entropy over (teacher view, student view) pairs, same-view pairs skipped.

    Args:
        student: Student logits ``[V, B, K]`` (the first ``G`` views are the global ones).
        teacher_probs: Teacher probabilities ``[G, B, K]`` of the global views.
        student_temp: Student temperature.
    """
    log_p = F.log_softmax(student.float() / student_temp, dim=-1)
    ce = -torch.einsum("gbk,vbk->gv", teacher_probs.float(), log_p) / student.shape[1]
    n_global, n_views = ce.shape
    same = torch.eye(n_global, n_views, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(same, 0.0).sum() / (n_global * n_views - n_global)


def ibot_loss(student: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Mean cross-entropy between teacher probabilities and student logits ``[M, K]`` of masked tokens."""
    log_p = F.log_softmax(student.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_p).sum(-1).mean()


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of ``[..., pixels]`` (MAE's ``norm_pix_loss`` target)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches ``[M, pixels]``."""
    return (pred.float() - target.float()).pow(2).mean()


def fourier_amplitude(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """``log(1 + |FFT2|)`` per channel of flattened patches ``[M, patch * patch * channels]``."""
    x = patches.float().reshape(-1, patch, patch, channels).permute(0, 3, 1, 2)
    return torch.log1p(torch.fft.fft2(x, norm="ortho").abs())


def fourier_loss(pred: torch.Tensor, target: torch.Tensor, patch: int, channels: int = 3) -> torch.Tensor:
    """L1 distance between the log-amplitude spectra of reconstructed and true patches (our definition).

    Args:
        pred: Reconstructed patches ``[M, patch * patch * channels]``.
        target: True (normalised) patches, same shape.
        patch: Patch side in pixels.
        channels: Image channels.
    """
    return (fourier_amplitude(pred, patch, channels) - fourier_amplitude(target, patch, channels)).abs().mean()


@torch.no_grad()
def _batch_mean(outputs: torch.Tensor) -> torch.Tensor:
    """Mean ``[1, K]`` of the teacher outputs, all-reduced across processes when distributed.

    The mean of the per-process means is the global batch mean because every process holds as many rows.
    """
    return all_reduce_mean(outputs.float().mean(dim=0, keepdim=True))


@torch.no_grad()
def teacher_probabilities(
    outputs: torch.Tensor,
    center: torch.Tensor,
    ready: torch.Tensor,
    temperature: float,
    momentum: float | None,
) -> torch.Tensor:
    """Centred, sharpened teacher softmax; updates ``center`` in place unless ``momentum`` is ``None``.

    The centre used is the running one (DINO) once ``ready``; before the first update it is the batch mean
    (our warm start: DINO starts from zero, which makes the first steps' targets the uncentred, nearly
    identical outputs of a random network and the loss rise towards ``log K`` as the centre catches up).

    Args:
        outputs: Teacher logits ``[N, K]``.
        center: Running centre ``[1, K]`` (updated in place).
        ready: 0-dim bool buffer, set once the centre holds data.
        temperature: Teacher temperature.
        momentum: Centre EMA momentum; ``None`` leaves ``center`` and ``ready`` untouched (evaluation).
    """
    outputs = outputs.float()
    batch_mean = _batch_mean(outputs) if momentum is not None else outputs.mean(dim=0, keepdim=True)
    used = torch.where(ready, center, batch_mean)
    if momentum is not None:
        center.copy_(torch.where(ready, momentum * center + (1 - momentum) * batch_mean, batch_mean))
        ready.fill_(True)
    return F.softmax((outputs - used) / temperature, dim=-1)


def teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """DINO's cosine teacher-momentum schedule: ``base`` at step 0 rising to 1 at ``total_steps``."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


# --------------------------------------------------------------------------------------------- model


class Pluto(nn.Module):
    """Student/teacher ViTs with DINO heads, a mask token and an MAE decoder, trained by :meth:`forward`.

    The teacher (backbone and heads) is a frozen deep copy updated only by :meth:`update_teacher`; it stays
    in eval mode (no stochastic depth). Optimise ``[p for p in model.parameters() if p.requires_grad]``.

    Args:
        backbone: A ViT-family :class:`Backbone` built with ``dynamic_img_size=True``; becomes the student.
        config: Objective hyper-parameters.
    """

    def __init__(self, backbone: Backbone, config: PlutoConfig) -> None:
        super().__init__()
        if backbone.feature_format != "tokens":
            raise ValueError(f"PLUTO needs a ViT-family backbone, got {backbone.name} ({backbone.feature_format})")
        self.config = config
        self.patch_size = int(backbone.model.patch_embed.patch_size[0])
        for name in ("global_size", "local_size"):
            if getattr(config, name) % self.patch_size:
                raise ValueError(f"{name}={getattr(config, name)} is not a multiple of patch {self.patch_size}")
        self.backbone = backbone
        self.head = self._make_head(backbone.embed_dim)
        self.patch_head = None if config.shared_head else self._make_head(backbone.embed_dim)
        self.teacher = self._frozen_copy(backbone)
        self.teacher_head = self._frozen_copy(self.head)
        self.teacher_patch_head = None if self.patch_head is None else self._frozen_copy(self.patch_head)
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        pixels = self.patch_size**2 * backbone.in_chans
        reconstructs = config.mae_weight > 0 or config.fourier_weight > 0
        self.decoder = (
            PixelDecoder(backbone.embed_dim, pixels, config.decoder_dim, config.decoder_depth) if reconstructs else None
        )
        self.register_buffer("center", torch.zeros(1, config.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, config.out_dim))
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("patch_center_ready", torch.zeros((), dtype=torch.bool))

    def _make_head(self, in_dim: int) -> DinoHead:
        """A fresh projection head."""
        cfg = self.config
        return DinoHead(in_dim, cfg.out_dim, cfg.head_hidden, cfg.head_bottleneck)

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        """A deep copy with ``requires_grad=False`` everywhere, in eval mode."""
        clone = copy.deepcopy(module)
        for param in clone.parameters():
            param.requires_grad_(False)
        return clone.eval()

    def train(self, mode: bool = True) -> Pluto:
        """Sets the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        for module in (self.teacher, self.teacher_head, self.teacher_patch_head):
            if module is not None:
                module.eval()
        return self

    def _student_patch_head(self) -> DinoHead:
        return self.head if self.patch_head is None else self.patch_head

    def _teacher_patch_head(self) -> nn.Module:
        return self.teacher_head if self.teacher_patch_head is None else self.teacher_patch_head

    def _student_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs the EMA covers."""
        pairs: list[tuple[nn.Module, nn.Module]] = [(self.backbone, self.teacher), (self.head, self.teacher_head)]
        if self.patch_head is not None:
            pairs.append((self.patch_head, self.teacher_patch_head))
        return pairs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher = momentum * teacher + (1 - momentum) * student`` for backbone and head parameters."""
        for student, teacher in self._student_pairs():
            t_params = list(teacher.parameters())
            s_params = [p.detach() for p in student.parameters()]
            torch._foreach_mul_(t_params, momentum)
            torch._foreach_add_(t_params, s_params, alpha=1 - momentum)

    def encoder(self) -> Backbone:
        """The teacher backbone (DINO's convention for evaluation and embedding extraction)."""
        return self.teacher

    def forward(self, images: torch.Tensor, generator: Generators = None) -> dict[str, torch.Tensor]:
        """One PLUTO step's losses on a normalised batch ``[B, 3, S, S]``.

        Makes 2 global and ``n_local`` local crops on the device, masks the student's global views, and
        returns ``loss`` (weighted sum) with the unweighted ``dino``, ``ibot``, ``mae`` and ``fourier`` terms
        (zero tensors for disabled ones). In training mode the teacher centres are updated.

        Args:
            images: Normalised images ``[B, C, S, S]``.
            generator: Seeds crops, jitter and masks: one generator for the batch, or one per image (each
                image's views then depend on its generator only; slower, as crops are made image by image).
        """
        cfg = self.config
        batch = images.shape[0]
        zero = images.new_zeros((), dtype=torch.float32)
        views = batch_views(images, 2, cfg.global_size, cfg.global_scale, generator, cfg.color_jitter)
        grid = cfg.global_size // self.patch_size
        mask = batch_token_masks(2, batch, grid * grid, cfg.mask_ratio, generator, images.device)
        tokens = self.backbone.forward_features(views, mask=mask, mask_token=self.mask_token)
        prefix = self.backbone.num_prefix_tokens
        terms = {"dino": zero, "ibot": zero, "mae": zero, "fourier": zero}
        has_masked = bool(mask.any())
        if cfg.dino_weight > 0 or (cfg.ibot_weight > 0 and has_masked):
            with torch.no_grad():
                teacher_tokens = self.teacher.forward_features(views)
        if cfg.dino_weight > 0:
            terms["dino"] = self._dino(images, tokens[:, 0], teacher_tokens[:, 0], generator)
        if cfg.ibot_weight > 0 and has_masked:
            terms["ibot"] = self._ibot(tokens[:, prefix:][mask], teacher_tokens[:, prefix:][mask])
        if self.decoder is not None and has_masked:
            mae, terms["fourier"] = self._reconstruction(views, tokens, mask)
            terms["mae"] = mae if cfg.mae_weight > 0 else zero
        weights = {"dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "mae": cfg.mae_weight}
        weights["fourier"] = cfg.fourier_weight
        total = sum((weights[k] * v for k, v in terms.items() if weights[k] > 0), zero)
        return {"loss": total, **terms}

    def _momentum(self) -> float | None:
        """Centre momentum while training, ``None`` (no update) in eval mode."""
        return self.config.center_momentum if self.training else None

    def _dino(
        self,
        images: torch.Tensor,
        student_cls: torch.Tensor,
        teacher_cls: torch.Tensor,
        generator: Generators,
    ) -> torch.Tensor:
        """DINO loss of the global (masked) and local student views against the teacher's global views."""
        cfg = self.config
        batch = images.shape[0]
        student = [self.head(student_cls)]
        if cfg.n_local > 0:
            local = batch_views(images, cfg.n_local, cfg.local_size, cfg.local_scale, generator, cfg.color_jitter)
            student.append(self.head(self.backbone.forward_features(local)[:, 0]))
        with torch.no_grad():
            teacher_probs = teacher_probabilities(
                self.teacher_head(teacher_cls), self.center, self.center_ready, cfg.teacher_temp, self._momentum()
            )
        student_out = torch.cat(student).view(-1, batch, cfg.out_dim)
        return dino_loss(student_out, teacher_probs.view(2, batch, cfg.out_dim), cfg.student_temp)

    def _ibot(self, student_masked: torch.Tensor, teacher_masked: torch.Tensor) -> torch.Tensor:
        """The iBOT loss of the student's masked patch tokens against the teacher's tokens at those positions."""
        cfg = self.config
        with torch.no_grad():
            teacher_probs = teacher_probabilities(
                self._teacher_patch_head()(teacher_masked),
                self.patch_center,
                self.patch_center_ready,
                cfg.teacher_temp,
                self._momentum(),
            )
        return ibot_loss(self._student_patch_head()(student_masked), teacher_probs, cfg.student_temp)

    def _reconstruction(
        self, views: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE and Fourier losses of the decoded masked patches (Fourier zero and skipped when its weight is 0)."""
        pred = self.decoder(tokens, self.backbone.num_prefix_tokens)[mask]
        target = normalize_patches(patchify(views, self.patch_size)[mask].float())
        mae = mae_loss(pred, target)
        if self.config.fourier_weight <= 0:
            return mae, mae.new_zeros(())
        return mae, fourier_loss(pred, target, self.patch_size, views.shape[1])
