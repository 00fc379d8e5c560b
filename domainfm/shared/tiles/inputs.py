"""What a store was built from: a fingerprint of its reader, the reader's options and its sources.

Ingest records it in the store (``inputs`` in the group attributes, a digest per source in the sources
table) and compares it on every rerun: a rerun with other options (a different splits table, tile size,
fractions, reader version) is refused with the differences listed, unless ``--overwrite``; otherwise a
resumed ingest would mix tiles made under two sets of options.

A reader is a function or a ``functools.partial`` of one; its bound arguments are its options. A
dictionary argument keyed by the sources themselves (a report per image, a mask per image, the band
files of a raster) is per-source: its entry for a source belongs to that source's fingerprint, so adding
or removing a source does not change the options of the others.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHORT = 120  # option values longer than this (as JSON) are recorded by digest


def _canonical(value: Any, out: Path) -> Any:
    """A JSON-able form of an option value, stable across runs (no object addresses)."""
    if isinstance(value, functools.partial):
        return {
            "function": _canonical(value.func, out),
            "args": [_canonical(v, out) for v in value.args],
            "keywords": {k: _canonical(v, out) for k, v in sorted(value.keywords.items())},
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name), out) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v, out) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, out) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v, out) for v in value), key=repr)
    if isinstance(value, Path):
        try:  # paths inside the store (a QC folder) do not change when the store is moved
            return "<store>/" + str(value.resolve().relative_to(out.resolve()))
        except ValueError:
            return str(value)
    if isinstance(value, np.ndarray):
        return {"array": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(), "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    state = getattr(value, "__dict__", None)
    if state is not None:
        return {"type": type(value).__qualname__, **{k: _canonical(v, out) for k, v in sorted(state.items())}}
    return repr(value)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    if len(text) <= SHORT:
        return text
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]} ({len(text)} characters)"


def _flatten(prefix: str, value: Any, into: dict[str, Any]) -> None:
    """Dataclass-like dicts of options become ``prefix.field`` keys, so a difference names the field."""
    small = isinstance(value, dict) and value and len(value) <= 32
    if small and all(isinstance(k, str) and not Path(k).is_absolute() for k in value):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, into)
        return
    into[prefix] = value


def reader_options(
    reader: Any, sources: Sequence[str | Path], out: Path, resolved: Sequence[str] | None = None
) -> tuple[dict[str, str], list[str]]:
    """``(options, per_source)``: the reader's options (name -> short JSON or digest) and one digest per source.

    ``per_source[i]`` covers the entries of source-keyed dictionaries for ``sources[i]`` (empty options
    give the same digest for every source). ``resolved``: the sources' resolved paths, when known.
    """
    resolved = list(resolved) if resolved is not None else [str(Path(s).resolve()) for s in sources]
    keys = {str(s) for s in sources} | set(resolved)
    func, args, keywords = reader, (), {}
    if isinstance(reader, functools.partial):
        func, args, keywords = reader.func, reader.args, dict(reader.keywords)
    flat: dict[str, Any] = {"reader": _canonical(func, out)}
    per_source_maps: dict[str, dict] = {}
    for name, value in [*((f"args[{i}]", v) for i, v in enumerate(args)), *sorted(keywords.items())]:
        if isinstance(value, dict) and value and all(str(k) in keys for k in value):
            per_source_maps[name] = {str(k): v for k, v in value.items()}
            flat[name] = "<per source>"
            continue
        _flatten(name, _canonical(value, out), flat)
    options = {name: _short(value) for name, value in flat.items()}
    per_source = []
    for source, path in zip(sources, resolved, strict=True):
        own = {}
        for name, mapping in per_source_maps.items():
            entry = mapping[str(source)] if str(source) in mapping else mapping.get(path)
            own[name] = _canonical(entry, out)
        per_source.append(hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:16])
    return options, per_source


def inputs_record(reader_name: str, reader_version: str, options: dict[str, str]) -> dict[str, Any]:
    """The ``inputs`` group attribute."""
    return {"reader": reader_name, "reader_version": reader_version, "options": options}


def differences(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """What differs between a store's recorded ``inputs`` and this run's, one line each."""
    if not recorded:
        return ["the store was written by an earlier domainfm that did not record its reader options"]
    lines = []
    for key in ("reader", "reader_version"):
        if recorded.get(key) != current[key]:
            lines.append(f"{key.replace('_', ' ')}: {recorded.get(key)!r} -> {current[key]!r}")
    old, new = recorded.get("options", {}), current["options"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            lines.append(f"option {name}: {old.get(name, '(unset)')} -> {new.get(name, '(unset)')}")
    return lines


def spec_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys of the store spec that differ, with both values."""
    return [
        f"{key}: {_short(recorded.get(key))} -> {_short(current.get(key))}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]
