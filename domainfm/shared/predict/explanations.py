"""``predict --explain``: the ``domainfm explain`` overlay of one raw input, written among a run's outputs.

The same attribution (captum's integrated gradients, Sundararajan et al., ICML 2017; the explained target
as :mod:`domainfm.shared.explain.targets` resolves it) and the same picture as ``domainfm explain`` writes
for that input, so ``predict --explain`` and ``explain`` give one answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from domainfm.shared.deploy.card import Deployable


def explain_overlay(
    deployable: Deployable,
    image: np.ndarray | torch.Tensor,
    title: str,
    path: Path,
    device: torch.device,
    target: str | int | None = None,
) -> Path:
    """Writes the integrated-gradients overlay of raw ``image`` (``[C, H, W]`` or ``[1, C, H, W]``) to ``path``."""
    from domainfm.shared.explain.attribution import attribute
    from domainfm.shared.explain.overlay import render_overlay

    tensor = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image)
    tensor = tensor.float()[None] if tensor.ndim == 3 else tensor.float()
    result = attribute(deployable, tensor.to(device), "integrated_gradients", target)
    render_overlay(tensor.cpu(), result, deployable.card, title, path)
    return path
