"""Reading a publisher's weight file without holding it twice: lazy tensors, safe loading only.

A foundation checkpoint is often several GB (SatVision-TOA giant: 5.3 GB of bf16). :class:`TensorSource`
opens it once and hands out one tensor at a time:

* ``.safetensors``: ``safe_open`` reads a tensor when it is asked for;
* ``.pt``/``.pth``/``.bin``/``.ckpt``: ``torch.load(weights_only=True, mmap=True)`` maps the file, so a
  tensor's bytes are paged in from disk as they are read (a pre-1.6 non-zip file cannot be mapped and is
  refused with the fix);
* a folder (Hugging Face layout): its ``model.safetensors`` or ``pytorch_model.bin``, and ``config.json``.

Wrapper containers are unwrapped by a path of keys (``module`` for DeepSpeed, ``state_dict`` for
Lightning), never guessed silently: the layout says which.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.errors import DomainfmError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ConversionError(DomainfmError, ValueError):
    """A source file cannot be read or does not fit the model it is converted to."""


class TensorSource(Mapping[str, torch.Tensor]):
    """Name -> tensor of a weight file, read lazily (see the module docstring).

    Args:
        path: The weight file (or a Hugging Face folder holding one).
        unwrap: Keys to descend into in a pickled container (``("module",)`` for DeepSpeed).
    """

    def __init__(self, path: str | Path, unwrap: tuple[str, ...] = ()) -> None:
        self.path = weight_file(Path(path))
        self._safe = None
        if self.path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                self._safe = safe_open(str(self.path), framework="pt")
            except Exception as cause:  # safetensors raises its own types for foreign files
                raise ConversionError(f"{self.path} is not a readable safetensors file: {cause}") from cause
            self._keys = list(self._safe.keys())
            self._tensors: dict[str, torch.Tensor] = {}
        else:
            self._tensors = _load_pickled(self.path, unwrap)
            self._keys = list(self._tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        if self._safe is not None:
            if key not in self._keys:
                raise KeyError(key)
            return self._safe.get_tensor(key)
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        if self._safe is not None:
            return tuple(self._safe.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)


def weight_file(path: Path) -> Path:
    """The weight file itself, or the one inside a Hugging Face folder."""
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise ConversionError(
            f"{path} is a folder without {' or '.join(HF_WEIGHT_FILES)}; give the weight file itself or the "
            "folder the model's publisher distributes (weights and config.json)"
        )
    if not path.is_file():
        raise ConversionError(f"{path} does not exist (weights are only read from local files)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ConversionError(f"{path} is not a weight file ({', '.join(WEIGHT_SUFFIXES)} or a Hugging Face folder)")
    return path


def _load_pickled(path: Path, unwrap: tuple[str, ...]) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" in str(error):
            raise ConversionError(
                f"{path} is in PyTorch's legacy (pre-1.6) format, which cannot be memory-mapped; re-save it "
                "with torch.save(torch.load(path, weights_only=True), new_path) and convert new_path"
            ) from error
        raise ConversionError(f"{path} cannot be read: {str(error).splitlines()[0]}") from error
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise ConversionError(
            f"{path} cannot be loaded safely (weights_only=True): {_reason(error)}. Only tensors "
            "(and plain containers) are unpickled, never code. If the file comes from a publisher you trust and "
            "holds other objects beside its weights (a training config, optimiser state), keep the weights "
            "alone: python -c \"import torch; s = torch.load('IN', weights_only=False); torch.save({'"
            + (unwrap[0] if unwrap else "state_dict")
            + "': s['"
            + (unwrap[0] if unwrap else "state_dict")
            + "']}, 'OUT')\" and convert OUT."
        ) from error
    for key in unwrap:
        if not isinstance(obj, Mapping) or key not in obj:
            found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise ConversionError(f"{path} has no {key!r} entry where this layout keeps its weights (found: {found})")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if not tensors:
        raise ConversionError(f"{path} holds no tensors at this level (keys: {', '.join(others[:8])})")
    if others:
        raise ConversionError(
            f"{path} mixes tensors with other entries ({', '.join(others[:8])}); this layout expects a state dict"
        )
    return tensors


def _reason(error: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused (its first line is generic)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "Unsupported operand" in line]
    return (named or lines or [type(error).__name__])[0].rstrip(".")


def read_config(path: str | Path | None) -> dict[str, Any]:
    """A JSON or YAML config file as a dict (``{}`` for ``None``); never evaluates code."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"config {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as cause:  # json/yaml errors name the line
        raise ConversionError(f"config {path} cannot be parsed: {cause}") from cause
    if not isinstance(data, dict):
        raise ConversionError(f"config {path} holds a {type(data).__name__}, not a mapping")
    return data


def hf_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` beside a Hugging Face weight file (or inside its folder); ``{}`` when absent."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    return read_config(config) if config.is_file() else {}
