"""A pathology tile classifier as a deployable network: RGB tile values 0..255 -> class scores.

The network runs the classifier's input transform (a tile of exactly the training size at the training
mpp, rounded to uint8 as the store holds it, standardised with the statistics the classifier was trained
with: the PLUTO encoder's, or the store's; a converted foundation encoder's own record instead: any tile
size, resized to the model's input, scaled and standardised with the publisher's statistics), then the
PEFT-adapted encoder (rebuilt from its stored ``create_backbone`` arguments: pooling and timm overrides
included) and its linear head
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


def input_transform(meta: dict[str, Any]) -> InputTransform:
    """The tile classifier's input transform: the record its checkpoint carries (older ones: from its metadata)."""
    from domainfm.domains.pathology.pretrain import tile_transform
    from domainfm.shared.model.encoders import record_or

    return record_or(meta, lambda: tile_transform(meta["normalization"], int(meta["tile_px"]), meta.get("mpps")))


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return contract_network(input_transform(meta), model, output_grid="fixed")


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Standardisation + a randomly initialised tile classifier (or instance segmenter) shaped as ``build`` says."""
    from domainfm.domains.pathology import instance_deploy, slide_model

    if kind == instance_deploy.KIND:
        return instance_deploy.network(build)
    if kind == slide_model.KIND:
        return slide_model.network(build)
    if kind != KIND:
        raise ValueError(f"pathology deploys {[KIND, instance_deploy.KIND, slide_model.KIND]}, not {kind!r}")
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
    """The pathology model in ``path`` as a deployable network.

    A tile classifier, an instance segmenter (:mod:`.instance_deploy`) or an ABMIL slide classifier
    (:mod:`.slide_model`).
    """
    from domainfm.domains.pathology import instance_deploy, slide_model
    from domainfm.domains.pathology.instances import INSTANCES_KEY
    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    keys = checkpoint_metadata(path)
    if INSTANCES_KEY in keys:
        return instance_deploy.deployable(path)
    if slide_model.SLIDE_KEY in keys:
        return slide_model.deployable(path)
    model, meta = load_tile_classifier(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
