"""What an exported bundle runs with: its data list, its map writer, and MONAI-config-safe strings.

Named by ``_target_`` in a bundle's ``configs/inference.json`` (MONAI Bundle specification,
``docs/source/config_syntax.md`` of Project-MONAI/MONAI), so they are importable without the rest of
the exporter.
"""

from __future__ import annotations

import ast
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.errors import DomainfmError

# Dict keys the MONAI config parser reserves, and characters it interprets inside strings (see config_safe).
_CONFIG_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")
_CONFIG_CHARS = "#@%$"
_ESCAPED = _CONFIG_CHARS + "'\\"


class ConfigSyntaxError(DomainfmError, ValueError):
    """Data that cannot be written into a MONAI config (a key the parser reserves)."""


class SaveNpyd:
    """Writes ``data[key]`` of one decollated item as ``OUTPUT_DIR/<input stem>_pred.npy`` (float32, ``[C, ...]``).

    MONAI's ``SaveImaged`` keeps float maps only through NIfTI/ITK writers (nibabel or itk installed) and
    quantises PNG output, so maps are written as NumPy arrays, loadable with ``np.load(allow_pickle=False)``.

    Args:
        keys: The key(s) to write (``"pred"``).
        output_dir: The folder the files go to (created when missing).
        meta_key: The item whose ``filename_or_obj`` metadata names the input file.
        suffix: Appended to the input's stem.
    """

    def __init__(
        self, keys: str | Sequence[str], output_dir: str | Path, meta_key: str = "image", suffix: str = "_pred"
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.output_dir = Path(output_dir)
        self.meta_key = meta_key
        self.suffix = suffix

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Writes the arrays and returns ``data`` unchanged."""
        source = getattr(data[self.meta_key], "meta", {}).get("filename_or_obj")
        if not source:
            raise ValueError(f"{self.meta_key!r} carries no filename_or_obj metadata to name the output after")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for key in self.keys:
            value = data[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            name = Path(str(source)).stem + (self.suffix if len(self.keys) == 1 else f"_{key}")
            np.save(self.output_dir / f"{name}.npy", array.astype(np.float32), allow_pickle=False)
        return data


class ReadInputd:
    """Reads ``data[key]`` (a file path) exactly as ``domainfm.shared.deploy.read_input`` does for ``card``.

    So a bundle takes every input ``predict`` and ``explain`` take, through the same readers: the model's
    domain's (a DICOM through its display transform, a whole satellite granule's bands, a 16-bit picture by
    ingest's percentiles), pictures, ``.npy`` arrays and GeoTIFFs. The value becomes a MONAI ``MetaTensor``
    ``[C, H, W]`` (float32) whose ``filename_or_obj`` names the file, for the savers.

    Args:
        keys: The key(s) holding file paths (``"image"``).
        card: The model card (``ModelCard.to_dict()``), as the bundle's ``metadata.json`` carries it.
    """

    def __init__(self, keys: str | Sequence[str], card: Mapping[str, Any]) -> None:
        from domainfm.shared.deploy.card import ModelCard

        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.card = ModelCard.from_dict(dict(card))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """A copy of ``data`` with each key's file read."""
        from monai.data import MetaTensor

        from domainfm.shared.deploy.inputs import read_input

        out = dict(data)
        for key in self.keys:
            path = str(data[key])
            out[key] = MetaTensor(read_input(path, self.card)[0], meta={"filename_or_obj": path})
        return out


def datalist(folder: str | Path, suffixes: Sequence[str]) -> list[dict[str, str]]:
    """``[{"image": path}]`` for the files in ``folder`` with one of ``suffixes``, sorted; an error when none.

    Args:
        folder: The bundle's ``dataset_dir``.
        suffixes: File suffixes the bundle's readers take (lower case, with the dot).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset_dir {folder} is not a folder; run with --dataset_dir FOLDER_OF_INPUTS")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files in {folder}; run with --dataset_dir FOLDER_OF_INPUTS")
    return [{"image": str(p)} for p in files]


def config_safe(value: Any, where: str = "") -> Any:
    """``value`` with every string the MONAI config parser would alter written as a Python string expression.

    The parser resolves ``%`` (macros) at the start of any string, turns ``#`` anywhere into ``::``, reads
    ``@`` as a reference and evaluates ``$`` expressions, also inside ``_meta_``. A string holding one of
    ``#@%$`` (e.g. a band unit ``"%"``) is therefore written as ``"$'...'"`` with those characters as
    escapes, which ``eval`` turns back into the same string; :func:`config_value` reverses it without eval.

    Args:
        value: JSON-ready data (dicts, lists, strings, numbers).
        where: Where ``value`` sits, for error messages.

    Raises:
        ConfigSyntaxError: A dict key the parser reserves (``_target_``, ...) or that holds ``::``/``#``.
    """
    if isinstance(value, dict):
        for key in value:
            if key in _CONFIG_KEYS or "::" in str(key) or "#" in str(key):
                raise ConfigSyntaxError(
                    f"{where or 'the card'} has a key {key!r} that MONAI configs reserve; rename it"
                )
        return {key: config_safe(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [config_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, str) and any(c in value for c in _CONFIG_CHARS):
        body = "".join(f"\\U{ord(c):08x}" if c in _ESCAPED or not c.isprintable() else c for c in value)
        return f"$'{body}'"
    return value


def config_value(value: Any) -> Any:
    """Inverse of :func:`config_safe` (``ast.literal_eval``, no code runs).

    Args:
        value: Data written by :func:`config_safe`, e.g. a bundle's parsed ``metadata.json``.
    """
    if isinstance(value, dict):
        return {key: config_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [config_value(item) for item in value]
    if isinstance(value, str) and value.startswith("$'") and value.endswith("'"):
        return ast.literal_eval(value[1:])
    return value
