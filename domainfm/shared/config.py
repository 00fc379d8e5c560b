"""One configuration mechanism for every domainfm command: typed signatures, YAML files, saved runs.

A command is a plain function with type hints. :func:`command_parser` turns it into a jsonargparse
parser whose ``--config FILE`` reads YAML (``yaml.safe_load``; nothing is evaluated). Validation is strict:
an unknown key (with the closest known key suggested) or a value of the wrong type is an error that names
the key and the file. Shipped configs live in ``configs/`` of a checkout and in ``domainfm/configs`` of an
installed wheel; :func:`resolve_config_path` finds either, so ``--config configs/x.yaml`` works in both.
The resolved configuration of a run is kept in :func:`current_run` and written next to its outputs by
:func:`save_resolved_config`; passing that file back with ``--config`` reruns the same command.

Every shipped YAML starts with a header line ``# command: <group> <verb>`` naming the command it configures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import inspect
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import docstring_parser
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from domainfm.shared.errors import DomainfmError

HEADER = re.compile(r"^#\s*command:\s*(?P<command>[\w\- ]+?)\s*$")


class ConfigError(DomainfmError, ValueError):
    """A configuration file or value is invalid; the message names the file and key."""


def configs_root() -> Path:
    """The shipped configs: ``domainfm/configs`` in a wheel, ``configs/`` in a source checkout."""
    packaged = Path(str(resources.files("domainfm"))) / "configs"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """Finds a config given as a path, as ``configs/<rel>`` of the shipped set, or as ``<rel>`` inside it."""
    path = Path(path)
    if path.is_file():
        return path
    root = configs_root()
    relative = Path(*path.parts[1:]) if path.parts and path.parts[0] == "configs" else path
    for candidate in (root / relative, root / path):
        if not path.is_absolute() and candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file {path} does not exist (also looked in the shipped configs at {root}; "
        "`domainfm <group> configs` lists them)"
    )


def shipped_configs(group: str | None = None) -> list[tuple[str, Path, str]]:
    """``(command, path, description)`` of every shipped config, optionally of one command group."""
    found = []
    for path in sorted(configs_root().rglob("*.yaml")):
        command, description = read_header(path)
        if group is None or command.split()[0] == group:
            found.append((command, path, description))
    return found


def read_header(path: Path) -> tuple[str, str]:
    """The ``# command:`` header of a shipped config and the comment line after it."""
    lines = path.read_text().splitlines()
    match = HEADER.match(lines[0]) if lines else None
    if match is None:
        raise ConfigError(f"{path}: the first line must be '# command: <group> <verb>'")
    description = lines[1].lstrip("# ").strip() if len(lines) > 1 and lines[1].startswith("#") else ""
    return match["command"], description


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """Reads a YAML file that must hold a mapping (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield dotted
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted


def check_known_keys(data: Mapping[str, Any], known: set[str], path: Path) -> None:
    """Raises :class:`ConfigError` for the first key of ``data`` that the command does not take.

    A key is known when it, or a key above it, is a parameter (a dict- or class-typed parameter takes
    any keys below it).
    """
    groups = {k.rsplit(".", 1)[0] for k in known if "." in k}
    for key in _flatten(data):
        parts = key.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if prefixes & known or key in groups:
            continue
        close = difflib.get_close_matches(key, sorted(known | groups), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: unknown key {key!r}{hint}")


class ConfigFileAction(ActionConfigFile):
    """``--config FILE``: strict key check naming the file, then jsonargparse's own loading."""

    def __call__(self, parser: ArgumentParser, cfg: Namespace, values: Any, option_string: str | None = None):
        """Checks the file's keys against the command, then applies it."""
        try:
            path = resolve_config_path(values)
            data = read_yaml_mapping(path)
            known = set(parser.get_defaults().keys()) - {"config"}
            check_known_keys(data, known, path)
        except ConfigError as error:
            raise argparse.ArgumentError(self, str(error)) from error
        _loaded_files.append((path, set(_flatten(data))))
        if data:  # a file of comments only changes nothing
            super().__call__(parser, cfg, str(path), option_string)


