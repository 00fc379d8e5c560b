"""An encoder's input transform, carried from its checkpoint to every model trained on it.

A pretrained encoder is standardised one way only: the way it was trained. So every encoder checkpoint
carries an :class:`~domainfm.shared.model.transform.InputTransform` record (``meta["transform"]``; a
converted foundation checkpoint's ``domainfm_foundation`` entry), and downstream verbs take their
preprocessing from it instead of copying mean/std by hand:

* :func:`record_or` reads the record, or derives one from an older checkpoint's metadata;
* :func:`fit_store` checks the record against the tile store the encoder is run on (channels and size)
  and maps a one-channel (grey) store onto a several-channel encoder by replicating the grey values
  (the record's ``input_channels``; mean/std stay the encoder's, per channel);
* :func:`tile_input` is the one function that turns store tiles into the encoder's input tensor
  (geometry to the model's size, channel mapping, ``(x * scale - mean) / std``);
* :func:`downstream_transform` is a downstream model's record: the encoder's channels, scale, mean/std,
  quantisation, value range and fill, with the downstream model's size, geometry and details;
* :func:`foundation_encoder` opens a converted foundation checkpoint (``domainfm models convert``) as an
  encoder: ``load_backbone(file)`` (pooling included) and the file's record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from domainfm.shared.model.transform import InputTransform, TransformError, TransformModule

if TYPE_CHECKING:
    from domainfm.shared.backbones.wrapper import Backbone


def record_or(meta: dict[str, Any], derive: Callable[[], InputTransform]) -> InputTransform:
    """The record ``meta["transform"]`` holds; ``derive()`` for checkpoints written before records were saved."""
    record = meta.get("transform")
    return InputTransform.from_dict(record) if record else derive()


def downstream_transform(
    encoder: InputTransform,
    size: list[int] | None = None,
    geometry: str | None = None,
    details: dict[str, Any] | None = None,
) -> InputTransform:
    """A downstream model's record, started from its encoder's (same channels, scale, mean/std, range, fill).

    Args:
        encoder: The encoder's record.
        size: The downstream model's input size (the encoder's when ``None``).
        geometry: How the downstream model takes other sizes (the encoder's when ``None``).
        details: Merged over the encoder's details (e.g. the training store's mpp).
    """
    return replace(
        encoder,
        size=list(size or encoder.size),
        geometry=geometry or encoder.geometry,
        mean=list(encoder.mean),
        std=list(encoder.std),
        details={**encoder.details, **(details or {})},
    )


def fit_store(record: InputTransform, channels: int, tile_size: int, source: str | Path) -> InputTransform:
    """``record`` as it runs on store tiles of ``channels`` x ``tile_size`` x ``tile_size`` values.

    * same channel count: unchanged;
    * a one-channel store and an encoder of several channels (grey radiographs, an RGB encoder): the record
      with ``input_channels=["grey"]``, so the grey values are replicated to every encoder channel and
      standardised with the encoder's per-channel mean/std;
    * any other count, or store tiles of another size under ``exact`` or ``window`` geometry: an error
      naming ``source`` (the encoder file) and what would fit.
    """
    if record.in_channels != channels:
        if channels == 1 and record.input_channels is None and record.model_channels > 1:
            record = replace(record, input_channels=["grey"], details=dict(record.details))
        else:
            raise TransformError(
                f"{source}: the encoder takes {record.in_channels} channel(s) ({', '.join(record.raw_channels)}); "
                f"the store's tiles have {channels}. Use an encoder trained on {channels}-channel inputs, or a "
                f"store of {record.in_channels}-channel tiles"
            )
    if [tile_size, tile_size] != record.size and record.geometry in ("exact", "window"):
        raise TransformError(
            f"{source}: the encoder takes exactly {record.size[0]}x{record.size[1]} tiles ({record.geometry} "
            f"geometry); the store's are {tile_size}x{tile_size}. Tile the store at {record.size[0]} px"
        )
    return record


def tile_input(record: InputTransform) -> Callable[[torch.Tensor], torch.Tensor]:
    """Store tiles ``[B, C, H, W]`` (raw values) -> the encoder's input tensor, by :class:`TransformModule`.

    Geometry (tiles of another size are resized, letterboxed, and rounded as the record says), the channel
    mapping and the standardisation; the module follows the tiles to their device.
    """
    module = TransformModule(record)

    def prepare(tiles: torch.Tensor) -> torch.Tensor:
        if module.mean.device != tiles.device:
            module.to(tiles.device)
        return module(tiles)

    return prepare


def is_foundation_checkpoint(path: str | Path | None) -> bool:
    """Whether ``path`` is a converted foundation checkpoint (``domainfm models convert``)."""
    from domainfm.shared.foundation.convert import read_foundation_metadata

    return path is not None and read_foundation_metadata(path) is not None


def foundation_encoder(path: str | Path) -> tuple[Backbone, InputTransform, dict[str, Any]]:
    """A converted foundation checkpoint as an encoder: its backbone, its record and its foundation metadata.

    The backbone is ``load_backbone(path)`` (the file's ``domainfm_backbone`` arguments: architecture,
    pooling, timm overrides); the embedding is ``backbone(x)`` of ``TransformModule(record)`` of raw inputs.
    """
    from domainfm.shared.backbones.wrapper import load_backbone
    from domainfm.shared.foundation.convert import read_foundation_metadata

    meta = read_foundation_metadata(path)
    if meta is None:
        raise TransformError(
            f"{path} is not a converted foundation checkpoint; convert it with `domainfm models convert`"
        )
    record = InputTransform.from_dict(meta["transform"])
    backbone = load_backbone(path)
    if backbone.in_chans != record.model_channels:
        raise TransformError(
            f"{path}: the backbone takes {backbone.in_chans} channels but its transform record names "
            f"{record.model_channels}; convert the file again"
        )
    return backbone, record, meta
