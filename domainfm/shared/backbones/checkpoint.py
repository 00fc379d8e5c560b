"""Local checkpoint reading, key matching, stem adaptation and saving for shared backbones.

Accepted files (never downloaded; read with ``weights_only=True`` or safetensors):

* ``.safetensors`` state dicts (timm's format and what :func:`save_backbone` writes);
* ``.pth``/``.pt``/``.bin``/``.ckpt`` holding a plain state dict, or a dict wrapping one under
  ``state_dict`` (Lightning), ``model``, ``module`` (DeepSpeed) or ``model_ema``.

Keys are matched to the timm model by the key prefix that maps most keys onto model keys
(``backbone.model.`` in a Lightning checkpoint of a domainfm task, ``module.`` from DDP/DeepSpeed, none
in a timm file), so a task checkpoint loads without a separate conversion step. Then the stem is adapted
to the backbone's input channels (:mod:`domainfm.shared.backbones.channels`) and timm's own
``checkpoint_filter_fn`` for the architecture resamples position embeddings, FlexiViT patch embeddings
and Swin relative-position tables. Anything left unmatched raises :class:`CheckpointMismatchError`.
"""

from __future__ import annotations

import pickle
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from domainfm.shared.backbones.channels import adapt_input_channels
from domainfm.shared.errors import DomainfmError

if TYPE_CHECKING:
    from domainfm.shared.backbones.wrapper import Backbone

StateDict = dict[str, torch.Tensor]
WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "teacher", "student")
METADATA_KEY = "domainfm_backbone"
EXTRA_PREFIX = "extra."  # tensors a converted checkpoint keeps beside the backbone (not backbone weights)


class CheckpointError(DomainfmError, RuntimeError):
    """A checkpoint file cannot be read."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys or shapes do not fit the backbone."""

    def __init__(self, path: Path | str, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
        self.missing, self.unexpected, self.shapes = missing, unexpected, shapes
        lines = [f"checkpoint {path} does not fit the backbone:"]
        for title, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("  Check that the checkpoint was trained with this backbone name (see `domainfm info`).")
        super().__init__("\n".join(lines))


def read_state_dict(path: str | Path) -> StateDict:
    """Reads tensors from a local checkpoint file, unwrapping Lightning/DeepSpeed/EMA containers."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (weights are only read from local files)")
    if path.suffix == ".safetensors":
        from domainfm.shared.tasks.checkpoint import read_checkpoint

        tensors, metadata = read_checkpoint(path)
        if METADATA_KEY in metadata:  # a converted foundation checkpoint keeps decoders etc. beside it
            tensors = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
        return tensors
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True): {str(error).splitlines()[0]}. "
            "Re-save its state_dict alone (torch.save(model.state_dict(), ...)) or as .safetensors."
        ) from error
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> StateDict:
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"checkpoint {path} holds no state dict (top-level keys: {', '.join(map(str, list(obj)[:10]))})"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_to_model_keys(state_dict: StateDict, model_keys: set[str]) -> StateDict:
    """Keeps the keys under the prefix that maps most of them onto ``model_keys``, prefix removed."""
    votes: Counter[str] = Counter()
    for key in state_dict:
        for i in [0] + [j + 1 for j, ch in enumerate(key) if ch == "."]:
            if key[i:] in model_keys:
                votes[key[:i]] += 1
    if not votes:
        return state_dict
    best = max(votes.values())
    prefix = min((p for p, n in votes.items() if n == best), key=len)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _classifier_keys(model: torch.nn.Module) -> tuple[str, ...]:
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _stem_key(model: torch.nn.Module) -> str | None:
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    return f"{first_conv}.weight" if isinstance(first_conv, str) else None


def _load_exact_safetensors(model: torch.nn.Module, path: Path) -> bool:
    """Copies a domainfm-written file whose keys and shapes are exactly the model's, one tensor at a time.

    A converted multi-GB foundation checkpoint then never sits in memory beside the model (reading the
    whole file first would hold two copies). Returns ``False`` (nothing loaded) for any other file.
    """
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    if METADATA_KEY not in checkpoint_metadata(path):
        return False
    model_state = model.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        keys = {key for key in handle.keys() if not key.startswith(EXTRA_PREFIX)}  # noqa: SIM118
        if keys != set(model_state) or any(
            tuple(handle.get_slice(key).get_shape()) != tuple(model_state[key].shape) for key in keys
        ):
            return False
        with torch.no_grad():
            for key in keys:
                model_state[key].copy_(handle.get_tensor(key))
    return True


def load_backbone_state(backbone: Backbone, path: str | Path) -> None:
    """Loads a local checkpoint into ``backbone`` (see the module docstring for the rules)."""
    model = backbone.model
    if _load_exact_safetensors(model, Path(path)):
        return
    model_state = model.state_dict()
    state = strip_to_model_keys(read_state_dict(path), set(model_state))
    heads = _classifier_keys(model)
    state = {k: v for k, v in state.items() if not any(k == h or k.startswith(h + ".") for h in heads)}
    stem = _stem_key(model)
    if stem and stem in state and stem in model_state and state[stem].ndim == model_state[stem].ndim:
        state[stem] = adapt_input_channels(state[stem], model_state[stem].shape[1])
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception as error:  # timm filters assume their own layout; report, do not crash opaquely
            raise CheckpointError(f"checkpoint {path} could not be converted for {backbone.name}: {error}") from error
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(model_state[k].shape)}"
        for k, v in state.items()
        if k in model_state and v.shape != model_state[k].shape
    ]
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(path, missing, unexpected, shapes)
    model.load_state_dict(state, strict=True)


def save_backbone(backbone: Backbone, path: str | Path) -> Path:
    """Writes the backbone's weights (timm key names) as safetensors with its build arguments, atomically."""
    from domainfm.shared.tasks.checkpoint import save_checkpoint

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_backbone writes .safetensors files, got {path}")
    return save_checkpoint(path, backbone.model.state_dict(), {METADATA_KEY: backbone.build_args})


def read_backbone_metadata(path: str | Path) -> dict[str, Any] | None:
    """The build arguments stored by :func:`save_backbone`, or ``None`` for other files."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    entry = checkpoint_metadata(path).get(METADATA_KEY)
    if entry is not None and not isinstance(entry, dict):
        raise CheckpointError(f"{path}: its {METADATA_KEY} metadata is not a JSON object (damaged or edited?)")
    return entry
