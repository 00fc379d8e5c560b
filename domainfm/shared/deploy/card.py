"""What a deployed model takes and returns: :class:`ModelCard`, :class:`Deployable`, :func:`predict`.

Every domain's downstream checkpoint (a tile classifier, a radiograph classifier, a cloud mask, curtain or
scene model, a GMS or UNet segmenter) is turned by its domain's ``deploy`` module into a
:class:`Deployable`: one :class:`~domainfm.shared.model.ContractModel` that maps *raw* inputs (what a file
holds: RGB or grey values in 0..255, DICOM display values x 255, a chip's physical band values) through
the model's saved :class:`~domainfm.shared.model.InputTransform` (geometry, quantisation, standardisation)
to one score tensor, plus a card that says how. A MONAI bundle (:mod:`.bundle`), an explanation
(:mod:`domainfm.shared.explain`) and :func:`predict` run that one module, so they cannot disagree, and
``verify_net_in_out`` sees a plain tensor in and out (MONAI bundle specification, ``network_data_format``
inputs ``image`` / outputs ``pred``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.model import ContractModel, InputTransform
from domainfm.shared.model.transform import SLIDING_WINDOW

__all__ = [
    "SLIDING_WINDOW",
    "Deployable",
    "ModelCard",
    "activate",
    "contract_network",
    "predict",
    "predict_array",
    "scores",
]

TASKS = ("classification", "multilabel", "segmentation")
ACTIVATIONS = ("softmax", "sigmoid", "none")


@dataclass
class ModelCard:
    """A deployed network's contract.

    Attributes:
        kind: ``"<domain>.<model>"``, e.g. ``"<domain>.tile_classifier"``; names the registered domain
            whose ``deploy`` module rebuilds the network (:func:`domainfm.shared.deploy.registry.build_network`).
        task: ``classification`` (one class per input), ``multilabel`` (independent labels) or
            ``segmentation`` (a map per input; the curtain is a one-channel 2D map too).
        in_channels: Input channels.
        spatial_shape: The input size the network was trained on ``[H, W]``; segmentation networks slide a
            window of this size over larger inputs.
        channel_names: One name per input channel (RGB, grey, band names).
        input_range: The raw value range the network expects, e.g. ``[0, 255]`` (``None``: unbounded units).
        out_channels: Output channels (classes, labels, or map channels).
        activation: What turns the network's scores into ``pred``: ``softmax``, ``sigmoid`` or ``none``
            (the network already returns probabilities).
        class_names: Names of the output channels.
        build: JSON arguments that rebuild the (randomly initialised) network.
        details: Everything else a reader of the bundle wants: backbone, PEFT method, mpp, bands,
            normalisation, the checkpoint it came from.
        output_grid: ``input`` when a segmentation map lies on the input's pixel grid (it is returned at
            the input's size), ``fixed`` when the output has a shape of its own (classes, the 91 x 40
            cloud curtain).
        transform: The :class:`~domainfm.shared.model.InputTransform` record the network runs first
            (``InputTransform.to_dict()``); ``spatial_shape``, ``channel_names`` and ``input_range`` repeat
            its ``size``, ``channels`` and ``input_range`` for readers of the card.
    """

    kind: str
    task: str
    in_channels: int
    spatial_shape: list[int]
    channel_names: list[str]
    input_range: list[float] | None
    out_channels: int
    activation: str
    class_names: list[str]
    build: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)
    output_grid: str = "input"
    transform: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.output_grid not in ("input", "fixed"):
            raise ValueError(f"output_grid {self.output_grid!r} is not 'input' or 'fixed'")
        if len(self.channel_names) != self.in_channels:
            raise ValueError(f"{len(self.channel_names)} channel names for {self.in_channels} input channels")
        if not self.transform:
            raise ValueError(f"{self.kind}: a card needs the input transform record its network runs")

    @property
    def input_transform(self) -> InputTransform:
        """The transform record as an object."""
        return InputTransform.from_dict(self.transform)

    @property
    def geometry(self) -> str:
        """How inputs of other sizes are taken: ``exact``, ``resize``, ``letterbox`` or ``window``."""
        return str(self.transform["geometry"])

    @property
    def sliding_window(self) -> bool:
        """Whether inputs larger than ``spatial_shape`` are predicted window by window (inside the network)."""
        return self.geometry == "window" and self.task == "segmentation" and self.output_grid == "input"

    @classmethod
    def for_transform(cls, transform: InputTransform, **fields_: Any) -> ModelCard:
        """A card whose shape fields come from ``transform`` (the one way domain deploy modules build cards)."""
        return cls(
            in_channels=transform.in_channels,
            spatial_shape=list(transform.size),
            channel_names=transform.raw_channels,
            input_range=transform.input_range,
            transform=transform.to_dict(),
            **fields_,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass
class Deployable:
    """A network (raw input -> scores) with its card and the checkpoint it was loaded from."""

    network: nn.Module
    card: ModelCard
    source: Path


def contract_network(transform: InputTransform, network: nn.Module, output_grid: str = "fixed") -> ContractModel:
    """``transform -> network`` as one module (what every domain ``deploy`` module returns)."""
    return ContractModel(transform, network, output_grid)


def activate(scores: torch.Tensor, activation: str) -> torch.Tensor:
    """``pred`` from network scores."""
    if activation == "softmax":
        return torch.softmax(scores, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(scores)
    return scores


def scores(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """Network scores of raw images ``[B, C, H, W]``: the network applies the saved input transform."""
    return deployable.network(images if images.is_floating_point() else images.float())


@torch.no_grad()
def predict(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """``pred`` (probabilities) of raw images ``[B, C, H, W]``: what a bundle writes for the same inputs."""
    deployable.network.eval()
    return activate(scores(deployable, images), deployable.card.activation)


def predict_array(deployable: Deployable, images: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """:func:`predict` of raw images ``[B, C, H, W]`` given as a NumPy array, as float32 NumPy (on ``device``)."""
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    return predict(deployable, batch).float().cpu().numpy()
