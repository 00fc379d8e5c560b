"""GMS: mapper shape and size, frozen VAE, gradient path through the decoder, checkpoints, mask round trip."""

from pathlib import Path

import pytest
import torch

from domainfm.domains.segmentation.mapper import LatentMapper
from domainfm.domains.segmentation.models import (
    GMSSegmenter,
    SegmentationCheckpointError,
    load_segmenter,
    load_vae,
    save_segmenter,
)
from domainfm.domains.segmentation.vae import SD_VAE, TINY_VAE, create_vae

REFERENCE_MAPPER_PARAMETERS = 1_564_976  # gms.md: computed from the authors' ResAttnUNet_DS


def test_mapper_at_paper_size_matches_the_reference_count_within_the_unused_head():
    mapper = LatentMapper(channels=4, base=32)
    total = sum(p.numel() for p in mapper.parameters())
    unused_head = sum(p.numel() for p in mapper.heads["level3"].parameters())
    assert abs(total - REFERENCE_MAPPER_PARAMETERS) < unused_head
    assert 1.5e6 < total < 1.6e6


def test_sd_vae_gives_28x28_latents_for_224_inputs_and_the_mapper_never_downsamples():
    with torch.device("meta"):
        vae = create_vae(SD_VAE)
        mean, _ = vae.encode(torch.empty(1, 3, 224, 224))
    assert tuple(mean.shape) == (1, 4, 28, 28)
    outputs = LatentMapper(channels=4, base=8, groups=4)(torch.randn(2, 4, 28, 28))
    assert list(outputs) == ["level3", "level2", "level1", "out"]
    assert all(tuple(v.shape) == (2, 4, 28, 28) for v in outputs.values())


def test_gms_is_deterministic_in_eval_and_returns_a_probability_tensor():
    model = GMSSegmenter(create_vae(TINY_VAE), TINY_VAE, {"base": 8, "groups": 4}).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first, second = model(x), model(x)
    assert isinstance(first, torch.Tensor) and tuple(first.shape) == (2, 1, 32, 32)
    assert torch.equal(first, second)
    assert float(first.min()) >= 0 and float(first.max()) <= 1


def test_decoded_dice_loss_reaches_the_mapper_through_the_frozen_decoder_only():
    from monai.losses import DiceLoss

    model = GMSSegmenter(create_vae(TINY_VAE), TINY_VAE, {"base": 8, "groups": 4}).train()
    assert not model.vae.training  # train() leaves the VAE in eval mode
    images, masks = torch.rand(2, 3, 32, 32) * 2 - 1, (torch.rand(2, 1, 32, 32) > 0.5).float()
    DiceLoss()(model.decode_mask(model.mapper(model.image_latent(images))["out"]), masks).backward()
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mapper.stem.parameters())


def test_training_changes_the_mapper_and_leaves_every_vae_parameter_equal(site_stores, trained_vae):
    from domainfm.domains.segmentation.train import train_segmenter
    from domainfm.shared.tiles.store import TileStore

    vae, config = load_vae(trained_vae)
    model = GMSSegmenter(vae, config, {"base": 8, "groups": 4})
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    mapper_before = {k: v.clone() for k, v in model.mapper.state_dict().items()}
    history = train_segmenter(model, TileStore(site_stores["site_a"]), epochs=1, device="cpu", progress=False)
    assert all(torch.equal(v, vae_before[k]) for k, v in model.vae.state_dict().items())
    assert any(not torch.equal(v, mapper_before[k]) for k, v in model.mapper.state_dict().items())
    assert history["trainable_parameters"] == sum(p.numel() for p in model.mapper.parameters())
    assert len(history["val_history"]) == 1


def test_trained_tiny_vae_reconstructs_exact_masks_with_dice_above_0_9(site_stores, trained_vae):
    from domainfm.domains.segmentation.metrics import dice_iou
    from domainfm.shared.tiles.store import TileStore

    vae, config = load_vae(trained_vae)
    model = GMSSegmenter(vae, config)
    masks = torch.from_numpy(TileStore(site_stores["site_a"]).companion("mask")[:]).float()
    with torch.no_grad():
        reconstructed = model.decode_mask(model.mask_latent(masks))
    dice, _ = dice_iou(reconstructed > 0.5, masks > 0.5)
    assert float(dice.mean()) > 0.9


def test_checkpoint_round_trip_and_clear_errors(tmp_path: Path, trained_vae):
    vae, config = load_vae(trained_vae)
    model = GMSSegmenter(vae, config, {"base": 8, "groups": 4}).eval()
    path = save_segmenter(model, tmp_path / "gms.safetensors", image_size=64)
    loaded, meta = load_segmenter(path)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["kind"] == "gms" and meta["trainable_parameters"] == sum(p.numel() for p in model.mapper.parameters())
    assert all(not p.requires_grad for p in loaded.vae.parameters())
    with pytest.raises(SegmentationCheckpointError, match="is a VAE"):
        load_segmenter(trained_vae)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SegmentationCheckpointError, match=r"junk\.safetensors"):
        load_segmenter(tmp_path / "junk.safetensors")


def test_a_stopped_training_resumes_from_its_last_epoch(tmp_path: Path, site_stores):
    from domainfm.domains.segmentation.models import UNetSegmenter
    from domainfm.domains.segmentation.train import train_segmenter
    from domainfm.shared.tiles.store import TileStore

    store = TileStore(site_stores["site_a"])
    first = train_segmenter(UNetSegmenter([8, 16], [2]), store, 2, device="cpu", progress=False, resume_dir=tmp_path)
    assert (tmp_path / "last.ckpt").is_file()
    model = UNetSegmenter([8, 16], [2])
    resumed = train_segmenter(model, store, 3, device="cpu", progress=False, resume_dir=tmp_path)
    assert [h["epoch"] for h in resumed["val_history"]] == [0, 1, 2]  # epochs 0-1 restored, only epoch 2 run
    assert len(resumed["losses"]) == len(first["losses"]) // 2
    assert resumed["val_history"][:2] == first["val_history"]
