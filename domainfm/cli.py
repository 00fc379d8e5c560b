"""The ``domainfm`` console script: dispatch only.

``domainfm <group> <verb> [options]`` or ``domainfm <command> [options]``. Groups and verbs are looked up
in tables of ``"module:function"`` strings, so ``--help`` imports nothing heavy and a run imports only the
module of its command. Each command is a typed function; its options, ``--config FILE`` and validation
come from :mod:`domainfm.shared.config`.

Exit status: 0 success; 2 bad input (an unknown option, an out-of-range value, a missing, unreadable or
damaged file, a full or read-only output disk), reported as one line ``domainfm: error: ...`` that names
the path; 1 an unexpected error (a bug), reported as one line with the exception and the hint to rerun
with ``DOMAINFM_DEBUG=1``, which prints the full traceback for every error, expected or not.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainfm import __version__
from domainfm.shared.optional import load_object


@dataclass(frozen=True)
class Group:
    """A command group: its help line and where its verbs are listed."""

    help: str
    commands_module: str | None = None
    commands: dict[str, str] = field(default_factory=dict)

    def verbs(self) -> dict[str, str]:
        """Verb -> ``"module:function"``, including the generic ``configs`` verb of domain groups."""
        verbs = dict(self.commands)
        if self.commands_module:
            verbs.update(importlib.import_module(self.commands_module).COMMANDS)
            verbs.setdefault("configs", "domainfm.cli:list_configs")
        return verbs


GROUPS: dict[str, Group] = {
    "radiology": Group(
        "ConVIRT: chest X-ray + report ingest, contrastive pretraining, retrieval, label-efficient probes",
        "domainfm.domains.radiology.cli",
    ),
    "pathology": Group(
        "PLUTO: whole-slide tiling, self-supervised pretraining, embeddings, tile and slide heads",
        "domainfm.domains.pathology.cli",
    ),
    "remote-sensing": Group(
        "SatVision-TOA: MODIS L1B / GDAL readers, 14-band chips, SimMIM on SwinV2, cloud retrieval",
        "domainfm.domains.remote_sensing.cli",
    ),
    "segmentation": Group(
        "GMS: generative segmentation in a frozen VAE latent space, UNet baseline",
        "domainfm.domains.segmentation.cli",
    ),
    "tiles": Group(
        "zarr tile store: ingest engine, inspect, verify, streaming loader",
        commands={
            "ingest": "domainfm.shared.tiles.cli:ingest_arrays",
            "inspect": "domainfm.shared.tiles.cli:inspect",
            "verify": "domainfm.shared.tiles.cli:verify",
        },
    ),
    "peft": Group(
        "PEFT: DVPT and its baselines; parameter counts and method x label-fraction comparisons",
        commands={"count": "domainfm.shared.peft.cli:count", "compare": "domainfm.studies.shared.peft.cli:compare"},
    ),
    "models": Group(
        "foundation models users hold (SatVision-TOA, UNI, Virchow, RAD-DINO, ...): list, show, convert",
        commands={
            "list": "domainfm.shared.foundation.cli:list_models",
            "show": "domainfm.shared.foundation.cli:show",
            "convert": "domainfm.shared.foundation.cli:convert",
        },
    ),
    "export": Group(
        "MONAI bundles of downstream models (radiology, pathology, remote sensing, segmentation)",
        commands={"bundle": "domainfm.shared.deploy.cli:bundle"},
    ),
    "bench": Group(
        "benchmarks that print ratios against a baseline measured in the same process",
        commands={
            "backbones": "domainfm.studies.shared.backbones.bench:bench_backbones",
            "stream": "domainfm.studies.shared.tiles.bench:bench_stream",
            "ingest": "domainfm.studies.shared.tiles.ingest_bench:bench_ingest",
            "tiling": "domainfm.studies.pathology.bench:bench_tiling",
            "chips": "domainfm.studies.remote_sensing.chips_bench:bench_chips",
            "predict-memory": "domainfm.studies.pathology.predict_bench:bench_predict_memory",
            "convert": "domainfm.studies.shared.foundation.bench:bench_convert",
            "gpu": "domainfm.studies.device_check:bench_gpu",
        },
    ),
}
COMMANDS: dict[str, str] = {
    "info": "domainfm.info:info",
    "quickstart": "domainfm.quickstart:quickstart",
    "explain": "domainfm.shared.explain.cli:explain",
}


def list_configs(group: str | None = None, show: str | None = None) -> None:
    """List the configs shipped for a command group, or print one of them.

    Args:
        group: The command group (set by ``domainfm <group> configs``); all groups when ``None``.
        show: A config to print (its file name, e.g. ``pluto_tiny.yaml``, or a path).
    """
    from domainfm.shared.config import resolve_config_path, shipped_configs

    if show is not None:
        path = resolve_config_path(show)
        print(f"# {path}\n{path.read_text()}", end="")
        return
    rows = shipped_configs(group)
    if not rows:
        print(f"no configs are shipped for {group or 'any group'} yet")
    for command, path, description in rows:
        print(f"{path.name:32s} {command:28s} {description}")


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


def _print_top_help() -> None:
    print(
        f"usage: domainfm <group> <verb> [options] | domainfm <command> [options]\n\n"
        f"domainfm {__version__}: foundation models for radiology, pathology and remote sensing.\n\n"
        "command groups:"
    )
    for name, group in GROUPS.items():
        print(f"  {name:16s} {group.help}")
    print("\ncommands:")
    for name, target in COMMANDS.items():
        print(f"  {name:16s} {_first_line(load_object(target).__doc__)}")
    print("\n`domainfm <group> --help` lists a group's verbs; `... <verb> --help` its options.")


def _print_group_help(name: str, group: Group) -> None:
    print(f"usage: domainfm {name} <verb> [options]\n\n{group.help}\n\nverbs:")
    verbs = group.verbs()
    for verb, target in verbs.items():
        print(f"  {verb:16s} {_first_line(load_object(target).__doc__)}")
    if not verbs:
        print("  (none yet: this group's verbs arrive with its issue)")


def normalise_option_spelling(argv: Sequence[str], function: Callable[..., Any]) -> list[str]:
    """Accepts ``--tile-size`` for ``--tile_size``, and list options one element at a time.

    Only names of ``function``'s parameters are rewritten. A list option given a single value becomes
    jsonargparse's append form (``--mpp+``), so ``--mpp 0.5 --mpp 1.0`` means ``[0.5, 1.0]``;
    ``--mpp [0.5,1.0]`` is left as it is. For commands without positional arguments, bare values after
    a list option are its further elements: ``--input a.png b.png`` (what a shell glob gives) means both.
    """
    parameters = inspect.signature(function).parameters
    lists = {name for name, p in parameters.items() if "list[" in str(p.annotation)}
    positional = any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in parameters.values())
    out: list[str] = []
    appending = None  # a list option whose following bare values are its further elements
    for i, token in enumerate(argv):
        if token.startswith("--") and len(token) > 2:
            appending = None
            name, equals, value = token[2:].partition("=")
            under = name.replace("-", "_")
            if under in parameters or under.removeprefix("no_") in parameters:
                given = value if equals else (argv[i + 1] if i + 1 < len(argv) else "")
                if under in lists and not given.lstrip().startswith("["):
                    under += "+"  # one element: appended, so repeating the option builds the list
                    appending = None if equals else under
                token = f"--{under}{equals}{value}"
            out.append(token)
        elif appending and not positional and out and not out[-1].startswith("--"):
            out += [f"--{appending}", token]  # `--input a.png b.png` (a shell glob): both elements
        else:
            out.append(token)
    return out


def run_command(
    command: str, function: Callable[..., Any], argv: Sequence[str], defaults: dict[str, Any] | None = None
) -> int:
    """Parses ``argv`` for ``function``, records the resolved config, runs it and returns an exit code."""
    from domainfm.shared.config import (
        ConfigError,
        RunRecord,
        check_values,
        command_parser,
        explain_parse_error,
        set_current_run,
    )

    parser = command_parser(function, prog=f"domainfm {command}")
    argv = normalise_option_spelling(argv, function)
    if defaults:
        parser.set_defaults(**defaults)
    try:
        cfg = parser.parse_args(list(argv))
    except SystemExit as done:  # --help and --print_config stop here
        return done.code if isinstance(done.code, int) else 0
    except argparse.ArgumentError as error:
        print(
            f"domainfm {command}: error: {explain_parse_error(error)} (`domainfm {command} --help` lists the options)",
            file=sys.stderr,
        )
        return 2
    try:
        check_values(cfg.as_dict())
    except ConfigError as error:
        print(f"domainfm {command}: error: {explain_parse_error(error)}", file=sys.stderr)
        return 2
    _given_paths[:] = _paths_in(cfg.as_dict())
    set_current_run(RunRecord(command, [*command.split(), *argv], parser.dump(cfg, skip_unset=False)))
    init = parser.instantiate(cfg)
    parameters = inspect.signature(function).parameters.values()
    args = [init[p.name] for p in parameters if p.kind is inspect.Parameter.POSITIONAL_ONLY]
    result = function(
        *args, **{p.name: init[p.name] for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    )
    return result if isinstance(result, int) else 0


_given_paths: list[tuple[str, str]] = []  # (option, path) of the running command, for error messages

_OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free some or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?)",
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "is not a folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files; lower --workers",
    errno.ENOTEMPTY: "folder not empty",
    errno.EEXIST: "already exists",
}


def _paths_in(options: dict[str, Any]) -> list[tuple[str, str]]:
    paths = []
    for name, value in options.items():
        values = value if isinstance(value, list) else [value]
        paths += [(name, str(v)) for v in values if isinstance(v, os.PathLike)]
    return paths


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _output_option() -> str | None:
    for name, path in _given_paths:
        if name in ("out", "workdir"):
            return path
    return None


def _store_option() -> str | None:
    for name, path in _given_paths:
        if name in ("store", "embeddings"):
            return path
    return None


def _checkpoint_option() -> str | None:
    for name, path in _given_paths:
        if name in ("checkpoint", "vae", "init", "image_checkpoint"):
            return path
    return None


def describe_user_error(error: BaseException) -> str | None:
    """One line for an exception caused by the user's input or machine (disk, files), or ``None`` for a bug.

    Known kinds: :class:`OSError` with a file-system errno (full or read-only disk, permissions, missing
    files, symlink loops), Pillow's decompression-bomb guard, and zarr / codec errors while a store is
    read (the message names the store and suggests ``domainfm tiles verify``).
    """
    if isinstance(error, OSError) and error.errno in _OUTPUT_ERRNOS:
        where = error.filename or (_output_option() if error.errno in _DISK_ERRNOS else None) or "?"
        if error.filename2:
            where = f"{where} -> {error.filename2}"
        return f"{where}: {_OUTPUT_ERRNOS[error.errno]}"
    name = type(error).__name__
    module = type(error).__module__ or ""
    if name == "DecompressionBombError":
        return f"an image is too large to decode safely ({error}); crop or downscale it first"
    if module.split(".")[0] in ("zarr", "numcodecs", "blosc", "zstandard", "imagecodecs") or name in (
        "ContainsArrayError",
        "ContainsGroupError",
        "ArrayNotFoundError",
        "GroupNotFoundError",
        "ReadOnlyError",
    ):
        store = _store_option() or "the tile store"
        return (
            f"{store}: could not be read ({name}: {' '.join(str(error).split())[:300]}); "
            f"`domainfm tiles verify {store}` checks it"
        )
    if module.startswith("safetensors") or name == "SafetensorError":
        checkpoint = _checkpoint_option() or "a checkpoint"
        return f"{checkpoint}: not a readable safetensors file ({' '.join(str(error).split())[:300]})"
    if isinstance(error, RuntimeError) and "Error(s) in loading state_dict" in str(error):
        checkpoint = _checkpoint_option() or "a checkpoint"
        detail = " ".join(str(error).split())[:300]
        return f"{checkpoint}: its weights do not fit the model ({detail}); was it written by another command?"
    return None


def _report(error: BaseException) -> int:
    """Prints one line for ``error`` (the traceback too under DOMAINFM_DEBUG=1); returns the exit status."""
    from domainfm.shared.errors import DomainfmError

    if os.environ.get("DOMAINFM_DEBUG", "") not in ("", "0"):
        traceback.print_exception(error)
    if isinstance(error, DomainfmError):
        print(f"domainfm: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    message = describe_user_error(error)
    if message is not None:
        print(f"domainfm: error: {message}", file=sys.stderr)
        return 2
    text = " ".join(str(error).split())[:500]
    print(
        f"domainfm: internal error: {type(error).__name__}: {text} (rerun with DOMAINFM_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


# Deprecations inside libraries that a user cannot act on (they name library internals, not the user's input).
LIBRARY_DEPRECATIONS = (r".*isinstance\(treespec, LeafSpec\).*",)


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    return f"domainfm: warning: {' '.join(str(message).split())}\n"


@contextlib.contextmanager
def _user_warnings() -> Iterator[None]:
    """Warnings as one line each without source lines, library deprecations hidden (all of it under DOMAINFM_DEBUG)."""
    original = warnings.formatwarning
    with warnings.catch_warnings():  # restores the filters on exit
        if os.environ.get("DOMAINFM_DEBUG", "") in ("", "0"):
            warnings.formatwarning = _one_line_warning
            for pattern in LIBRARY_DEPRECATIONS:
                warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            warnings.formatwarning = original


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``domainfm`` with ``argv`` (``sys.argv[1:]`` when ``None``) and returns the exit status.

    0 success, 2 bad input (one line naming the file or option), 1 an unexpected error (a bug; one line,
    the traceback with ``DOMAINFM_DEBUG=1``), 130 interrupted.
    """
    _given_paths.clear()
    try:
        with _user_warnings():
            return _main(argv)
    except KeyboardInterrupt:
        print("domainfm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        return _report(error)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print_top_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    head, rest = argv[0], argv[1:]
    if head in COMMANDS:
        return run_command(head, load_object(COMMANDS[head]), rest)
    if head in GROUPS:
        group = GROUPS[head]
        verbs = group.verbs()
        if not rest or rest[0] in ("-h", "--help"):
            _print_group_help(head, group)
            return 0 if rest else 2
        if rest[0] not in verbs:
            print(
                f"domainfm {head}: unknown verb {rest[0]!r}; choose from {', '.join(verbs) or '(none yet)'}",
                file=sys.stderr,
            )
            return 2
        function = load_object(verbs[rest[0]])
        defaults = {"group": head} if "group" in inspect.signature(function).parameters else None
        return run_command(f"{head} {rest[0]}", function, rest[1:], defaults)
    print(
        f"domainfm: unknown command {head!r}; `domainfm --help` lists the groups and commands",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
