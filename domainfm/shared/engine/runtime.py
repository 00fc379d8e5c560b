"""Device selection. The launcher (Lightning, torchrun, SLURM) owns devices; code takes a ``device`` argument."""

from __future__ import annotations

import torch

from domainfm.shared.errors import DomainfmError


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when visible, else the CPU; other strings are checked and passed through.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise DomainfmError(f"unknown device {device!r}: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DomainfmError(f"device {device!r} was asked for but torch sees no CUDA device; use --device cpu")
    return resolved
