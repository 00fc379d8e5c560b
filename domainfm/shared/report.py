"""Report pieces shared by the quickstart sections of every domain."""

from __future__ import annotations

from dataclasses import dataclass, field
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
