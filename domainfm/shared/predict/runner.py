"""Predictions over many input files: one writer, resumable, every output renamed into place, checksummed.

``domainfm <domain> predict --checkpoint CKPT --input FILES_OR_FOLDERS --out DIR`` of every domain runs
:func:`run_predictions` with its own :data:`PredictOne` (what to write for one input):

* **Inputs.** Files, and folders searched recursively for the suffixes the domain reads; each input has a
  *key*, its path relative to the folder given (a file given alone: its name). Output files are named by
  the key with the output's suffix (``masks/case_7.png`` for ``case_7.jpg``), in one sub-folder per output
  kind; two inputs that would write one name (``a.jpg`` and ``a.png``) are refused before anything runs.
* **One writer, nothing lost.** ``DIR`` is locked (:mod:`domainfm.shared.outputs`) and must be new, empty,
  or a folder ``predict`` wrote (its ``.domainfm.json`` marker); anything else is refused, never written into.
* **Resume.** One input's files are written under ``DIR/.staging/<pid>-<hex>/`` and renamed into place
  when all are complete; then its *done record* (``DIR/.domainfm/done/<digest>.json``: the input's size and
  modification time, each output's size and SHA-256, the summary row) is written atomically. A rerun skips
  an input whose record matches the file and whose outputs are all present at their recorded size, so a
  killed run finishes only the rest. The marker holds the checkpoint's SHA-256 and the options: a rerun with
  another model or other options is refused (``--overwrite`` predicts everything again).
* **Bad inputs** (an unreadable or wrong file) are reported one line each, the others still run; the
  command then exits with status 2, and a rerun retries only them.
* **Summary.** ``DIR/predictions.csv`` (one row per input, columns the domain's) and ``DIR/summary.json``,
  rewritten atomically from the done records at the end of every run; a table of the first rows is printed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from domainfm.shared.deploy.card import Deployable
from domainfm.shared.errors import DomainfmError
from domainfm.shared.outputs import MARKER, check_output, lock_output, read_marker, write_marker

KIND = "predictions"
STATE = ".domainfm"
STAGING = ".staging"
TABLE = "predictions.csv"
SUMMARY = "summary.json"


class PredictError(DomainfmError, ValueError):
    """Inputs or an output folder that ``predict`` cannot use."""


@dataclass(frozen=True)
class InputFile:
    """One input: its path and its key (the relative name its outputs are named after)."""

    path: Path
    key: str

    @property
    def stem(self) -> str:
        """The key without its suffix (``sub/case_7`` for ``sub/case_7.jpg``; ``.nii.gz`` counts as one)."""
        name = PurePosixPath(self.key)
        suffix = "".join(name.suffixes[-2:]) if name.name.lower().endswith(".nii.gz") else name.suffix
        return self.key[: len(self.key) - len(suffix)] if suffix else self.key


@dataclass
class Outputs:
    """Where one input's files are written: staged, then renamed into ``out/<kind>/<stem><suffix>``."""

    out: Path
    staging: Path
    item: InputFile
    files: dict[str, Path] = field(default_factory=dict)  # final path relative to out -> staged path

    def path(self, kind: str, suffix: str) -> Path:
        """The staged file to write for output ``kind`` (a folder name such as ``masks``), e.g. ``.png``."""
        relative = f"{kind}/{self.item.stem}{suffix}"
        staged = self.staging / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        self.files[relative] = staged
        return staged


PredictOne = Callable[[Deployable, InputFile, Outputs], dict[str, Any]]
"""Writes one input's outputs (through ``Outputs.path``) and returns its summary row (JSON-able values)."""


