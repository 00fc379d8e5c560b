"""A radiograph classifier as a deployable network: grey values 0..255 -> finding scores.

The network scales to [0, 1], standardises with the training normalisation (``pretrain.normalise``) and
runs the ConVIRT image tower with its linear head (``classifier.RadiographClassifier``); ``pred`` is the
sigmoid per finding (multi-label, as in ConVIRT's CheXpert evaluation, arXiv 2010.00747).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from domainfm.domains.radiology.classifier import build_classifier, load_classifier
from domainfm.shared.deploy.card import Deployable, ModelCard, Standardise

KIND = "radiology.classifier"


def read_dicom_input(path: Path) -> np.ndarray:
    """A DICOM radiograph as ``[1, H, W]`` display values 0..255 (the transform of ``radiology ingest``)."""
    from domainfm.domains.radiology.images import read_dicom

    return (read_dicom(Path(path)) * 255).astype(np.float32)[None]


INPUT_READERS = {".dcm": read_dicom_input, ".dicom": read_dicom_input}


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    norm = meta["normalization"]
    return nn.Sequential(Standardise([norm["mean"]], [norm["std"]], scale=1 / 255), model)


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Normalisation + a randomly initialised classifier of the shape ``build`` describes."""
    if kind != KIND:
        raise ValueError(f"radiology deploys {KIND!r}, not {kind!r}")
    return _wrap(build_classifier(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a radiograph classifier with checkpoint metadata ``meta``."""
    size = int(meta["image_size"])
    return ModelCard(
        kind=KIND,
        task="multilabel",
        in_channels=1,
        spatial_shape=[size, size],
        channel_names=["grey"],
        input_range=[0.0, 255.0],
        out_channels=len(meta["label_names"]),
        activation="sigmoid",
        class_names=list(meta["label_names"]),
        build=meta,
        details={
            "backbone": meta["encoder"]["name"],
            "peft": meta["peft"],
            "pretrained_encoder": meta.get("checkpoint"),
            "source": str(source),
            "input": f"a radiograph letterboxed to {size}x{size}, air dark (as `radiology ingest` stores it)",
        },
    )


def deployable(path: Path) -> Deployable:
    """The classifier in ``path`` (trained weights) as a deployable network."""
    model, meta = load_classifier(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
