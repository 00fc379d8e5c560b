"""Radiology reports: CSV, JSONL and Open-i (IU X-ray) XML, split into sentences.

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) samples one sentence of the findings or impression
section per image per step, so reports are stored as sentence lists. Accepted inputs:

* CSV or JSONL with a ``study_id`` column and ``findings`` and/or ``impression`` (case-insensitive; a
  single ``report``/``text`` column is taken as findings);
* a folder of, or single, Open-i XML files (``<AbstractText Label="FINDINGS">``, ``IMPRESSION``), where
  each ``<parentImage id=...>`` names an image that belongs to the report.

Sentences are split at ``.``, ``!`` or ``?`` followed by white space; the anonymisation token ``XXXX``
and blank sentences are kept out.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SECTIONS = ("findings", "impression")


@dataclass
class Report:
    """One study's report: sentences per section, and the image stems it names (Open-i only)."""

    study_id: str
    sections: dict[str, list[str]] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)

    @property
    def sentences(self) -> list[str]:
        """Findings then impression sentences."""
        return [s for name in SECTIONS for s in self.sections.get(name, [])]


def split_sentences(text: str | None) -> list[str]:
    """Sentences of a section (anonymisation-only and empty sentences dropped)."""
    if not text:
        return []
    parts = [p.strip() for p in SENTENCE_END.split(" ".join(str(text).split()))]
    return [p for p in parts if p and p.replace("XXXX", "").strip(" .,;:")]


def _from_row(row: dict[str, str], source: Path) -> Report:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    study = lowered.get("study_id") or lowered.get("study") or lowered.get("id")
    if not study:
        raise ValueError(f"{source}: a report has no study_id column ({sorted(lowered)})")
    sections = {name: split_sentences(lowered.get(name)) for name in SECTIONS}
    if not any(sections.values()):
        sections["findings"] = split_sentences(lowered.get("report") or lowered.get("text"))
    return Report(str(study).strip(), sections)


def read_table(path: Path) -> list[Report]:
    """Reports from a CSV or JSONL file."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON ({error})") from error
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    return [_from_row(row, path) for row in rows]


def read_openi_xml(path: Path) -> Report:
    """One Open-i / IU X-ray report XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path} is not well-formed XML: {error}") from error
    uid = root.find(".//uId")
    study = uid.get("id") if uid is not None and uid.get("id") else path.stem
    sections = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").lower()
        if label in SECTIONS:
            sections[label] = split_sentences(element.text)
    images = [e.get("id", "") for e in root.iter("parentImage") if e.get("id")]
    return Report(study, sections, images)


def read_reports(path: Path) -> list[Report]:
    """Reports from a CSV/JSONL file, an Open-i XML file, or a folder of Open-i XML files."""
    path = Path(path)
    if path.is_dir():
        return [read_openi_xml(p) for p in sorted(path.glob("*.xml"))]
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if path.suffix.lower() == ".xml":
        return [read_openi_xml(path)]
    return read_table(path)
