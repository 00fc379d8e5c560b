"""A pathology tile classifier as a deployable network: RGB tile values 0..255 -> class scores.

The network runs the classifier's input transform (a tile of exactly the training size at the training
mpp, rounded to uint8 as the store holds it, standardised with the statistics the classifier was trained
with: the PLUTO encoder's, or the store's), then the PEFT-adapted encoder and its linear head
(``heads.TileClassifier``); ``pred`` is the softmax over the tissue classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.pathology.heads import build_tile_classifier, load_tile_classifier
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform

KIND = "pathology.tile_classifier"
RGB = ["red", "green", "blue"]


def input_transform(meta: dict[str, Any]) -> InputTransform:
    """The tile classifier's input transform: the record its checkpoint carries (older ones: from its metadata)."""
    if meta.get("transform"):
        return InputTransform.from_dict(meta["transform"])
    size = int(meta["tile_px"])
    norm = meta["normalization"]
    return InputTransform(
        channels=RGB,
        size=[size, size],
        geometry="exact",
        mean=norm["mean"],
        std=norm["std"],
        quantise="uint8",
        input_range=[0.0, 255.0],
        details={"mpps": meta.get("mpps"), "units": "RGB 0..255; mean/std in the same units"},
    )


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return contract_network(input_transform(meta), model, output_grid="fixed")


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Standardisation + a randomly initialised tile classifier of the shape ``build`` describes."""
    if kind != KIND:
        raise ValueError(f"pathology deploys {KIND!r}, not {kind!r}")
    return _wrap(build_tile_classifier(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a tile classifier with checkpoint metadata ``meta``."""
    size = int(meta["tile_px"])
    return ModelCard.for_transform(
        input_transform(meta),
        kind=KIND,
        task="classification",
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
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
