"""A GMS or UNet segmenter as a deployable network: RGB values 0..255 -> foreground probability.

The network runs the segmenter's input transform (the whole image resized to the training size as
``segmentation ingest`` stores it, rounded to uint8, mapped to [-1, 1]), the segmenter (GMS: frozen VAE
encoder -> latent mapper -> frozen decoder, Huo et al., AAAI 2025), and resizes the probability map back
to the input's size: the geometry the model was trained with, never a sliding window over a model that
saw whole images. ``pred`` is that probability ``[B, 1, H, W]`` at the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.segmentation.data import image_transform, read_input_image
from domainfm.domains.segmentation.models import build_segmenter, load_segmenter
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform
from domainfm.shared.model.encoders import record_or

KINDS = {"gms": "segmentation.gms", "unet": "segmentation.unet"}
# Pictures are read as `segmentation ingest` reads them (greyscale replicated, 16-bit rescaled).
INPUT_READERS = dict.fromkeys((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"), read_input_image)


def input_transform(meta: dict[str, Any]) -> InputTransform:
    """The segmenter's input transform: the record its checkpoint carries (older ones: from its image size)."""
    return record_or(meta, lambda: image_transform(int(meta["image_size"])))


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return contract_network(input_transform(meta), model, output_grid="input")


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Range mapping + a randomly initialised segmenter of the shape ``build`` describes."""
    if kind not in KINDS.values():
        raise ValueError(f"segmentation deploys {sorted(KINDS.values())}, not {kind!r}")
    return _wrap(build_segmenter(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a segmenter with checkpoint metadata ``meta``."""
    return ModelCard.for_transform(
        input_transform(meta),
        kind=KINDS[meta["kind"]],
        task="segmentation",
        out_channels=1,
        activation="none",
        class_names=["foreground"],
        build=meta,
        details={
            "model": meta["kind"],
            "source": str(source),
            "input": "an RGB image of any size (resized to the training size; the mask comes back at its size)",
        },
    )


def deployable(path: Path) -> Deployable:
    """The segmenter in ``path`` (trained weights) as a deployable network."""
    model, meta = load_segmenter(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