@dataclass
class PredictionRun:
    """What :func:`run_predictions` did."""

    out: Path
    rows: list[dict[str, Any]]
    predicted: int
    skipped: int
    failed: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (also ``summary.json``)."""
        return {
            "out": str(self.out),
            "inputs": len(self.rows) + len(self.failed),
            "predicted": self.predicted,
            "skipped": self.skipped,
            "failed": self.failed,
            "table": str(self.out / TABLE),
        }


def collect_inputs(
    inputs: Sequence[str | Path], suffixes: Iterable[str], what: str, exclude: str | Path | None = None
) -> list[InputFile]:
    """The input files of ``inputs`` (files, and folders searched recursively for ``suffixes``).

    Files under ``exclude`` (the output folder, when it lies inside an input folder) and in hidden folders
    are left out, so a rerun never takes its own outputs as inputs.
    """
    wanted = tuple(s.lower() for s in suffixes)
    excluded = Path(exclude).resolve() if exclude is not None else None

    def outside(path: Path) -> bool:
        return excluded is None or not path.resolve().is_relative_to(excluded)

    found: dict[str, InputFile] = {}

    def add(path: Path, key: str) -> None:
        if key in found and found[key].path != path:
            raise PredictError(f"{found[key].path} and {path} would write the same outputs ({key}); give one of them")
        found[key] = InputFile(path, key)

    for given in map(Path, inputs):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file() and p.name.lower().endswith(wanted))
            files = [
                p for p in files if outside(p) and not any(part.startswith(".") for part in p.relative_to(given).parts)
            ]
            if not files:
                raise PredictError(f"{given} holds no {what} ({', '.join(wanted)}); give a folder or files that do")
            for path in files:
                add(path, path.relative_to(given).as_posix())
        elif given.is_file():
            add(given, given.name)
        else:
            raise PredictError(f"--input {given} does not exist")
    if not found:
        raise PredictError("no inputs: give --input files or folders")
    items = sorted(found.values(), key=lambda item: item.key)
    stems: dict[str, InputFile] = {}
    for item in items:
        other = stems.setdefault(item.stem, item)
        if other is not item:
            raise PredictError(
                f"{other.path} and {item.path} would write outputs of one name ({item.stem}.*); "
                "predict them into two --out folders"
            )
    return items


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _input_state(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _record_path(out: Path, key: str) -> Path:
    return out / STATE / "done" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finished(out: Path, item: InputFile) -> dict[str, Any] | None:
    """The done record of ``item`` if it matches the file and every output is in place."""
    path = _record_path(out, item.key)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != item.key or record.get("input") != _input_state(item.path):
        return None
    for relative, meta in record.get("outputs", {}).items():
        target = out / relative
        if not target.is_file() or target.stat().st_size != meta.get("size"):
            return None
    return record


def _is_predictions(folder: Path) -> bool:
    marker = read_marker(folder)
    return marker is not None and marker["kind"] == KIND


def _claim(out: Path, checkpoint_sha: str, options: dict[str, Any], overwrite: bool) -> None:
    """Checks and marks ``out`` (held under its lock): new, empty, or predictions of the same model and options."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} is a file; predictions go to a folder: choose another --out")
    existing = check_output(out, "predictions folder", True, _is_predictions, PredictError)
    marker = read_marker(out) if existing else None
    if marker is not None:
        differences = [
            name
            for name, now, before in (
                ("checkpoint", checkpoint_sha, marker.get("checkpoint_sha256")),
                ("options", options, marker.get("options")),
            )
            if now != before
        ]
        if differences and not overwrite:
            before = json.dumps(marker.get("options"), sort_keys=True)
            raise PredictError(
                f"{out} holds predictions of another {' and '.join(differences)} (before: options {before}); "
                "pass --overwrite to predict every input again, or choose another --out"
            )
        if differences:
            shutil.rmtree(out / STATE / "done", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / STAGING, ignore_errors=True)  # staged files of dead runs (we hold the lock)
    write_marker(out, KIND, checkpoint_sha256=checkpoint_sha, options=options)


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()})
    return buffer.getvalue()


