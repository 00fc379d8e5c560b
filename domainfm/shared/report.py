"""Report pieces shared by the quickstart sections and the benchmarks of every domain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SectionResult:
    """What a quickstart section contributes to the report (figure paths relative to its own folder)."""

    title: str
    summary: str
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    ok: bool = True


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts (same keys) as a Markdown table; floats to 4 significant digits."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def unpaired_report(pairs: int, unpaired: dict[str, list[Any]], limit: int = 20) -> str:
    """``N pairs`` and, per kind of unpaired item, a count and the first ``limit`` items, one per line."""
    lines = [f"{pairs} pairs"]
    for title, items in unpaired.items():
        if items:
            lines.append(f"{len(items)} {title}:")
            lines += [f"  {item}" for item in items[:limit]]
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def run_benchmark(measure: Callable[[Path], dict[str, Any]], workdir: Path | None, prefix: str, as_json: bool) -> int:
    """Runs ``measure(folder)`` and prints its fields as JSON or as an aligned table (every ``bench`` command).

    ``folder`` is ``workdir``, or a temporary folder (removed afterwards) when ``workdir`` is ``None``. A
    second benchmark on the same ``workdir`` fails at once (:mod:`domainfm.shared.outputs`).
    """
    import json
    import shutil
    import tempfile

    from domainfm.shared.outputs import lock_output

    folder = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with lock_output(folder, "benchmark folder"):  # one benchmark per work folder at a time
            folder.mkdir(parents=True, exist_ok=True)
            results = measure(folder)
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)  # our own temporary folder only
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        width = max(map(len, results), default=0) + 2
        for key, value in results.items():
            print(f"{key:{width}s} {value}")
    return 0
