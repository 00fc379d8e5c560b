"""``domainfm quickstart``: run every domain's part on built-in sample data and write one report folder.

Each part is a *section*: a function ``run(out_dir, device, seed) -> SectionResult`` listed in
:data:`SECTIONS`. Domain issues add their section here. The report is built in ``<out>.partial-<pid>-<hex>``
(a name unique to the run) and moved to ``<out>`` only when written completely; an existing ``<out>`` is
replaced only when it is an earlier quickstart report (any other folder is refused, never deleted). A
section that fails is recorded as failed in the report and makes the command exit non-zero.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from domainfm import __version__
from domainfm.shared.config import Seed
from domainfm.shared.optional import load_object
from domainfm.shared.outputs import (
    check_output,
    has_marker,
    lock_output,
    partial_path,
    remove_leftovers,
    replace_output,
    write_marker,
)
from domainfm.shared.report import SectionResult, markdown_table

SECTIONS: dict[str, str] = {
    "backbones": "domainfm.studies.shared.backbones.quickstart:run",
    "tiles": "domainfm.studies.shared.tiles.quickstart:run",
    "peft": "domainfm.studies.shared.peft.quickstart:run",
    "foundation": "domainfm.studies.shared.foundation.quickstart:run",
    "radiology": "domainfm.studies.radiology.quickstart:run",
    "pathology": "domainfm.studies.pathology.quickstart:run",
    "remote_sensing": "domainfm.studies.remote_sensing.quickstart:run",
    "segmentation": "domainfm.studies.segmentation.quickstart:run",
    "deployment": "domainfm.studies.deploy_quickstart:run",
}


def _run_section(name: str, out: Path, device: Any, seed: int) -> tuple[SectionResult, float]:
    start = time.perf_counter()
    run: Callable[..., SectionResult] = load_object(SECTIONS[name])  # type: ignore[assignment]
    section_dir = out / name
    section_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(section_dir, device, seed)
    except Exception:  # a failing section is reported, and the others still run
        result = SectionResult(name, "**FAILED**\n\n```\n" + traceback.format_exc() + "```", ok=False)
    return result, time.perf_counter() - start


def write_report(out: Path, results: dict[str, tuple[SectionResult, float]], device: str) -> None:
    """Writes ``index.md`` and ``results.json`` for the section results."""
    failed = [name for name, (result, _) in results.items() if not result.ok]
    lines = [
        "# domainfm quickstart report",
        "",
        f"domainfm {__version__}, device `{device}`. Status: "
        + (f"**FAILED** ({', '.join(failed)})" if failed else "ok"),
        "",
        "Rerun with `domainfm quickstart --config config.yaml` from this folder's parent.",
        "",
    ]
    for name, (result, seconds) in results.items():
        lines += [
            f"## {result.title}",
            "",
            f"_{seconds:.1f} s_",
            "",
            result.summary,
            "",
            markdown_table(result.table),
            "",
        ]
        lines += [f"![{Path(fig).stem}]({name}/{fig})" for fig in result.figures] + [""]
    (out / "index.md").write_text("\n".join(lines))
    payload = {
        "domainfm": __version__,
        "device": device,
        "ok": not failed,
        "sections": {name: {**asdict(result), "seconds": round(s, 2)} for name, (result, s) in results.items()},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))


def is_quickstart_report(folder: Path) -> bool:
    """A report folder an earlier quickstart wrote: its marker, or (before markers) its ``results.json``."""
    if has_marker(folder, "quickstart"):
        return True
    try:
        results = json.loads((Path(folder) / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(results, dict) and {"domainfm", "sections", "ok"} <= set(results) and (folder / "index.md").is_file()
    )


def quickstart(
    out: Path = Path("quickstart_report"),
    sections: list[str] | None = None,
    device: str = "auto",
    seed: Seed = 0,
) -> int:
    """Run every domain on built-in sample data and write a report (table and pictures per domain).

    Args:
        out: Report folder (a previous report there is replaced when the run completes; any other existing
            folder is refused). Built in ``<out>.partial-<pid>-<hex>`` meanwhile.
        sections: Sections to run, all when unset.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: Seed for sample data and model initialisation.
    """
    from domainfm.shared.config import ConfigError, save_resolved_config
    from domainfm.shared.engine import resolve_device

    names = sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown quickstart section(s) {unknown}; choose from {list(SECTIONS)}")
    torch_device = resolve_device(device)
    out = Path(out)
    with lock_output(out, "quickstart report"):  # one run writes `out` at a time
        check_output(out, "quickstart report", True, is_quickstart_report)  # a previous report is replaced
        remove_leftovers(out, lambda path: has_marker(path, "quickstart-partial"))
        partial = partial_path(out)  # unique to this run: never a folder a user owns
        partial.mkdir(parents=True)
        try:
            write_marker(partial, "quickstart-partial")
            results = {}
            for name in names:
                print(f"[quickstart] {name} ...", flush=True)
                results[name] = _run_section(name, partial, torch_device, seed)
                result, seconds = results[name]
                print(f"[quickstart] {name}: {'ok' if result.ok else 'FAILED'} in {seconds:.1f} s", flush=True)
            write_report(partial, results, str(torch_device))
            save_resolved_config(partial)
            write_marker(partial, "quickstart")
            replace_output(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # this run's own folder only
            raise
    failed = [n for n, (r, _) in results.items() if not r.ok]
    print(f"[quickstart] report: {out / 'index.md'}" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0