def _print_table(run: PredictionRun, title: str, limit: int = 12) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns: list[str] = []
    for row in run.rows[:limit]:
        columns.extend(name for name in row if name not in columns)
    for name in columns[:8]:
        table.add_column(name)
    for row in run.rows[:limit]:
        table.add_row(*(_cell(row.get(name)) for name in columns[:8]))
    console = Console()
    if run.rows:
        console.print(table)
    more = f" (first {limit} shown)" if len(run.rows) > limit else ""
    console.print(
        f"{len(run.rows)} inputs predicted{more}: {run.predicted} now, {run.skipped} already done; "
        f"{len(run.failed)} failed. Table: {run.out / TABLE}",
        soft_wrap=True,
    )
    for key, reason in run.failed.items():
        console.print(f"  failed {key}: {reason}", markup=False, soft_wrap=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def run_predictions(
    deployable: Deployable,
    inputs: Sequence[str | Path],
    out: str | Path,
    predict_one: PredictOne,
    suffixes: Iterable[str],
    what: str = "inputs",
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    title: str = "predictions",
) -> PredictionRun:
    """Predicts every input not done yet into ``out`` (see the module docstring); returns what happened."""
    from tqdm.auto import tqdm

    out = Path(out)
    items = collect_inputs(inputs, suffixes, what, exclude=out)
    options = dict(options or {})
    checkpoint_sha = file_sha256(deployable.source)
    with lock_output(out, "predictions folder"):
        _claim(out, checkpoint_sha, options, overwrite)
        rows: list[dict[str, Any]] = []
        failed: dict[str, str] = {}
        predicted = skipped = 0
        staging_root = out / STAGING / f"{os.getpid()}-{secrets.token_hex(4)}"
        try:
            for item in tqdm(items, desc=title, unit="input", disable=not progress):
                record = _finished(out, item)
                if record is not None and not overwrite:
                    rows.append(record["row"])
                    skipped += 1
                    continue
                try:
                    rows.append(_predict_item(deployable, item, out, staging_root, predict_one))
                    predicted += 1
                except (DomainfmError, OSError, ValueError) as error:  # one bad input; the others still run
                    failed[item.key] = str(error)
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        run = PredictionRun(out, rows, predicted, skipped, failed)
        _write_atomic(out / TABLE, _csv(rows))
        _write_atomic(out / SUMMARY, json.dumps(run.to_dict(), indent=1) + "\n")
    if progress:
        _print_table(run, title)
    return run


def _predict_item(
    deployable: Deployable, item: InputFile, out: Path, staging_root: Path, predict_one: PredictOne
) -> dict[str, Any]:
    staging = staging_root / hashlib.sha256(item.key.encode()).hexdigest()[:16]
    staging.mkdir(parents=True, exist_ok=True)
    state = _input_state(item.path)
    outputs = Outputs(out, staging, item)
    try:
        row = {"input": item.key, **predict_one(deployable, item, outputs)}
        written = {}
        for relative, staged in outputs.files.items():
            if not staged.is_file():
                raise PredictError(f"{item.path}: the {relative} output was not written")
            written[relative] = {"size": staged.stat().st_size, "sha256": file_sha256(staged)}
        for relative, staged in outputs.files.items():
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = {"key": item.key, "input": state, "outputs": written, "row": row}
    _write_atomic(_record_path(out, item.key), json.dumps(record, indent=1) + "\n")
    return row


def is_predictions_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a folder ``predict`` wrote (its marker)."""
    folder = Path(folder)
    return (folder / MARKER).is_file() and _is_predictions(folder)


def load_for_domain(checkpoint: str | Path, domain: str, kinds: Iterable[str] | None = None) -> Deployable:
    """The downstream model in ``checkpoint``, refused by name unless it is one of ``domain``'s (``kinds``)."""
    from domainfm.shared.deploy import load_deployable

    deployable = load_deployable(checkpoint)
    kind = deployable.card.kind
    owner = kind.split(".", 1)[0]
    if owner != domain:
        raise PredictError(f"{checkpoint} is a {kind} model; run `domainfm {owner.replace('_', '-')} predict` with it")
    allowed = sorted(kinds or ())
    if allowed and kind not in allowed:
        raise PredictError(f"{checkpoint} is a {kind} model; `predict` here takes {', '.join(allowed)}")
    return deployable
