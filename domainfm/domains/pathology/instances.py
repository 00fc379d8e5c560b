"""Nuclei and gland instance segmentation on a pathology encoder: a HoVer-Net-style head (PLUTO's third head).

Graham et al., "HoVer-Net: Simultaneous segmentation and classification of nuclei in multi-tissue
histology images", Medical Image Analysis 58, 2019. Three dense outputs per pixel: **NP** (nucleus vs
background logits), **HV** (the horizontal and vertical distance of the pixel to its object's centre of
mass, each side scaled to [-1, 1] per object) and **NC** (type logits, 0 = background); instances come from
marker-controlled watershed: markers are the foreground minus the pixels where the HV maps change sharply
(object boundaries), flooded over the smoothed boundary energy within the foreground; foreground parts
that hold no marker (small objects, objects cut by the tile edge) become objects of their own.

Why this head and not Mask R-CNN or Mask2Former: nuclei are dense, small (5-15 um), touching objects,
hundreds per tile. Box-proposal heads (Mask R-CNN) lose touching nuclei to non-maximum suppression and
their 28x28 mask grids blur 10-px objects; query-based heads (Mask2Former) need a query per object (a few
hundred per tile), Hungarian matching and long schedules. A three-branch dense head is a few convolutions,
trains in minutes with a frozen encoder, has no object-count limit, and is the proven recipe on PanNuke,
MoNuSeg, CoNSeP and Lizard (HoVer-Net; CellViT, Hörst et al. 2024, the same branches on ViT encoders,
including pathology foundation models). Glands (GlaS) are larger objects with the same structure.

Encoder side: multi-level features of any registered backbone through ``Backbone.forward_intermediates``
(ViT: four evenly spaced blocks; Swin and ResNet: every stage), frozen or adapted by any ``apply_peft``
method. A ViT's maps are 1/16 of the tile, too coarse for 10-px nuclei, so, as CellViT does, a small
convolutional stem on the (standardised) input gives the decoder skip features at 1/1, 1/2 and 1/4.

The network's output is one tensor ``[B, 4 + K + 1, H, W]``: NP logits (2), HV (2), NC logits (K + 1); so
it runs through the model contract (``InputTransform -> network``) like every other head.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

INSTANCES_KEY = "domainfm_pathology_instances"
NP, HV = slice(0, 2), slice(2, 4)


def default_indices(backbone: nn.Module) -> list[int]:
    """Feature maps the head reads: four evenly spaced ViT blocks, or every stage of a hierarchical backbone."""
    from domainfm.shared.backbones.specs import TOKEN_FAMILIES

    n = int(backbone.num_layers)
    if backbone.spec.family in TOKEN_FAMILIES:
        return sorted({round(n * k / 4) - 1 for k in range(1, 5)} - {-1}) or [n - 1]
    return list(range(n))


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = math.gcd(8, cout)  # 8 groups where they divide the channels (any --width: a stem of 12 gets 4)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True)
    )


class HoverHead(nn.Module):
    """Fuses multi-level maps, decodes to full resolution with input-stem skips, and predicts NP, HV and NC."""

    def __init__(self, channels: list[int], n_classes: int, width: int = 64) -> None:
        super().__init__()
        stem = max(8, width * 3 // 8)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.stem = nn.ModuleList([_block(3, stem), _block(stem, stem, 2), _block(stem, stem, 2)])
        self.up = nn.ModuleList([_block(width + stem, width), _block(width + stem, width), _block(width + stem, width)])
        self.branches = nn.ModuleList(
            nn.Sequential(_block(width, width), nn.Conv2d(width, out, 1)) for out in (2, 2, n_classes + 1)
        )

    def forward(self, images: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """``[B, 4 + K + 1, H, W]`` from standardised images and the encoder's maps."""
        finest = max(features, key=lambda f: f.shape[-1]).shape[-2:]
        fused = sum(F.interpolate(lat(f), finest, mode="bilinear", align_corners=False)
                    for lat, f in zip(self.lateral, features, strict=True))  # fmt: skip
        skips = []
        x = images
        for block in self.stem:
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            fused = F.interpolate(fused, skip.shape[-2:], mode="bilinear", align_corners=False)
            fused = block(torch.cat([fused, skip], 1))
        np_logits, hv, nc_logits = (branch(fused) for branch in self.branches)
        return torch.cat([np_logits, torch.tanh(hv), nc_logits], 1)


