"""A remote-sensing downstream model as a deployable network: chip band values -> task scores.

Input: a chip ``[bands, H, W]`` in the store's units (SatVision-TOA's [0, 1] scaling for MODIS stores, the
raster's values otherwise; invalid pixels 0, as ingest stores them). The network applies the training
input transform (``pretrain.prepare``), the SwinV2 encoder with its PEFT state and the task head
(``downstream.DownstreamModel``). ``pred`` is the sigmoid: the cloud probability per pixel (``segment``),
per curtain bin ``[1, 91, 40]`` (``curtain``, SatVision-TOA's 3D cloud retrieval, arXiv 2411.17000) or per
scene label (``multilabel``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.remote_sensing.data import HDF_SUFFIXES
from domainfm.domains.remote_sensing.downstream import build_task_model, load_task_model
from domainfm.shared.deploy.card import Deployable, ModelCard, contract_network
from domainfm.shared.model import InputTransform
from domainfm.shared.model.encoders import record_or


def read_granule_input(path: Path, card: ModelCard) -> np.ndarray:
    """A MODIS L1B granule as the card's bands ``[C, H, W]``, SatVision-scaled, invalid pixels 0 (as ingest)."""
    from domainfm.domains.remote_sensing.modis import read_l1b

    granule = read_l1b(Path(path), list(card.channel_names))
    scaled = np.stack([band.scale(plane) for band, plane in zip(granule.bands, granule.values, strict=True)])
    return np.where(granule.valid, np.nan_to_num(scaled), 0).astype(np.float32)


def read_raster_input(
    path: Path, card: ModelCard, window: tuple[tuple[int, int], tuple[int, int]] | None = None
) -> np.ndarray:
    """A GeoTIFF band set as the card's bands ``[C, H, W]`` in the file's values, nodata 0 (as ingest).

    ``window``: only rows ``[r0, r1)`` and columns ``[c0, c1)``, as ``((r0, r1), (c0, c1))``.
    """
    from domainfm.domains.remote_sensing.rasters import read_stack

    stack = read_stack([Path(path)], list(card.channel_names), window)
    return np.where(stack.valid, np.nan_to_num(stack.values), 0).astype(np.float32)


INPUT_READERS = {
    **dict.fromkeys(HDF_SUFFIXES, read_granule_input),
    **dict.fromkeys((".tif", ".tiff"), read_raster_input),
}

KINDS = {
    "curtain": "remote_sensing.curtain",
    "segment": "remote_sensing.cloud_mask",
    "multilabel": "remote_sensing.scenes",
}


class ChannelFirst(nn.Module):
    """Curtain logits ``[B, 91, 40]`` as a one-channel map ``[B, 1, 91, 40]``; other outputs unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Task logits, channel first."""
        out = self.model(images)
        return out[:, None] if out.ndim == 3 else out


def input_transform(meta: dict[str, Any]) -> InputTransform:
    """The task model's input transform: chips in the store's units, standardised as in training.

    Cloud masks lie on the chip's pixel grid, so larger inputs (a whole granule's bands) are predicted
    window by window, as the chips were cut; curtains and scene labels take exactly one chip. The record the
    checkpoint carries wins (checkpoints written before it: from the metadata).
    """

    def derive() -> InputTransform:
        size = int(meta["image_size"])
        standardisation = meta["input_transform"] or {}
        return InputTransform(
            channels=[b["name"] for b in meta["bands"]],
            size=[size, size],
            geometry="window" if meta["task"] == "segment" else "exact",
            mean=standardisation.get("mean", []),
            std=standardisation.get("std", []),
            input_range=[0.0, 1.0] if meta["input_transform"] is None else None,
            details={"bands": meta["bands"], "invalid_pixels": 0.0},
        )

    return record_or(meta, derive)


def _wrap(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    grid = "input" if meta["task"] == "segment" else "fixed"
    return contract_network(input_transform(meta), ChannelFirst(model), output_grid=grid)


def network(kind: str, build: dict[str, Any]) -> nn.Module:
    """Input transform + a randomly initialised task model of the shape ``build`` describes."""
    if kind not in KINDS.values():
        raise ValueError(f"remote sensing deploys {sorted(KINDS.values())}, not {kind!r}")
    return _wrap(build_task_model(build), build)


def card(meta: dict[str, Any], source: Path) -> ModelCard:
    """The card of a downstream model with checkpoint metadata ``meta``."""
    size = int(meta["image_size"])
    task = meta["task"]
    names = [b["name"] for b in meta["bands"]]
    return ModelCard.for_transform(
        input_transform(meta),
        kind=KINDS[task],
        task="multilabel" if task == "multilabel" else "segmentation",
        out_channels=int(meta["outputs"]),
        activation="sigmoid",
        class_names=list(meta["label_names"]),
        build=meta,
        output_grid="fixed" if task == "curtain" else "input",
        details={
            "backbone": meta["encoder"]["name"],
            "peft": meta["peft"],
            "bands": meta["bands"],
            "pretrained_encoder": meta.get("checkpoint"),
            "source": str(source),
            "input": f"a chip [{len(names)}, {size}, {size}] in the store's units; invalid pixels 0",
            "output": "cloud curtain [1, 91, 40] (along-track samples x height bins)" if task == "curtain" else task,
        },
    )


def deployable(path: Path) -> Deployable:
    """The downstream model in ``path`` (trained weights) as a deployable network."""
    model, meta = load_task_model(path)
    return Deployable(_wrap(model, meta), card(meta, path), Path(path))