_loaded_files: list[tuple[Path, set[str]]] = []


def command_parser(function: Callable[..., Any], prog: str | None = None) -> ArgumentParser:
    """A parser for ``function``'s typed signature, with ``--config`` (YAML) and ``--print_config``.

    Positional-only parameters (before ``/``) become positional arguments (``list[...]`` ones take one or
    more values); keyword parameters become ``--options``, required when they have no default; top-level
    ``bool`` parameters become flags (``--json``, ``--no_json``, or ``--json false``). A command whose own
    parameter is called ``config`` (``models convert``: the publisher's architecture config) takes
    ``--config`` for it and has no YAML options file.
    """
    _loaded_files.clear()  # error messages name files of this parse only
    parser = ArgumentParser(prog=prog, description=(function.__doc__ or "").split("\n\n")[0], exit_on_error=False)
    if "config" not in inspect.signature(function).parameters:
        parser.add_argument("--config", action=ConfigFileAction, help="YAML file with any of the options below.")
    helps = {p.arg_name: p.description for p in docstring_parser.parse(function.__doc__ or "").params}
    hints = typing.get_type_hints(function)
    handled: set[str] = set()
    for name, param in inspect.signature(function).parameters.items():
        hint = hints.get(name)
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            if typing.get_origin(hint) is list:
                parser.add_argument(name, nargs="+", type=typing.get_args(hint)[0], help=helps.get(name))
            else:
                parser.add_argument(name, type=hint, help=helps.get(name))
            handled.add(name)
        elif hint is bool and isinstance(param.default, bool):
            parser.add_argument(f"--{name}", action=ActionYesNo, nargs="?", default=param.default, help=helps.get(name))
            handled.add(name)
    parser.add_function_arguments(function, fail_untyped=True, as_positional=False, skip=handled)
    return parser


def explain_parse_error(error: BaseException) -> str:
    """Prefixes a jsonargparse error about a key with the config file that set that key."""
    message = str(error)
    match = re.search(r'(?:key|option) ["\']([\w.]+)["\']', message)
    if match:
        for path, keys in reversed(_loaded_files):
            if match[1] in keys:
                return f"{path}: {message}"
    return message


@dataclass
class RunRecord:
    """What the running command was called with, for provenance."""

    command: str
    argv: list[str]
    resolved_yaml: str
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))


_current: list[RunRecord] = []


def set_current_run(record: RunRecord) -> None:
    """Makes ``record`` the run that :func:`save_resolved_config` writes out."""
    _current[:] = [record]


def current_run() -> RunRecord | None:
    """The run record of the command being executed, if it was started through the CLI."""
    return _current[0] if _current else None


def save_resolved_config(out_dir: str | Path, name: str = "config.yaml") -> Path | None:
    """Writes the resolved configuration of the current run into ``out_dir`` (rerunnable with --config)."""
    record = current_run()
    if record is None:
        return None
    from domainfm import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    header = (
        f"# command: {record.command}\n"
        f"# resolved configuration written by domainfm {__version__} at {record.started}\n"
        f"# invoked as: domainfm {' '.join(record.argv)}\n"
    )
    target.write_text(header + record.resolved_yaml)
    return target


def load_config(path: str | Path, function: Callable[..., Any]) -> dict[str, Any]:
    """Validates a YAML file against ``function``'s signature and returns the keyword arguments."""
    parser = command_parser(function)
    try:
        cfg = parser.parse_args(["--config", str(path)])
    except argparse.ArgumentError as error:
        raise ConfigError(explain_parse_error(error)) from error
    cfg = parser.instantiate(cfg)
    kwargs = cfg.as_dict()
    kwargs.pop("config", None)
    return kwargs


def settings_unchanged(marker: Path, settings: dict[str, Any]) -> bool:
    """True when ``marker`` records exactly ``settings``: a finished step a rerun may skip."""
    import json

    return Path(marker).is_file() and json.loads(Path(marker).read_text()) == settings
