"""Segmenters with one contract, and their checkpoints.

Every segmenter maps images scaled to [-1, 1] (``[B, 3, H, W]``) to a foreground probability
(``[B, 1, H, W]``) and returns a plain tensor, so MONAI bundles and ``verify_net_in_out`` can run it:

* :class:`GMSSegmenter`: frozen VAE encoder -> trainable :class:`.mapper.LatentMapper` -> frozen VAE
  decoder -> channel mean -> [0, 1] (Huo et al., AAAI 2025, arXiv 2403.18198, "Inference");
* :class:`UNetSegmenter`: MONAI's ``UNet``, the baseline of the GMS paper's tables, with a sigmoid.

Checkpoints are single safetensors files whose metadata rebuilds the network (kind, VAE config, network
options, image size), so ``eval`` and ``export`` need nothing else; the frozen VAE travels inside a GMS
checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainfm.domains.segmentation.mapper import LatentMapper
from domainfm.domains.segmentation.vae import (
    VAEConfig,
    create_vae,
    decode_latent,
    encode_mean,
    encode_sample,
    freeze,
)
from domainfm.shared.errors import DomainfmError
from domainfm.shared.model import standardise
from domainfm.shared.tasks.checkpoint import load_weights, read_checkpoint_metadata, save_checkpoint

METADATA_KEY = "domainfm_segmentation"
PRODUCER = "domainfm segmentation train/train-vae"
TINY_UNET = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}
PAPER_UNET = {"channels": [32, 64, 128, 256, 512], "strides": [2, 2, 2, 2], "num_res_units": 2}


class SegmentationCheckpointError(DomainfmError, ValueError):
    """A file that is not a domainfm segmentation checkpoint of the expected kind."""


def to_model_range(tiles: torch.Tensor) -> torch.Tensor:
    """uint8 tiles (or floats in 0..255) -> float images in [-1, 1] (``data.image_transform``'s standardisation)."""
    return standardise(tiles, [0.5], [0.5], scale=1 / 255)


class GMSSegmenter(nn.Module):
    """Generative segmentation in a frozen VAE's latent space.

    Args:
        vae: An SD-layout ``AutoencoderKL`` (:func:`.vae.create_vae`); frozen here.
        vae_config: Its config (for the latent scaling factor).
        mapper: Options of :class:`LatentMapper`.
    """

    def __init__(self, vae: nn.Module, vae_config: VAEConfig, mapper: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.vae = freeze(vae)
        self.vae_config = vae_config
        self.mapper_options = {"channels": vae_config.latent_channels, **(mapper or {})}
        self.mapper = LatentMapper(**self.mapper_options)

    def train(self, mode: bool = True) -> GMSSegmenter:
        """Train mode for the mapper only: the VAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def image_latent(self, images: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled posterior mean (or a posterior sample) of images in [-1, 1]."""
        encode = encode_sample if sample else encode_mean
        return encode(self.vae, images, self.vae_config.scaling_factor)

    def mask_latent(self, masks: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean of 0/1 masks ``[B, 1, H, W]`` replicated to RGB in [-1, 1]."""
        return encode_mean(self.vae, masks.float().expand(-1, 3, -1, -1) * 2 - 1, self.vae_config.scaling_factor)

    def decode_mask(self, latent: torch.Tensor) -> torch.Tensor:
        """Decoded latent -> channel mean -> [0, 1] probability ``[B, 1, H, W]``."""
        decoded = decode_latent(self.vae, latent, self.vae_config.scaling_factor)
        return ((decoded.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``[B, 1, H, W]`` of images in [-1, 1] (deterministic: posterior means)."""
        return self.decode_mask(self.mapper(self.image_latent(images))["out"])


class UNetSegmenter(nn.Module):
    """MONAI ``UNet`` (2D, 3 channels in, 1 out) with a sigmoid; ``logits`` for training."""

    def __init__(self, channels: list[int], strides: list[int], num_res_units: int = 2) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.options = {"channels": list(channels), "strides": list(strides), "num_res_units": num_res_units}
        self.unet = UNet(2, 3, 1, channels=channels, strides=strides, num_res_units=num_res_units)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground logits."""
        return self.unet(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``[B, 1, H, W]`` of images in [-1, 1]."""
        return torch.sigmoid(self.unet(images))


def trainable_parameters(model: nn.Module) -> int:
    """Parameters that training updates (the mapper of a GMS model; all of a UNet)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe(model: nn.Module) -> dict[str, Any]:
    """The metadata that rebuilds ``model``."""
    if isinstance(model, GMSSegmenter):
        return {"kind": "gms", "vae": model.vae_config.to_dict(), "mapper": model.mapper_options}
    if isinstance(model, UNetSegmenter):
        return {"kind": "unet", "unet": model.options}
    raise TypeError(f"not a domainfm segmenter: {type(model).__name__} (save a VAE with save_vae)")


def save_segmenter(model: nn.Module, path: str | Path, **extra: Any) -> Path:
    """Writes ``model`` (weights + the metadata that rebuilds it + ``extra``) to one safetensors file."""
    meta = {**describe(model), "trainable_parameters": trainable_parameters(model), **extra}
    if "image_size" in meta:  # the input transform record (data/image_transform) a deployed segmenter runs
        from domainfm.domains.segmentation.data import image_transform

        meta["transform"] = image_transform(int(meta["image_size"])).to_dict()
    return save_checkpoint(path, model.state_dict(), {METADATA_KEY: meta})


def save_vae(vae: nn.Module, config: VAEConfig, path: str | Path, **extra: Any) -> Path:
    """Writes a VAE and its config to one safetensors file."""
    return save_checkpoint(path, vae.state_dict(), {METADATA_KEY: {"kind": "vae", "vae": config.to_dict(), **extra}})


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The domainfm metadata of a segmentation checkpoint (raises a clear error for other files)."""
    return read_checkpoint_metadata(path, METADATA_KEY, PRODUCER, SegmentationCheckpointError)


def load_vae(path: str | Path) -> tuple[nn.Module, VAEConfig]:
    """A VAE from a domainfm VAE checkpoint, or from local Stable-Diffusion VAE weights (any layout)."""
    path = Path(path)
    meta = None
    if path.is_file() and path.suffix == ".safetensors":
        from domainfm.shared.tasks.checkpoint import checkpoint_metadata

        if METADATA_KEY in checkpoint_metadata(path, SegmentationCheckpointError):
            meta = read_metadata(path)  # ours: damaged metadata is an error, not SD weights
    if meta is None:
        from domainfm.domains.segmentation.sd_vae import load_sd_vae

        vae, config = load_sd_vae(path)
        return freeze(vae), config
    if meta.get("kind") != "vae":
        raise SegmentationCheckpointError(f"{path} is a {meta.get('kind')} checkpoint, not a VAE")
    try:
        config = VAEConfig.from_dict(meta["vae"])
        vae = create_vae(config)
    except (KeyError, TypeError, AttributeError, ValueError) as cause:
        raise _bad_field(path, cause) from cause
    load_weights(vae, path, PRODUCER, SegmentationCheckpointError)
    return freeze(vae), config


def _bad_field(path: Path, cause: Exception) -> SegmentationCheckpointError:
    return SegmentationCheckpointError(
        f"{path}: its {METADATA_KEY} metadata lacks or mistypes a field ({type(cause).__name__}: {cause}); "
        f"recreate it with `{PRODUCER}`"
    )


def build_segmenter(meta: dict[str, Any]) -> nn.Module:
    """A randomly initialised segmenter of the kind and shape ``meta`` describes."""
    if meta.get("kind") == "gms":
        config = VAEConfig.from_dict(meta["vae"])
        return GMSSegmenter(create_vae(config), config, meta["mapper"])
    if meta.get("kind") == "unet":
        return UNetSegmenter(**meta["unet"])
    raise SegmentationCheckpointError(f"unknown segmenter kind {meta.get('kind')!r}; expected 'gms' or 'unet'")


def load_segmenter(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained segmenter (eval mode) and its metadata."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("kind") == "vae":
        raise SegmentationCheckpointError(f"{path} is a VAE; give a checkpoint from `segmentation train`")
    try:
        model = build_segmenter(meta)
    except (KeyError, TypeError, AttributeError, ValueError) as cause:
        if isinstance(cause, SegmentationCheckpointError):
            raise
        raise _bad_field(path, cause) from cause
    load_weights(model, path, PRODUCER, SegmentationCheckpointError)
    if isinstance(model, GMSSegmenter):
        freeze(model.vae)
    return model.eval(), meta
