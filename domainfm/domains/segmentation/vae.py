"""The frozen image/mask autoencoder of GMS: MONAI's ``AutoencoderKL`` in the Stable-Diffusion layout.

GMS (Huo et al., AAAI 2025, arXiv 2403.18198) encodes images and masks with the first stage of Stable
Diffusion 2 and never trains it. MONAI's ``AutoencoderKL`` differs from that first stage in two places, so
:func:`create_vae` builds the MONAI network and swaps two of its parts for MONAI parts of SD's shape:

* the **encoder** outputs ``2 x latent_channels`` (SD's ``double_z``) and the two 1x1 ``quant_conv_mu`` /
  ``quant_conv_log_sigma`` read all of them: together exactly SD's joint 8->8 ``quant_conv`` split into its
  mean and log-variance rows, so converted SD weights give SD's posterior mean *and* variance;
* the **decoder** has ``num_res_blocks + 1`` residual blocks per level, as SD's (MONAI's has
  ``num_res_blocks``);
* a **SiLU** between the last GroupNorm and the output convolution of both halves: SD (and LDM, and
  diffusers) apply it, MONAI 1.6's ``Encoder``/``Decoder`` do not (found by comparing with
  ``diffusers.AutoencoderKL`` on the same weights; without it SD weights give wrong latents).

At :data:`SD_VAE` this is 34.16 M encoder and 49.49 M decoder parameters, SD's count. The offline default
is a small VAE of the same layout trained by ``domainfm segmentation train-vae``
(:data:`TINY_VAE`). The latent is ``posterior mean x scaling_factor`` (0.18215 for SD; for a VAE trained
here, one over the standard deviation of its image latents, measured after training).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from domainfm.shared.optional import require


@dataclass(frozen=True)
class VAEConfig:
    """Shape of an SD-layout ``AutoencoderKL`` (2D, image in and out).

    Attributes:
        channels: Width per resolution level; the latent is ``2 ** (len(channels) - 1)`` times smaller.
        num_res_blocks: Encoder residual blocks per level (the decoder has one more, as SD's).
        latent_channels: Latent channels (4 in SD).
        norm_num_groups: GroupNorm groups (must divide every width).
        in_channels: Image channels (3: masks are replicated to RGB, as in GMS).
        scaling_factor: Multiplies the posterior mean to give the latent GMS works in.
    """

    channels: tuple[int, ...] = (128, 256, 512, 512)
    num_res_blocks: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    in_channels: int = 3
    scaling_factor: float = 0.18215

    @property
    def downsampling(self) -> int:
        """Image pixels per latent pixel along each axis."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for checkpoint metadata)."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "channels": tuple(data["channels"])})


SD_VAE = VAEConfig()
TINY_VAE = VAEConfig(channels=(32, 64, 64), num_res_blocks=1, norm_num_groups=16, scaling_factor=1.0)


def _common_kwargs(config: VAEConfig) -> dict[str, Any]:
    """Keyword arguments shared by MONAI's ``Encoder`` and ``Decoder`` for one config."""
    return {
        "spatial_dims": 2,
        "channels": config.channels,
        "norm_num_groups": config.norm_num_groups,
        "norm_eps": 1e-6,
        "attention_levels": (False,) * len(config.channels),
        "with_nonlocal_attn": True,
        "include_fc": True,
        "use_combined_linear": False,
        "use_flash_attention": False,
    }


def create_vae(config: VAEConfig = TINY_VAE) -> nn.Module:
    """A MONAI ``AutoencoderKL`` in SD's layout (see the module docstring); random initialisation."""
    require("einops", "segmentation")  # MONAI's attention blocks import it lazily
    from monai.networks.blocks import Convolution
    from monai.networks.nets import AutoencoderKL
    from monai.networks.nets.autoencoderkl import Decoder, Encoder

    levels = len(config.channels)
    latent = config.latent_channels
    vae = AutoencoderKL(
        spatial_dims=2,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        num_res_blocks=(1,) * levels,  # placeholders: both halves are replaced below
        channels=config.channels,
        attention_levels=(False,) * levels,
        latent_channels=latent,
        norm_num_groups=config.norm_num_groups,
        norm_eps=1e-6,
        with_encoder_nonlocal_attn=True,
        with_decoder_nonlocal_attn=True,
    )
    common = _common_kwargs(config)
    vae.encoder = Encoder(
        in_channels=config.in_channels,
        out_channels=2 * latent,
        num_res_blocks=(config.num_res_blocks,) * levels,
        **common,
    )
    vae.decoder = Decoder(
        in_channels=latent,
        out_channels=config.in_channels,
        num_res_blocks=(config.num_res_blocks + 1,) * levels,
        use_convtranspose=False,
        **common,
    )

    for half in (vae.encoder, vae.decoder):  # SD: norm_out -> SiLU -> conv_out; MONAI omits the SiLU
        half.blocks.insert(len(half.blocks) - 1, nn.SiLU())

    def quant(in_channels: int) -> nn.Module:
        return Convolution(2, in_channels, latent, strides=1, kernel_size=1, padding=0, conv_only=True)

    vae.quant_conv_mu, vae.quant_conv_log_sigma = quant(2 * latent), quant(2 * latent)
    return vae


def freeze(module: nn.Module) -> nn.Module:
    """No gradients and eval mode for every parameter of ``module``; returns it."""
    module.requires_grad_(False)
    return module.eval()


def encode_mean(vae: nn.Module, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Posterior mean x scaling factor of images in [-1, 1] (the deterministic GMS latent)."""
    return vae.encode(images)[0] * scaling_factor


def encode_sample(vae: nn.Module, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """A posterior sample (mean + sigma x noise) x scaling factor: GMS's image-latent augmentation."""
    mean, sigma = vae.encode(images)
    return vae.sampling(mean, sigma) * scaling_factor


def decode_latent(vae: nn.Module, latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Inverse of the scaling, then the decoder: images in (about) [-1, 1]."""
    return vae.decode(latent / scaling_factor)


def count_parameters(module: nn.Module) -> int:
    """All parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
