"""What a deployed model takes and returns: :class:`ModelCard`, :class:`Deployable`, :func:`predict`.

Every domain's downstream checkpoint (pathology tile classifier, radiology classifier, remote-sensing
cloud mask/curtain/scene model, GMS or UNet segmenter) is turned by its domain's ``deploy`` module into a
:class:`Deployable`: one ``nn.Module`` that maps *raw* inputs (what a file holds: RGB or grey values in
0..255, or a chip's physical band values) to one score tensor, plus a card that says how. The network
owns its input normalisation, so a MONAI bundle (:mod:`.bundle`) and an explanation (:mod:`domainfm.shared.explain`)
need nothing but the network and the card, and ``verify_net_in_out`` sees a plain tensor in and out
(MONAI bundle specification, ``network_data_format`` inputs ``image`` / outputs ``pred``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

TASKS = ("classification", "multilabel", "segmentation")
ACTIVATIONS = ("softmax", "sigmoid", "none")


@dataclass
class ModelCard:
    """A deployed network's contract.

    Attributes:
        kind: ``"<domain>.<model>"``, e.g. ``"pathology.tile_classifier"``; names the domain ``deploy``
            module that rebuilds the network (:func:`domainfm.shared.deploy.registry.build_network`).
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
        output_grid: ``input`` when a segmentation map lies on the input's pixel grid (so larger inputs can
            be predicted window by window), ``fixed`` when the output has a shape of its own (the 91 x 40
            cloud curtain).
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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.output_grid not in ("input", "fixed"):
            raise ValueError(f"output_grid {self.output_grid!r} is not 'input' or 'fixed'")
        if len(self.channel_names) != self.in_channels:
            raise ValueError(f"{len(self.channel_names)} channel names for {self.in_channels} input channels")

    @property
    def sliding_window(self) -> bool:
        """Whether inputs larger than ``spatial_shape`` are predicted window by window."""
        return self.task == "segmentation" and self.output_grid == "input"

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


class Standardise(nn.Module):
    """``(x * scale - mean) / std`` per channel; constants are not part of the state dict."""

    def __init__(self, mean: list[float], std: list[float], scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised float images."""
        return (images.float() * self.scale - self.mean) / self.std


# Sliding-window settings shared by :func:`predict` and the bundle's ``SlidingWindowInferer``.
SLIDING_WINDOW = {"sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"}


def activate(scores: torch.Tensor, activation: str) -> torch.Tensor:
    """``pred`` from network scores."""
    if activation == "softmax":
        return torch.softmax(scores, dim=1)
    if activation == "sigmoid":
        return torch.sigmoid(scores)
    return scores


def scores(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """Network scores of raw images ``[B, C, H, W]`` (window by window for larger segmentation inputs)."""
    card = deployable.card
    images = images.float()
    if images.ndim != 4 or images.shape[1] != card.in_channels:
        raise ValueError(f"expected images [B, {card.in_channels}, H, W], got {list(images.shape)}")
    if card.sliding_window and list(images.shape[-2:]) != list(card.spatial_shape):
        from monai.inferers import sliding_window_inference

        return sliding_window_inference(images, card.spatial_shape, predictor=deployable.network, **SLIDING_WINDOW)
    if list(images.shape[-2:]) != list(card.spatial_shape):
        raise ValueError(
            f"{card.kind} takes {card.spatial_shape[0]}x{card.spatial_shape[1]} inputs, got "
            f"{images.shape[-2]}x{images.shape[-1]}: resize or tile the input first"
        )
    return deployable.network(images)


@torch.no_grad()
def predict(deployable: Deployable, images: torch.Tensor) -> torch.Tensor:
    """``pred`` (probabilities) of raw images ``[B, C, H, W]``: what a bundle writes for the same inputs."""
    deployable.network.eval()
    return activate(scores(deployable, images), deployable.card.activation)
