"""How a raw input becomes a model's tensor, saved with the model: :class:`InputTransform`.

A foundation model is only as good as the preprocessing it is run with: the same weights give other
answers on a radiograph that is squashed instead of letterboxed, a tile standardised with another
scanner's statistics, or an ultrasound image slid over in windows when the model was trained on whole
images resized. So the transform is data (a JSON record in the checkpoint and in a bundle's card) and one
module (:class:`TransformModule`) that every door runs: ingest writes ``transform_array`` of a raw input
into the store, training and evaluation standardise store tiles with the same module, and
:class:`ContractModel` puts it in front of the network for ``predict``, MONAI bundles and explanations.

Steps, in order, on raw values ``[B, C, H, W]`` (what a file holds: 0..255 pixels, DICOM display values
x 255, a chip's band values):

1. **geometry** onto the model's ``size``: ``exact`` (refuse any other size: a slide tile at its
   mpp), ``resize`` (the whole image squashed to ``size``, as GMS trains; segmentation outputs are
   resized back), ``letterbox`` (longer side to ``size``, aspect kept, centred on ``fill``; as ConVIRT's
   radiographs), ``window`` (the input lies on the training pixel grid; larger inputs are predicted
   window by window, as chips of a granule);
2. **quantise** what the geometry resampled to the store's dtype (``uint8``: rounded and clipped to
   0..255, exactly what ingest stores of the same file; gradients pass straight through, so explanations
   still reach the raw input). An input already on the model's grid is taken as it is: a store tile or a
   picture holds integers already, and rounding it would make the function explained by integrated
   gradients piecewise constant along its path (completeness fails);
3. **channels**: when the record names ``input_channels`` (one ``grey`` channel) and the model takes
   several ``channels`` (an RGB foundation encoder run on radiographs), the grey values are replicated to
   every model channel; mean/std stay per model channel;
4. **standardise**: ``(x * scale - mean) / std`` per channel.

Bilinear resizing is ``torch.nn.functional.interpolate(..., antialias=True)`` (PIL's filter), in float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from domainfm.shared.errors import DomainfmError

GEOMETRIES = ("exact", "resize", "letterbox", "window")
QUANTISE_RANGES = {"uint8": (0.0, 255.0)}
OUTPUT_GRIDS = ("input", "fixed")
# Sliding-window settings for ``window`` geometry (and the bundle README that describes them).
SLIDING_WINDOW = {"sw_batch_size": 4, "overlap": 0.25, "mode": "gaussian"}


class TransformError(DomainfmError, ValueError):
    """An input the model's transform cannot take, or a malformed transform record."""


