"""A GMS or UNet segmenter as a deployable network: RGB values 0..255 -> foreground probability.

The network maps 0..255 to [-1, 1] (``models.to_model_range``) and returns the segmenter's probability
``[B, 1, H, W]`` (GMS: frozen VAE encoder -> latent mapper -> frozen decoder, Huo et al., AAAI 2025);
``pred`` is that probability. Larger images are predicted with a sliding window of the training size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.segmentation.models import build_segmenter, load_segmenter
from domainfm.shared.deploy.card import Deployable, ModelCard, Standardise

KINDS = {"gms": "segmentation.gms", "unet": "segmentation.unet"}


def _wrap(model: nn.Module) -> nn.Module:
    return nn.Sequential(Standardise([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], scale=1 / 127.5), model)


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Range mapping + a randomly initialised segmenter of the shape ``build`` describes."""
    if kind not in KINDS.values():
        raise ValueError(f"segmentation deploys {sorted(KINDS.values())}, not {kind!r}")
    return _wrap(build_segmenter(build))


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a segmenter with checkpoint metadata ``meta``."""
    size = int(meta["image_size"])
    return ModelCard(
        kind=KINDS[meta["kind"]],
        task="segmentation",
        in_channels=3,
        spatial_shape=[size, size],
        channel_names=["red", "green", "blue"],
        input_range=[0.0, 255.0],
        out_channels=1,
        activation="none",
        class_names=["foreground"],
        build=meta,
        details={"model": meta["kind"], "source": str(source), "input": "an RGB image; larger ones slide a window"},
    )


def deployable(path: Path) -> Deployable:
    """The segmenter in ``path`` (trained weights) as a deployable network."""
    model, meta = load_segmenter(path)
    return Deployable(_wrap(model), card(meta, path), Path(path))
