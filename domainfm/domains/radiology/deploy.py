"""A radiograph classifier as a deployable network: grey values 0..255 -> finding scores.

Raw inputs are display values x 255 (a DICOM through its display transform, a PNG/JPEG as ingest reads
it), of any size. The network runs the classifier's input transform (letterbox to the training size,
rounded to uint8 as ``radiology ingest`` stores it, scaled to [0, 1] and standardised with the training
normalisation) and the ConVIRT image tower with its linear head (``classifier.RadiographClassifier``);
``pred`` is the sigmoid per finding (multi-label, as in ConVIRT's CheXpert evaluation, arXiv 2010.00747).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from domainfm.domains.radiology.classifier import build_classifier, load_classifier
from domainfm.domains.radiology.images import DICOM_SUFFIXES, RASTER_SUFFIXES, raw_radiograph
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform

KIND = "radiology.classifier"


def read_radiograph_input(path: Path, card: ModelCard | None = None) -> np.ndarray:
    """A radiograph (DICOM or picture) as ``[1, H, W]`` display values 0..255, as ``radiology ingest`` reads it."""
    from domainfm.domains.radiology.images import read_radiograph

    return raw_radiograph(read_radiograph(Path(path)))[None]


INPUT_READERS = dict.fromkeys((*DICOM_SUFFIXES, *RASTER_SUFFIXES), read_radiograph_input)


def input_transform(meta: dict[str, Any]) -> InputTransform:
    """The classifier's input transform: the record its checkpoint carries.

    Checkpoints written before records were saved: the ingest geometry plus the training normalisation.
    """
    from domainfm.domains.radiology.pretrain import radiograph_transform

    return radiograph_transform(meta)


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return contract_network(input_transform(meta), model, output_grid="fixed")


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Normalisation + a randomly initialised classifier of the shape ``build`` describes."""
    if kind != KIND:
        raise ValueError(f"radiology deploys {KIND!r}, not {kind!r}")
    return _wrap(build_classifier(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a radiograph classifier with checkpoint metadata ``meta``."""
    size = int(meta["image_size"])
    return ModelCard.for_transform(
        input_transform(meta),
        kind=KIND,
        task="multilabel",
        out_channels=len(meta["label_names"]),
        activation="sigmoid",
        class_names=list(meta["label_names"]),
        build=meta,
        details={
            "backbone": meta["encoder"]["name"],
            "peft": meta["peft"],
            "pretrained_encoder": meta.get("checkpoint"),
            "source": str(source),
            "input": f"a radiograph of any size, air dark (a DICOM's display values or a picture's grey values), "
            f"letterboxed to {size}x{size} by the network as `radiology ingest` stores it",
        },
    )


def deployable(path: Path) -> Deployable:
    """The classifier in ``path`` (trained weights) as a deployable network."""
    model, meta = load_classifier(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