class InstanceSegmenter(nn.Module):
    """An encoder (any PEFT state) and a :class:`HoverHead` over its intermediate maps."""

    def __init__(self, backbone: nn.Module, n_classes: int, indices: list[int] | None = None, width: int = 64) -> None:
        super().__init__()
        self.backbone = backbone
        self.indices = list(indices) if indices is not None else default_indices(backbone)
        channels = [backbone.feature_info[i]["num_chs"] for i in self.indices]
        self.head = HoverHead(channels, n_classes, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """NP logits, HV maps and NC logits ``[B, 4 + K + 1, H, W]`` of standardised images."""
        return self.head(images, self.backbone.forward_intermediates(images, self.indices))


# ------------------------------------------------------------------------------------------------ targets


def hv_targets(ids: torch.Tensor) -> torch.Tensor:
    """HoVer-Net's HV maps ``[B, 2, H, W]`` of id maps ``[B, H, W]``.

    Each pixel's offset to its object's centre of mass (pixel centres), the negative and positive sides each
    divided by their largest magnitude in the object, so both run to -1 and 1; 0 on the background.
    """
    b, h, w = ids.shape
    ids = ids.long()
    slots = int(ids.max()) + 1 if ids.numel() else 1
    flat = (ids + torch.arange(b, device=ids.device)[:, None, None] * slots).flatten()
    ys, xs = torch.meshgrid(torch.arange(h, device=ids.device), torch.arange(w, device=ids.device), indexing="ij")
    out = []
    count = torch.bincount(flat, minlength=b * slots).clamp(min=1).float()
    for coord in (xs, ys):
        values = coord.float().expand(b, h, w).flatten()
        centre = torch.bincount(flat, weights=values, minlength=b * slots) / count
        offset = values - centre[flat]
        pos = torch.zeros(b * slots, device=ids.device).scatter_reduce(0, flat, offset.clamp(min=0), "amax")
        neg = torch.zeros(b * slots, device=ids.device).scatter_reduce(0, flat, (-offset).clamp(min=0), "amax")
        scaled = torch.where(offset > 0, offset / pos[flat].clamp(min=1e-6), offset / neg[flat].clamp(min=1e-6))
        out.append(torch.where(ids.flatten() > 0, scaled, torch.zeros_like(scaled)).view(b, h, w))
    return torch.stack(out, 1)


def type_targets(ids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Per-pixel type ``[B, H, W]``: 0 background, class + 1 inside an object (``classes`` ``[B, slots]``)."""
    ids = ids.long()
    klass = torch.gather(classes.long(), 1, ids.flatten(1)).view_as(ids)
    return torch.where(ids > 0, klass + 1, torch.zeros_like(klass))


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((0, 2, 3))
    return 1 - ((2 * inter + 1e-3) / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-3)).mean()


def _gradients(maps: torch.Tensor) -> torch.Tensor:
    """Sobel derivative of the horizontal map along x and of the vertical map along y (HoVer-Net's MSGE)."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=maps.device) / 8
    h = F.conv2d(maps[:, :1], kx[None, None], padding=1)
    v = F.conv2d(maps[:, 1:], kx.t()[None, None], padding=1)
    return torch.cat([h, v], 1)


def hover_loss(output: torch.Tensor, ids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """HoVer-Net's loss: NP cross-entropy + Dice, HV MSE + MSGE (gradients inside objects), NC cross-entropy + Dice."""
    foreground = (ids > 0).long()
    hv = hv_targets(ids)
    types = type_targets(ids, classes)
    np_logits, hv_pred, nc_logits = output[:, NP], output[:, HV], output[:, 4:]
    inside = foreground[:, None].float()
    msge = (((_gradients(hv_pred) - _gradients(hv)) ** 2) * inside).sum() / inside.sum().clamp(min=1) / 2
    return (
        F.cross_entropy(np_logits, foreground) + _dice_loss(np_logits, foreground)
        + F.mse_loss(hv_pred, hv) + 2 * msge
        + F.cross_entropy(nc_logits, types) + _dice_loss(nc_logits, types)
    )  # fmt: skip


# -------------------------------------------------------------------------------------------- instances


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def instances_from_maps(
    probabilities: np.ndarray, min_size: int = 10, fg_threshold: float = 0.5, marker_threshold: float = 0.4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HoVer-Net's post-processing of one image's maps ``[4 + K + 1, H, W]`` (NP and NC as probabilities).

    The HV maps are min-max scaled first, so any positive affine scale of them (``[-1, 1]`` targets, the
    ``[0, 1]`` of :func:`probabilities_of`) gives the same instances.

    Returns:
        ``(ids [H, W] int32, class index per id [n + 1] (entry 0 is -1), score per id [n + 1])``; the score
        is the mean probability of the object's type over its pixels.
    """
    from scipy import ndimage
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    foreground = probabilities[1] >= fg_threshold
    foreground = remove_small_objects(ndimage.label(foreground)[0], max_size=min_size - 1) > 0
    h = _unit(ndimage.gaussian_filter(probabilities[2], 1.0))
    v = _unit(ndimage.gaussian_filter(probabilities[3], 1.0))
    sobel_h = 1 - _unit(ndimage.sobel(h, axis=1))
    sobel_v = 1 - _unit(ndimage.sobel(v, axis=0))
    energy = np.clip(np.maximum(sobel_h, sobel_v) - (1 - foreground), 0, None)
    distance = -ndimage.gaussian_filter((1.0 - energy) * foreground, 1.0)
    markers = foreground & ~(energy >= marker_threshold)
    markers = ndimage.binary_opening(ndimage.binary_fill_holes(markers), np.ones((2, 2)))
    markers = remove_small_objects(ndimage.label(markers)[0], max_size=max(1, min_size // 4) - 1)
    ids = watershed(distance, markers, mask=foreground).astype(np.int32)
    orphans, _ = ndimage.label(foreground & (ids == 0))  # parts without a marker (small, cut objects)
    ids[orphans > 0] = orphans[orphans > 0] + ids.max()
    ids, _, _ = _relabel(ids)
    types = probabilities[4:]
    n = int(ids.max())
    classes, scores = np.full(n + 1, -1, np.int64), np.zeros(n + 1)
    if n:
        best = types.argmax(0)
        for i, pixels in enumerate(ndimage.find_objects(ids), start=1):
            inside = ids[pixels] == i
            votes = np.bincount(best[pixels][inside], minlength=types.shape[0])[1:]
            mean = types[1:, pixels[0], pixels[1]][:, inside].mean(1)
            c = int(votes.argmax() if votes.any() else mean.argmax()) + 1  # majority type, never background
            classes[i] = c - 1
            scores[i] = float(types[c][pixels][inside].mean())
    return ids, classes, scores


def _relabel(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(ids)


def probabilities_of(output: torch.Tensor) -> torch.Tensor:
    """Network output -> NP and NC softmax probabilities and HV as ``(hv + 1) / 2`` (same layout, all in [0, 1]).

    The watershed reads the HV maps after min-max scaling, so the affine map changes no instance; it keeps
    every deployed channel in [0, 1] as a segmentation card promises.
    """
    return torch.cat([output[:, NP].softmax(1), (output[:, HV] + 1) / 2, output[:, 4:].softmax(1)], 1)


class InstanceMaps(nn.Module):
    """A segmenter whose output is the maps post-processing reads: NP and NC probabilities, HV as is.

    The deployed network (``ContractModel(transform, InstanceMaps(segmenter))``): on the input's pixel
    grid, windows blended over larger pictures, so ``pathology predict``, a MONAI bundle and ``explain``
    see the same maps; :func:`instances_from_maps` turns them into instances.
    """

    def __init__(self, segmenter: InstanceSegmenter) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 4 + K + 1, H, W]`` maps of standardised images."""
        return probabilities_of(self.segmenter(images))


def build_segmenter(meta: dict[str, Any]) -> InstanceSegmenter:
    """A randomly initialised segmenter of the shape a checkpoint's metadata describes."""
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.peft.methods import apply_peft

    args = dict(meta["encoder"])
    backbone = apply_peft(create_backbone(args.pop("name"), **args), meta["peft"], **meta["peft_options"])
    return InstanceSegmenter(backbone, len(meta["class_names"]), meta["indices"], meta["width"])


def load_segmenter(path: Any) -> tuple[InstanceSegmenter, dict[str, Any]]:
    """A segmenter saved by ``pathology instances-train`` (rebuilt, PEFT reapplied, weights loaded)."""
    from domainfm.shared.tasks.checkpoint import load_model_checkpoint

    return load_model_checkpoint(path, INSTANCES_KEY, "domainfm pathology instances-train", build_segmenter)
