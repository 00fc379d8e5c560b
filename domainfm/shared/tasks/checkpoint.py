"""The one domainfm checkpoint format: a safetensors file of tensors plus JSON metadata entries.

Every domainfm command that saves weights writes them with :func:`save_checkpoint`: the tensors (or a
module, whose tensors shared between submodules, like DVPT's prompts, are stored once) and one or more
metadata entries, each a JSON document under its own key (``domainfm_backbone``, ``domainfm_convirt``,
...). The file is written under a run-unique ``FILE.partial-<pid>-<hex>`` sibling and renamed into place, so a crash
never leaves a half-written checkpoint under the final name. Reading raises an error that names the file when it is
missing, not safetensors, lacks the expected entry (naming the command that writes such files), holds an
entry that is not a JSON object or lacks a field its model needs, or holds tensors that do not fit the model
its metadata describes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from domainfm.shared.backbones.checkpoint import CheckpointError
from domainfm.shared.outputs import partial_path

ModelT = TypeVar("ModelT", bound=nn.Module)


def save_checkpoint(
    path: str | Path, weights: nn.Module | Mapping[str, torch.Tensor], metadata: Mapping[str, Any]
) -> Path:
    """Writes ``weights`` and the JSON-encoded ``metadata`` entries to ``path`` atomically; returns ``path``.

    A module is saved with safetensors' ``save_model`` (moved to the CPU; shared tensors once), a mapping
    as detached, contiguous CPU tensors.
    """
    from safetensors.torch import save_file, save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)  # unique to this run: never a user's own FILE.partial
    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    try:
        if isinstance(weights, nn.Module):
            save_model(weights.cpu(), str(partial), encoded)
        else:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(partial), encoded)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:  # other writers' entries (timm's "format": "pt") are plain strings
        return value


def checkpoint_metadata(path: str | Path, error: type[Exception] = CheckpointError) -> dict[str, Any]:
    """Every metadata entry of a safetensors file, JSON-decoded where it is JSON; tensors are not read."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as cause:  # safetensors raises its own types for damaged or foreign files
        raise error(f"{path} is not a readable safetensors file: {cause}") from cause
    return {key: _decode(value) for key, value in raw.items()}


def is_domainfm_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file domainfm wrote (a ``domainfm_*`` metadata entry); never raises."""
    try:
        return any(key.startswith("domainfm_") for key in checkpoint_metadata(path))
    except Exception:  # missing, unreadable or foreign: not ours
        return False


def read_checkpoint_metadata(
    path: str | Path, key: str, producer: str, error: type[Exception] = CheckpointError
) -> dict[str, Any]:
    """The metadata entry ``key``; the error names the file, and ``producer`` when the entry is absent."""
    metadata = checkpoint_metadata(path, error)
    if key not in metadata:
        raise error(f"{path} has no {key} metadata: it was not written by `{producer}`")
    entry = metadata[key]
    if not isinstance(entry, dict):
        kind = "not valid JSON" if isinstance(entry, str) else f"a JSON {type(entry).__name__}, not an object"
        raise error(f"{path}: its {key} metadata is {kind} (damaged or edited?); recreate it with `{producer}`")
    return entry


def read_checkpoint(
    path: str | Path, error: type[Exception] = CheckpointError
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (on the CPU) and the decoded metadata entries of a safetensors file."""
    from safetensors.torch import load_file

    metadata = checkpoint_metadata(path, error)
    try:
        return load_file(str(path), device="cpu"), metadata
    except Exception as cause:  # readable header, damaged tensor data
        raise error(f"{path} is not a readable safetensors file: {cause}") from cause


def load_weights(model: ModelT, path: str | Path, producer: str, error: type[Exception] = CheckpointError) -> ModelT:
    """Loads a checkpoint's tensors into ``model`` (all of them: shared tensors stored once are restored).

    Missing, unexpected or reshaped tensors raise ``error`` naming the file and ``producer``.
    """
    from safetensors.torch import load_model

    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as cause:  # reshaped tensors
        details = " ".join(line.strip() for line in str(cause).splitlines()[1:4])
        missing, unexpected = [details[:600]], []
    if missing or unexpected:
        raise error(
            f"checkpoint {path} does not fit the model its metadata describes (written by another domainfm "
            f"version?): missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; "
            f"recreate it with `{producer}`"
        )
    return model


def save_model_checkpoint(model: nn.Module, path: str | Path, key: str, meta: dict[str, Any]) -> Path:
    """A whole model (any PEFT state) and the metadata entry ``key`` that rebuilds it, as one checkpoint."""
    return save_checkpoint(path, model, {key: meta})


def load_model_checkpoint(
    path: str | Path, key: str, producer: str, build: Callable[[dict[str, Any]], ModelT]
) -> tuple[ModelT, dict[str, Any]]:
    """The model saved by :func:`save_model_checkpoint`: rebuilt by ``build(meta)``, weights loaded, eval mode."""
    meta = read_checkpoint_metadata(path, key, producer)
    try:
        model = build(meta)
    except (KeyError, TypeError, AttributeError) as cause:  # a field missing or of the wrong type
        raise CheckpointError(
            f"{path}: its {key} metadata lacks or mistypes a field ({type(cause).__name__}: {cause}); "
            f"recreate it with `{producer}`"
        ) from cause
    return load_weights(model, path, producer).eval(), meta