@dataclass
class InputTransform:
    """A model's preprocessing as data (see the module docstring).

    Attributes:
        channels: One name per input channel (``grey``, ``red``/``green``/``blue``, band names).
        size: ``[H, W]`` the network sees.
        geometry: ``exact``, ``resize``, ``letterbox`` or ``window``.
        scale: Raw value -> standardisation units (``1/255`` for pixels in 0..255).
        mean: Per-channel mean after ``scale`` (zeros when omitted).
        std: Per-channel standard deviation after ``scale`` (ones when omitted).
        quantise: ``uint8`` when the training store holds rounded 0..255 values; ``None`` for float data.
        input_range: The raw value range, e.g. ``[0, 255]`` (``None``: physical units, unbounded).
        fill: Raw value of letterbox padding (black air for radiographs).
        details: What a reader wants beside the maths: mpp, bands and their scaling, the display transform.
        input_channels: The raw input's channels when they differ from ``channels`` (the model's): only one
            channel (``["grey"]``), replicated to every model channel before standardising; ``None``: the
            input holds ``channels``. Omitted from :meth:`to_dict` when ``None`` (older records read as is).
    """

    channels: list[str]
    size: list[int]
    geometry: str = "exact"
    scale: float = 1.0
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    quantise: str | None = None
    input_range: list[float] | None = None
    fill: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    input_channels: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.channels)
        self.mean = [float(v) for v in self.mean] or [0.0] * n
        self.std = [float(v) for v in self.std] or [1.0] * n
        self.size = [int(v) for v in self.size]
        problems = []
        if self.geometry not in GEOMETRIES:
            problems.append(f"geometry {self.geometry!r} is not one of {GEOMETRIES}")
        if len(self.size) != 2 or min(self.size) < 1:
            problems.append(f"size {self.size} is not [H, W] with positive sides")
        if len(self.mean) != n or len(self.std) != n:
            problems.append(f"{len(self.mean)} means and {len(self.std)} stds for {n} channels")
        if not all(np.isfinite(s) and s > 0 for s in self.std) or not np.isfinite(self.scale) or self.scale == 0:
            problems.append(f"std {self.std} and scale {self.scale} must be finite and non-zero (std > 0)")
        if self.input_channels is not None:
            self.input_channels = [str(c) for c in self.input_channels]
            if len(self.input_channels) != 1 or n < 2:
                problems.append(
                    f"input_channels {self.input_channels} for model channels {self.channels}: only one input "
                    "channel replicated to several model channels is defined"
                )
        if self.quantise is not None and self.quantise not in QUANTISE_RANGES:
            problems.append(f"quantise {self.quantise!r} is not one of {sorted(QUANTISE_RANGES)} or null")
        if problems:
            raise TransformError("invalid input transform: " + "; ".join(problems))

    @property
    def raw_channels(self) -> list[str]:
        """The channels a raw input holds (``input_channels`` when set, else ``channels``)."""
        return list(self.input_channels or self.channels)

    @property
    def in_channels(self) -> int:
        """Number of input channels (of the raw input)."""
        return len(self.raw_channels)

    @property
    def model_channels(self) -> int:
        """Number of channels the network sees (after replicating a grey input)."""
        return len(self.channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (what checkpoints and bundle cards store)."""
        data = asdict(self)
        if data["input_channels"] is None:
            del data["input_channels"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputTransform:
        """Inverse of :meth:`to_dict`; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TransformError(f"input transform record has unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def module(self) -> TransformModule:
        """The transform as a module (raw ``[B, C, H, W]`` -> model tensor)."""
        return TransformModule(self)

    def describe(self) -> str:
        """One line for cards and READMEs."""
        h, w = self.size
        shape = {
            "exact": f"exactly {h}x{w} px",
            "resize": f"any size, resized to {h}x{w} (aspect not kept) and mapped back",
            "letterbox": f"any size, letterboxed to {h}x{w} (aspect kept, padded with {self.fill:g})",
            "window": f"{h}x{w} px or larger (predicted window by window)",
        }[self.geometry]
        stored = f", rounded to {self.quantise}" if self.quantise else ""
        mapped = f", replicated to {', '.join(self.channels)}" if self.input_channels else ""
        return f"{self.in_channels} channel(s) ({', '.join(self.raw_channels)}){mapped}, {shape}{stored}, standardised"


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, new_h, new_w)`` of an image of ``height x width`` letterboxed into ``size x size``."""
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def _bilinear(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def apply_geometry(images: torch.Tensor, size: list[int], geometry: str, fill: float = 0.0) -> torch.Tensor:
    """Raw float images ``[B, C, H, W]`` on the model's grid (``exact``/``window`` return them unchanged)."""
    if geometry == "resize":
        return _bilinear(images, (int(size[0]), int(size[1])))
    if geometry == "letterbox":
        if int(size[0]) != int(size[1]):
            raise TransformError(f"letterbox needs a square size, got {size}")
        side = int(size[0])
        height, width = images.shape[-2:]
        if (height, width) == (side, side):
            return images
        top, left, new_h, new_w = letterbox_box(height, width, side)
        if (new_h, new_w) == (side, side):  # a square picture fills the grid: no border to paste into
            return _bilinear(images, (side, side))
        canvas = images.new_full((*images.shape[:2], side, side), float(fill))
        canvas[..., top : top + new_h, left : left + new_w] = _bilinear(images, (new_h, new_w))
        return canvas
    return images


def transform_array(array: np.ndarray, transform: InputTransform) -> np.ndarray:
    """A raw ``[C, H, W]`` (or ``[H, W]``) array after geometry and quantisation: what a store holds.

    Ingest calls this, so a store tile is bit for bit what :class:`TransformModule` makes of the same raw
    input before standardising.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor[None, None] if tensor.ndim == 2 else tensor[None]
    with torch.no_grad():
        out = apply_geometry(tensor, transform.size, transform.geometry, transform.fill)
        if transform.quantise is not None:  # _quantise's values, without its straight-through gradient
            low, high = QUANTISE_RANGES[transform.quantise]
            out = torch.round(out).clamp_(low, high)
        if transform.quantise == "uint8":
            return out[0].to(torch.uint8).numpy()
        return out[0].numpy()


def _quantise(images: torch.Tensor, quantise: str | None) -> torch.Tensor:
    if quantise is None:
        return images
    low, high = QUANTISE_RANGES[quantise]
    rounded = torch.round(images).clamp(low, high)
    # Straight-through: the value is the rounded one (exactly: the difference is exact in float32 for
    # values within 0.5 of an integer), the gradient is the identity, so attributions reach the input.
    return images + (rounded - images).detach()


def standardise(
    tiles: torch.Tensor, mean: list[float] | torch.Tensor, std: list[float] | torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``(tiles * scale - mean) / std`` per channel, in float (the one standardisation of the suite).

    Training and evaluation call it on store tiles with the statistics a model was trained with;
    :class:`TransformModule` calls it in every deployed network.
    """
    tiles = tiles if tiles.is_floating_point() else tiles.float()
    shape = (1, -1, 1, 1)
    mean = torch.as_tensor(mean, dtype=tiles.dtype, device=tiles.device).reshape(shape)
    std = torch.as_tensor(std, dtype=tiles.dtype, device=tiles.device).reshape(shape)
    return (tiles * scale - mean) / std


def check_input(transform: InputTransform, images: torch.Tensor, maps: bool = False) -> None:
    """Refuses inputs a model with ``transform`` cannot take, naming what it takes.

    Wrong rank or channel count; another size under ``exact``; another size under ``window`` unless the
    outputs are ``maps`` on the input's grid (then a window slides).
    """
    if images.ndim != 4 or images.shape[1] != transform.in_channels:
        raise TransformError(
            f"the model takes inputs [B, {transform.in_channels}, H, W] ({', '.join(transform.raw_channels)}), "
            f"got {list(images.shape)}"
        )
    if list(images.shape[-2:]) == transform.size:
        return
    h, w = transform.size
    if transform.geometry == "exact":
        raise TransformError(
            f"the model takes exactly {h}x{w} inputs, got {images.shape[-2]}x{images.shape[-1]}: "
            f"tile or crop the input at the model's resolution first"
        )
    if transform.geometry == "window" and not maps:
        raise TransformError(
            f"the model takes {h}x{w} inputs (its outputs have no pixel grid to slide a window over), got "
            f"{images.shape[-2]}x{images.shape[-1]}"
        )


class TransformModule(nn.Module):
    """:class:`InputTransform` as a module; its constants are not part of the state dict."""

    def __init__(self, transform: InputTransform) -> None:
        super().__init__()
        self.record = transform
        shape = (1, transform.model_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(transform.mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(transform.std, dtype=torch.float32).view(shape), persistent=False)

    def check(self, images: torch.Tensor) -> None:
        """Refuse inputs of the wrong rank, channel count or (``exact``) size (:func:`check_input`)."""
        check_input(self.record, images)

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """Raw values on the model's grid (resampled ones quantised as the store holds them), not standardised."""
        self.check(images)
        record = self.record
        images = images if images.is_floating_point() else images.float()
        if list(images.shape[-2:]) == record.size:
            return images
        return _quantise(apply_geometry(images, record.size, record.geometry, record.fill), record.quantise)

    def channels(self, images: torch.Tensor) -> torch.Tensor:
        """A one-channel (grey) input replicated to the model's channels when the record says so."""
        if self.record.input_channels is None or images.shape[1] == self.record.model_channels:
            return images
        return images.expand(-1, self.record.model_channels, -1, -1)

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """``(x * scale - mean) / std`` of values already on the model's grid (store tiles), channels mapped."""
        return standardise(self.channels(images), self.mean, self.std, self.record.scale)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw ``[B, C, H, W]`` -> the network's input tensor."""
        return self.standardise(self.geometry(images))


def map_to_input(maps: torch.Tensor, size: tuple[int, int], transform: InputTransform) -> torch.Tensor:
    """Maps ``[B, C, h, w]`` on the model's grid back onto an input of ``size`` (inverse geometry).

    ``letterbox``: the image's box is cropped out of the padding first; then bilinear resizing. A map
    already at ``size`` is returned unchanged. Evaluation at native resolution uses this too.
    """
    height, width = int(size[0]), int(size[1])
    if transform.geometry == "letterbox" and (height, width) != tuple(transform.size):
        top, left, new_h, new_w = letterbox_box(height, width, transform.size[0])
        maps = maps[..., top : top + new_h, left : left + new_w]
    return _bilinear(maps, (height, width))


class ContractModel(nn.Module):
    """``InputTransform -> network`` as one module from raw inputs to scores.

    ``output_grid="input"`` (segmentation maps on the input's pixels): maps come back at the raw input's
    size (``resize``: resized back; ``letterbox``: the image's box cropped and resized back; ``window``:
    a sliding window of the training size, Gaussian-blended). ``"fixed"``: outputs with a shape of their
    own (classes, the 91 x 40 cloud curtain) are returned as the network gives them.
    """

    def __init__(self, transform: InputTransform, network: nn.Module, output_grid: str = "fixed") -> None:
        super().__init__()
        if output_grid not in OUTPUT_GRIDS:
            raise TransformError(f"output_grid {output_grid!r} is not one of {OUTPUT_GRIDS}")
        self.transform = TransformModule(transform)
        self.network = network
        self.output_grid = output_grid

    @property
    def record(self) -> InputTransform:
        """The transform record."""
        return self.transform.record

    def _direct(self, images: torch.Tensor) -> torch.Tensor:
        out = self.network(self.transform(images))
        if self.output_grid != "input":
            return out
        return map_to_input(out, tuple(images.shape[-2:]), self.record)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores of raw ``[B, C, H, W]`` inputs (see the class docstring)."""
        record = self.record
        check_input(record, images, maps=self.output_grid == "input")
        if record.geometry == "window" and list(images.shape[-2:]) != record.size:
            from monai.inferers import sliding_window_inference

            images = images if images.is_floating_point() else images.float()
            return sliding_window_inference(images, record.size, predictor=self._direct, **SLIDING_WINDOW)
        return self._direct(images)
