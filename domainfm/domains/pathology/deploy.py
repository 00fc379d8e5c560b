"""A pathology tile classifier as a deployable network: RGB tile values 0..255 -> class scores.

The network standardises with the statistics the classifier was trained with (the PLUTO encoder's, or
the store's), then runs the PEFT-adapted encoder and its linear head (``heads.TileClassifier``);
``pred`` is the softmax over the tissue classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.pathology.heads import build_tile_classifier, load_tile_classifier
from domainfm.shared.deploy.card import Deployable, ModelCard, Standardise

KIND = "pathology.tile_classifier"


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Standardisation + a randomly initialised tile classifier of the shape ``build`` describes."""
    if kind != KIND:
        raise ValueError(f"pathology deploys {KIND!r}, not {kind!r}")
    norm = build["normalization"]
    return nn.Sequential(Standardise(norm["mean"], norm["std"]), build_tile_classifier(build))


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a tile classifier with checkpoint metadata ``meta``."""
    size = int(meta["tile_px"])
    return ModelCard(
        kind=KIND,
        task="classification",
        in_channels=3,
        spatial_shape=[size, size],
        channel_names=["red", "green", "blue"],
        input_range=[0.0, 255.0],
        out_channels=len(meta["label_names"]),
        activation="softmax",
        class_names=list(meta["label_names"]),
        build=meta,
        details={
            "backbone": meta["encoder"]["name"],
            "peft": meta["peft"],
            "mpps": meta.get("mpps"),
            "pretrained_encoder": meta.get("checkpoint"),
            "source": str(source),
            "input": f"an RGB tile of {size}x{size} px at the mpp of the training store (see mpps)",
        },
    )


def deployable(path: Path) -> Deployable:
    """The tile classifier in ``path`` (trained weights) as a deployable network."""
    model, meta = load_tile_classifier(path)
    norm = meta["normalization"]
    return Deployable(nn.Sequential(Standardise(norm["mean"], norm["std"]), model), card(meta, path), Path(path))
