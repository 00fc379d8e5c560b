"""The nuclei/gland instance head as a deployable network: RGB values 0..255 -> HoVer-Net maps on the input grid.

The network runs the segmenter's input transform (its encoder's standardisation; ``window`` geometry: the
training tile slides over larger pictures, MONAI's Gaussian-blended sliding window), then the PEFT-adapted
encoder and the HoVer-Net-style head (:class:`~.instances.InstanceMaps`). ``pred`` is ``[B, 4 + K + 1, H, W]``
on the input's pixels: background and foreground probabilities (NP), the horizontal and vertical maps (HV,
as ``(offset + 1) / 2`` in [0, 1]) and the type probabilities (NC: background, then each class). The
instance map is the marker-controlled watershed of these maps, :func:`~.instances.instances_from_maps`
(NumPy and scikit-image, outside the network), which ``domainfm pathology predict`` runs on this
network's output: a MONAI bundle of this model writes the maps, and ``instances_from_maps`` of them gives
the instances ``pathology predict`` gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from domainfm.domains.pathology.instances import InstanceMaps, build_segmenter, load_segmenter
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform

KIND = "pathology.instances"


def _wrap(segmenter: nn.Module, meta: dict[str, Any]) -> nn.Module:
    return contract_network(InputTransform.from_dict(meta["transform"]), InstanceMaps(segmenter), "input")


def network(build: dict[str, Any]) -> nn.Module:
    """Transform + a randomly initialised segmenter (maps output) of the shape ``build`` describes."""
    return _wrap(build_segmenter(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of an instance segmenter with checkpoint metadata ``meta``."""
    names = list(meta["class_names"])
    channels = ["np:background", "np:foreground", "hv:horizontal", "hv:vertical", "nc:background"]
    return ModelCard.for_transform(
        InputTransform.from_dict(meta["transform"]),
        kind=KIND,
        task="segmentation",
        out_channels=len(channels) + len(names),
        activation="none",
        class_names=channels + [f"nc:{name}" for name in names],
        build=meta,
        details={
            "backbone": meta["encoder"]["name"],
            "peft": meta["peft"],
            "mpps": meta.get("mpps"),
            "instance_classes": names,
            "pretrained_encoder": meta.get("checkpoint"),
            "source": str(source),
            "input": "an RGB picture of any size at the mpp of the training store (see mpps)",
            "instances": "marker-controlled watershed of the maps: "
            "domainfm.domains.pathology.instances.instances_from_maps (HoVer-Net, Graham et al. 2019)",
        },
    )


def deployable(path: Path) -> Deployable:
    """The instance segmenter in ``path`` (trained weights) as a deployable network."""
    model, meta = load_segmenter(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
