"""The curtain head places clouds at heights read from the features, wherever they lie in the chip.

SatVision's FCN decoder resizes a 2-D map to the 91 x 40 curtain, so height bin k comes from chip column
k x W / 40; a Swin encoder cannot tell those columns apart, and on chips of one uniform value such a head
predicts the same profile in every group of height bins. :class:`CurtainHead` reads heights from channels.
"""

import numpy as np
import torch
from torch import nn

from domainfm.domains.remote_sensing.curtain import CURTAIN_SHAPE
from domainfm.domains.remote_sensing.downstream import CurtainHead, DownstreamModel
from domainfm.shared.backbones import create_backbone


def _uniform_chips_and_single_layer_curtains(levels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Chips of one value each; the curtain holds a 4-bin cloud layer whose height follows that value."""
    chips = torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 32, 32).contiguous()
    curtains = torch.zeros(len(levels), *CURTAIN_SHAPE)
    for i, level in enumerate(levels):
        bottom = round(level * (CURTAIN_SHAPE[1] - 4))
        curtains[i, :, bottom : bottom + 4] = 1
    return chips, curtains


def test_curtain_head_maps_features_to_along_track_samples_by_height_bins():
    head = CurtainHead(in_channels=16, stride=4)
    assert head(torch.randn(3, 16, 8, 8)).shape == (3, *CURTAIN_SHAPE)


def test_a_trained_curtain_model_puts_a_layer_at_the_height_its_chip_encodes():
    torch.manual_seed(0)
    encoder = create_backbone("test_swinv2", in_chans=2, img_size=32)
    model = DownstreamModel(encoder, "curtain", 32)
    chips, curtains = _uniform_chips_and_single_layer_curtains(np.linspace(0, 1, 8))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = nn.functional.binary_cross_entropy_with_logits(model(chips), curtains)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        predicted = model(chips) > 0
    truth = curtains.bool()
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.9, f"cloud IoU {float(iou):.3f}: the head does not place layers by height"
