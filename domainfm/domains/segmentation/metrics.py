"""Per-image segmentation metrics with explicit conventions for empty masks.

GMS (arXiv 2403.18198) reports per-image Dice (DSC) and IoU after thresholding at 0.5, averaged over
images; its evaluation script scores an image whose ground truth and prediction are both empty as 0.
domainfm uses the conventions most challenge toolkits use instead, and states them:

============================  ======  =====  ===============================
ground truth / prediction     Dice    IoU    HD95
============================  ======  =====  ===============================
both empty                    1       1      0
one empty, the other not      0       0      the image diagonal (worst case)
both non-empty                usual   usual  MONAI ``compute_hausdorff_distance(percentile=95)``
============================  ======  =====  ===============================

HD95 is in pixels of the evaluated resolution.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def dice_iou(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of boolean masks ``[N, 1, H, W]`` (``[N]`` each)."""
    prediction, target = prediction.bool().flatten(1), target.bool().flatten(1)
    intersection = (prediction & target).sum(1).double()
    total = prediction.sum(1).double() + target.sum(1).double()
    union = (prediction | target).sum(1).double()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * intersection / total.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(total), intersection / union.clamp_min(1))
    return dice, iou


def hd95(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image 95th-percentile Hausdorff distance of boolean masks ``[N, 1, H, W]`` (pixels)."""
    from monai.metrics import compute_hausdorff_distance

    prediction, target = prediction.bool(), target.bool()
    has_prediction, has_target = prediction.flatten(1).any(1), target.flatten(1).any(1)
    height, width = prediction.shape[-2:]
    result = torch.where(has_prediction | has_target, float(np.hypot(height, width)), 0.0).double()
    both = has_prediction & has_target
    if both.any():
        with warnings.catch_warnings():  # MONAI 1.5+ warns about its own deprecated internal argument
            warnings.simplefilter("ignore", FutureWarning)
            distances = compute_hausdorff_distance(
                prediction[both].float(), target[both].float(), include_background=True, percentile=95
            )
        result[both] = distances.reshape(-1).double().cpu()
    return result


def summarise(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{name_mean, name_std}`` over images for each per-image metric."""
    summary = {}
    for name, per_image in values.items():
        data = per_image.double()
        summary[f"{name}_mean"] = float(data.mean())
        summary[f"{name}_std"] = float(data.std(unbiased=False))
    return summary
