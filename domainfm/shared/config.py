"""One configuration mechanism for every domainfm command: typed signatures, YAML files, saved runs.

A command is a plain function with type hints. :func:`command_parser` turns it into a jsonargparse
parser whose ``--config FILE`` reads YAML (``yaml.safe_load``; nothing is evaluated). Validation is strict:
an unknown key (with the closest known key suggested) or a value of the wrong type is an error that names
the key and the file. Shipped configs live in ``configs/`` of a checkout and in ``domainfm/configs`` of an
installed wheel; :func:`resolve_config_path` finds either, so ``--config configs/x.yaml`` works in both.
The resolved configuration of a run is kept in :func:`current_run` and written next to its outputs by
:func:`save_resolved_config`; passing that file back with ``--config`` reruns the same command.

Every shipped YAML starts with a header line ``# command: <group> <verb>`` naming the command it configures.

Options are checked before any work starts. Commands annotate their parameters with the range types below
(:data:`PositiveInt`, :data:`LearningRate`, :data:`Fraction`, ...), which jsonargparse enforces; every value,
including those inside dict options, must also be a finite float or an integer of at most
:data:`MAX_INT` (:func:`check_values`). YAML aliases (``*name``) are refused, in config files and in
option values alike, so a few hundred bytes cannot expand into megabytes; a config file must be UTF-8 text.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import inspect
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import docstring_parser
import yaml
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace, set_loader
from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, restricted_number_type

from domainfm.shared.errors import DomainfmError

HEADER = re.compile(r"^#\s*command:\s*(?P<command>[\w\- ]+?)\s*$")

MAX_INT = 2**31 - 1
"""The largest count, size or index an option takes: larger integers are typos, and overflow C types."""
MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused unread."""

PositiveInt = restricted_number_type("DomainfmCount", int, [(">=", 1), ("<=", MAX_INT)])
"""A count or size: epochs, batch size, workers, tiles, pixels (1 .. 2**31 - 1)."""
NonNegativeInt = restricted_number_type("DomainfmCountOrZero", int, [(">=", 0), ("<=", MAX_INT)])
"""A count that may be zero: warm-up epochs, overlap pixels."""
Seed = restricted_number_type("DomainfmSeed", int, [(">=", 0), ("<", 2**32)])
"""A random seed: what numpy and torch both take (0 .. 2**32 - 1)."""
PositiveFloat = restricted_number_type("DomainfmPositive", float, [(">", 0), ("<", math.inf)])
"""A finite number above zero: learning rate, temperature, microns per pixel."""
NonNegativeFloat = restricted_number_type("DomainfmNonNegative", float, [(">=", 0), ("<", math.inf)])
"""A finite number, zero or above: weight decay, loss weights, augmentation strength."""
Fraction = restricted_number_type("DomainfmFraction", float, [(">", 0), ("<=", 1)])
"""A share of a set that must keep something: label fractions (0 < f <= 1)."""
Probability = ClosedUnitInterval
"""A probability or threshold share (0 <= p <= 1)."""
HoldOutFraction = restricted_number_type("DomainfmHoldOut", float, [(">=", 0), ("<", 1)])
"""The share of a set held out for validation or test (0 <= f < 1)."""
OpenFraction = OpenUnitInterval
"""A share strictly between nothing and all (0 < f < 1): mask ratios, EMA momenta."""

LearningRate = PositiveFloat
Epochs = PositiveInt
BatchSize = PositiveInt
Workers = PositiveInt


class ConfigError(DomainfmError, ValueError):
    """A configuration file or value is invalid; the message names the file and key."""


class YamlAliasError(yaml.YAMLError):
    """A YAML text uses an alias (``*name``); refused, since aliases can expand a few bytes into megabytes."""


def refuse_aliases(text: str) -> None:
    """Raises :class:`YamlAliasError` if ``text`` uses a YAML alias (an anchor alone is harmless)."""
    if "*" not in text:
        return
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            mark = event.start_mark
            raise YamlAliasError(
                f"YAML aliases (*{event.anchor}) are not accepted (line {mark.line + 1}); write the value out"
            )


def _load_value(text: str) -> Any:
    """Jsonargparse's YAML value loader, refusing aliases first."""
    from jsonargparse._loaders_dumpers import yaml_load

    refuse_aliases(text)
    return yaml_load(text)


PARSER_MODE = "domainfm_yaml"
set_loader(PARSER_MODE, _load_value, exceptions=(yaml.YAMLError,))


def check_values(data: Any, key: str = "") -> None:
    """Raises :class:`ConfigError` for a non-finite float or an integer beyond :data:`MAX_INT` in ``data``.

    Walks dicts and lists, so options such as ``--peft_options`` or ``--text`` are checked too; the
    message names the (dotted) key.
    """
    if isinstance(data, bool):
        return
    if isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"option {key!r}: {data} is not a finite number")
    if isinstance(data, int) and abs(data) > MAX_INT:
        raise ConfigError(f"option {key!r}: {data} is too large (at most {MAX_INT})")
    if isinstance(data, Mapping):
        for name, value in data.items():
            check_values(value, f"{key}.{name}" if key else str(name))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            check_values(value, f"{key}[{i}]")


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
    """Reads a YAML file that must hold a mapping (an empty file is an empty mapping).

    The file must be UTF-8 text of at most :data:`MAX_CONFIG_BYTES` and may not use YAML aliases.
    """
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is too large for a config (at most 1 MiB)")
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config: {error.strerror or error}") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8 at byte {error.start})") from error
    if "\x00" in text:
        raise ConfigError(f"{path}: not a YAML text file (it holds NUL bytes)")
    try:
        refuse_aliases(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
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
    parser = ArgumentParser(
        prog=prog,
        description=(function.__doc__ or "").split("\n\n")[0],
        exit_on_error=False,
        parser_mode=PARSER_MODE,
    )
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


_RESTRICTION = re.compile(
    r'Parser key "(?P<key>[\w.]+)":\s*Not of type \w+: (?P<value>.*?) does not conform to restriction (?P<rule>.+)$'
)

_UNION_RESTRICTION = re.compile(
    r'Parser key "(?P<key>[\w.]+)":.*?does not conform to restriction (?P<rule>.+?) - .*Given value: (?P<value>.*)$'
)


def explain_parse_error(error: BaseException) -> str:
    """One line: a jsonargparse error about a key, prefixed with the config file that set that key.

    A range violation reads ``option 'lr': inf is out of range (needs v>0 and v<inf)``.
    """
    message = " ".join(str(error).split())
    restricted = _RESTRICTION.search(message) or _UNION_RESTRICTION.search(message)
    if restricted:
        message = f"option {restricted['key']!r}: {restricted['value']} is out of range (needs {restricted['rule']})"
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
    check_values(cfg.as_dict())
    cfg = parser.instantiate(cfg)
    kwargs = cfg.as_dict()
    kwargs.pop("config", None)
    return kwargs


def settings_unchanged(marker: Path, settings: dict[str, Any]) -> bool:
    """True when ``marker`` records exactly ``settings``: a finished step a rerun may skip."""
    import json

    return Path(marker).is_file() and json.loads(Path(marker).read_text()) == settings
