"""Per-tile randomness: given one generator per tile, every domain's views of a tile ignore its batch.

This is what lets a DDP step see the same inputs as one process on the global batch; the first half of a
batch augmented alone must equal the first half augmented with the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from domainfm.shared.engine.distributed import tile_generators

IDS = torch.tensor([11, 3, 25, 8])


def halves(function: Callable[..., Any], *tensors: torch.Tensor) -> tuple:
    """``function`` on the whole batch and on its first half, each with fresh per-tile generators."""
    whole = function(*tensors, tile_generators(IDS, seed=0, epoch=2))
    half = function(*(t[:2] for t in tensors), tile_generators(IDS[:2], seed=0, epoch=2))
    return whole, half


def test_convirt_augmentation_of_a_tile_ignores_its_batch():
    from domainfm.domains.radiology.convirt import augment_images

    images = torch.rand(4, 1, 32, 32)
    whole, half = halves(lambda x, g: augment_images(x, 0.5, g, 1.0), images)
    torch.testing.assert_close(whole[:2], half)
    assert not torch.equal(whole[0], whole[1])


def test_pluto_views_and_masks_of_a_tile_ignore_its_batch():
    from domainfm.domains.pathology.pluto_views import batch_token_masks, batch_views, multi_crop

    images = torch.randn(4, 3, 32, 32)
    whole, half = halves(lambda x, g: batch_views(x, 2, 16, (0.4, 1.0), g, 0.1), images)
    views = whole.view(2, 4, 3, 16, 16)  # view-major
    torch.testing.assert_close(views[:, :2], half.view(2, 2, 3, 16, 16))
    one = multi_crop(images[1:2], 2, 16, (0.4, 1.0), tile_generators(IDS[1:2], seed=0, epoch=2)[0], 0.1)
    torch.testing.assert_close(views[:, 1], one)  # the batched draws are multi_crop's, image by image
    masks = batch_token_masks(2, 4, 16, 0.5, tile_generators(IDS, 0, 2), torch.device("cpu")).view(2, 4, 16)
    alone = batch_token_masks(2, 2, 16, 0.5, tile_generators(IDS[:2], 0, 2), torch.device("cpu")).view(2, 2, 16)
    assert torch.equal(masks[:, :2], alone) and int(masks.sum()) == 8 * 8


def test_simmim_crops_and_masks_of_a_chip_ignore_its_batch():
    from domainfm.domains.remote_sensing.pretrain import random_resized_crop
    from domainfm.domains.remote_sensing.simmim import MaskGenerator

    chips, valid = torch.rand(4, 3, 32, 32), (torch.rand(4, 3, 32, 32) > 0.1).float()
    (whole_chips, whole_valid), (half_chips, half_valid) = halves(random_resized_crop, chips, valid)
    torch.testing.assert_close(whole_chips[:2], half_chips)
    assert torch.equal(whole_valid[:2], half_valid)
    generator = MaskGenerator(32, 8, 4, 0.6)
    assert torch.equal(generator(4, tile_generators(IDS, 0, 2))[:2], generator(2, tile_generators(IDS[:2], 0, 2)))


def test_segmentation_flips_and_jitter_of_a_pair_ignore_its_batch():
    from domainfm.domains.segmentation.train import augment_pair

    images, masks = torch.rand(4, 3, 16, 16) * 2 - 1, (torch.rand(4, 1, 16, 16) > 0.5).float()
    (whole_images, whole_masks), (half_images, half_masks) = halves(augment_pair, images, masks)
    torch.testing.assert_close(whole_images[:2], half_images)
    assert torch.equal(whole_masks[:2], half_masks)
