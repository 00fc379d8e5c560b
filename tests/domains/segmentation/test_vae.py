"""The SD-layout MONAI VAE: parameter counts, SD weight conversion, and diffusers equivalence."""

from pathlib import Path

import pytest
import torch

from domainfm.domains.segmentation.sd_vae import (
    SDVAEError,
    diffusers_to_monai,
    load_sd_vae,
    monai_to_diffusers,
)
from domainfm.domains.segmentation.vae import SD_VAE, VAEConfig, count_parameters, create_vae

diffusers = pytest.importorskip("diffusers")
SMALL = VAEConfig(channels=(32, 64, 64), num_res_blocks=2, norm_num_groups=16)


def diffusers_vae(config: VAEConfig) -> torch.nn.Module:
    levels = len(config.channels)
    return diffusers.AutoencoderKL(
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        block_out_channels=config.channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=config.num_res_blocks,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
    ).eval()


def test_sd_layout_has_sd_parameter_counts():
    with torch.device("meta"):
        vae = create_vae(SD_VAE)
    encoder = (
        count_parameters(vae.encoder) + count_parameters(vae.quant_conv_mu) + count_parameters(vae.quant_conv_log_sigma)
    )
    decoder = count_parameters(vae.decoder) + count_parameters(vae.post_quant_conv)
    assert (encoder, decoder) == (34_163_664, 49_490_199)  # SD 2 first stage: 34.16 M + 49.49 M


def test_every_sd_key_maps_onto_the_monai_vae_with_its_shape():
    with torch.device("meta"):
        reference = diffusers_vae(SD_VAE).state_dict()
        ours = create_vae(SD_VAE).state_dict()
    converted = diffusers_to_monai(dict(reference), SD_VAE)
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def test_conversion_round_trips_a_random_diffusers_state_dict():
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in diffusers_vae(SMALL).state_dict().items()}
    back = monai_to_diffusers(diffusers_to_monai(dict(state), SMALL), SMALL)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_converted_vae_computes_what_diffusers_computes(tmp_path: Path):
    reference = diffusers_vae(SMALL)
    with torch.no_grad():  # random weights everywhere, so no layer hides behind a zero init
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.05)
    reference.save_pretrained(tmp_path / "vae")
    ours, config = load_sd_vae(tmp_path / "vae")
    assert config.channels == SMALL.channels and config.scaling_factor == pytest.approx(0.18215)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        posterior = reference.encode(x).latent_dist
        mean, sigma = ours.eval().encode(x)
        torch.testing.assert_close(mean, posterior.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sigma, posterior.std, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.decode(mean), reference.decode(posterior.mean).sample, atol=1e-4, rtol=1e-4)


def _to_ldm(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Test-side renaming of diffusers keys to the original LDM names (the inverse of what loading does)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("encoder.down_blocks."):
            i, kind = parts[2], parts[3]
            rest = ".".join(parts[5:])
            key = (
                f"encoder.down.{i}.block.{parts[4]}.{rest}"
                if kind == "resnets"
                else f"encoder.down.{i}.downsample.{rest}"
            )
        elif key.startswith("decoder.up_blocks."):
            i, kind = levels - 1 - int(parts[2]), parts[3]
            rest = ".".join(parts[5:])
            key = f"decoder.up.{i}.block.{parts[4]}.{rest}" if kind == "resnets" else f"decoder.up.{i}.upsample.{rest}"
        elif ".mid_block.resnets." in key:
            key = key.replace(f"mid_block.resnets.{parts[3]}", f"mid.block_{int(parts[3]) + 1}")
        elif ".mid_block.attentions.0." in key:
            leaf = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
            key = f"{parts[0]}.mid.attn_1.{leaf}.{parts[-1]}"
            if leaf != "norm" and value.ndim == 2:
                value = value[:, :, None, None]
        key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        out[key] = value
    return out


def test_original_ldm_checkpoint_loads_to_the_same_model(tmp_path: Path):
    from safetensors.torch import save_file

    reference = diffusers_vae(SMALL)
    ldm = {"first_stage_model." + k: v for k, v in _to_ldm(reference.state_dict(), len(SMALL.channels)).items()}
    assert any(".mid.attn_1.q.weight" in k for k in ldm)
    save_file({k: v.contiguous() for k, v in ldm.items()}, tmp_path / "sd.safetensors")
    ours, _ = load_sd_vae(tmp_path / "sd.safetensors", norm_num_groups=SMALL.norm_num_groups)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x)[0], reference.encode(x).latent_dist.mean, atol=1e-5, rtol=1e-4)


def test_a_file_that_is_not_a_vae_is_refused_by_name(tmp_path: Path):
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "classifier.safetensors")
    with pytest.raises(SDVAEError, match=r"classifier\.safetensors"):
        load_sd_vae(tmp_path / "classifier.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SDVAEError, match="not a diffusers VAE folder"):
        load_sd_vae(tmp_path / "empty")
