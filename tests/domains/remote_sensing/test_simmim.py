"""SimMIM: masks, a loss that ignores unmasked and invalid pixels, and band-name remapping of checkpoints."""

import math
from pathlib import Path

import pytest
import torch

from domainfm.domains.remote_sensing.pretrain import load_encoder, remap_patch_embedding, save_simmim
from domainfm.domains.remote_sensing.simmim import MaskGenerator, SimMIM
from domainfm.shared.backbones import create_backbone


def test_mask_generator_masks_ceil_ratio_cells_repeated_onto_the_token_grid():
    masks = MaskGenerator(input_size=128, mask_patch=8, model_patch=4, ratio=0.6)(3, torch.Generator().manual_seed(0))
    assert masks.shape == (3, 32, 32)
    cells = masks[:, ::2, ::2]
    assert torch.all(cells.flatten(1).sum(1) == math.ceil(0.6 * 256))  # SatVision: 154 of 256 cells
    assert torch.equal(masks, cells.repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert not torch.equal(masks[0], masks[1])


def test_unmasked_and_invalid_pixels_never_enter_the_loss(monkeypatch: pytest.MonkeyPatch):
    model = SimMIM(create_backbone("test_swinv2", in_chans=3, img_size=32), 32)
    reconstruction = torch.zeros(1, 3, 32, 32)  # below every image value: each +100 adds exactly 100
    monkeypatch.setattr(model, "reconstruct", lambda images, mask: reconstruction)
    mask = torch.zeros(1, 32 // model.patch_size, 32 // model.patch_size)
    mask[0, :2, :2] = 1  # the top-left 2x2 tokens are masked
    valid = torch.ones(1, 3, 32, 32)
    valid[0, 0, 0, 0] = 0  # one masked pixel of band 0 is a fill value
    images = torch.rand(1, 3, 32, 32)
    base = model(images, mask, valid)
    changed = images.clone()
    changed[0, :, 20:, 20:] += 100  # unmasked pixels
    changed[0, 0, 0, 0] += 100  # the invalid masked pixel
    assert float(model(changed, mask, valid)) == pytest.approx(float(base))
    changed[0, 1, 0, 0] += 100  # a valid masked pixel
    assert float(model(changed, mask, valid)) == pytest.approx(float(base) + 100 / (3 * 8 * 8 - 1), rel=1e-3)


def band(name: str, quantity: str) -> dict:
    return {"name": name, "quantity": quantity}


def test_patch_embedding_remaps_by_band_name_and_initialises_new_bands_from_their_kind():
    source = [band("B01", "reflectance"), band("B02", "reflectance"), band("B31", "brightness_temperature")]
    weight = torch.randn(8, 3, 4, 4)
    target = [band("B31", "brightness_temperature"), band("B01", "reflectance"), band("B03", "reflectance")]
    remapped = remap_patch_embedding(weight, source, target)
    assert torch.equal(remapped[:, 0], weight[:, 2]) and torch.equal(remapped[:, 1], weight[:, 0])
    assert torch.allclose(remapped[:, 2], weight[:, :2].mean(dim=1))


def test_a_checkpoint_loads_onto_another_band_set_exactly_for_shared_bands(tmp_path: Path):
    source = [band("B01", "reflectance"), band("B02", "reflectance"), band("B31", "brightness_temperature")]
    model = SimMIM(create_backbone("test_swinv2", in_chans=3, img_size=32), 32)
    meta = {"backbone": "test_swinv2", "image_size": 32, "mask_patch": 8, "mask_ratio": 0.6, "input_transform": None}
    path = save_simmim(model, source, meta, tmp_path / "simmim.safetensors")
    target = [band("B31", "brightness_temperature"), band("B02", "reflectance"), band("B29", "brightness_temperature")]
    encoder, _ = load_encoder(path, target)
    original = model.backbone.state_dict()
    loaded = encoder.state_dict()
    key = "model.patch_embed.proj.weight"
    assert torch.equal(loaded[key][:, 0], original[key][:, 2]) and torch.equal(loaded[key][:, 1], original[key][:, 1])
    assert torch.equal(loaded[key][:, 2], original[key][:, 2])  # the only emissive source band
    assert all(torch.equal(v, original[k]) for k, v in loaded.items() if k != key)
