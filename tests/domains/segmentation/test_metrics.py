"""Dice, IoU and HD95 on hand-built masks, including the empty-mask conventions."""

import math

import torch

from domainfm.domains.segmentation.metrics import dice_iou, hd95, summarise


def masks(*boxes: tuple[int, int, int, int] | None, size: int = 10) -> torch.Tensor:
    out = torch.zeros(len(boxes), 1, size, size, dtype=torch.bool)
    for i, box in enumerate(boxes):
        if box is not None:
            y0, y1, x0, x1 = box
            out[i, 0, y0:y1, x0:x1] = True
    return out


def test_dice_and_iou_by_hand():
    prediction = masks((0, 2, 0, 2), None, None, (0, 4, 0, 4))
    target = masks((0, 2, 0, 3), None, (5, 6, 5, 6), (0, 4, 0, 4))
    dice, iou = dice_iou(prediction, target)
    # 4 px predicted, 6 px true, 4 shared: Dice 8/10, IoU 4/6; both empty: 1; one empty: 0; equal: 1
    torch.testing.assert_close(dice, torch.tensor([0.8, 1.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(iou, torch.tensor([4 / 6, 1.0, 0.0, 1.0], dtype=torch.float64))


def test_hd95_by_hand_and_empty_conventions():
    prediction = masks((2, 4, 2, 4), None, None, size=10)
    target = masks((2, 4, 5, 7), None, (1, 2, 1, 2), size=10)
    distances = hd95(prediction, target)
    assert float(distances[0]) == 3.0  # the square moved 3 px to the right
    assert float(distances[1]) == 0.0  # both empty
    assert math.isclose(float(distances[2]), math.hypot(10, 10))  # one empty: the image diagonal


def test_summary_is_mean_and_population_std():
    summary = summarise({"dice": torch.tensor([0.5, 1.0])})
    assert summary == {"dice_mean": 0.75, "dice_std": 0.25}
