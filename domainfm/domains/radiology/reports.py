"""Radiology reports: CSV, JSONL, plain text and Open-i (IU X-ray) XML, split into sentences.

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) samples one sentence of the findings or impression
section per image per step, so reports are stored as sentence lists. Accepted inputs, alone or mixed in
one folder (other files there are named as skipped):

* CSV or JSONL: a study id column (``study_id``, ``study``, ``id``, ``uid``, ``study id``; any case) and
  ``findings`` and/or ``impression`` (both: findings then impression); else one ``report``/``text`` column;
* Open-i XML (``<AbstractText Label="FINDINGS">``, ``IMPRESSION``), where each ``<parentImage id=...>``
  names an image of the report;
* ``.txt``, one report per file named by its study id (MIMIC-CXR): its ``FINDINGS:`` and ``IMPRESSION:``
  sections when it has them, else the whole text.

Sentences (:func:`split_sentences`) end at ``.``, ``!`` or ``?`` followed by white space; a bare list number
(``1.``, ``2)``) is joined to the text it numbers; the anonymisation token ``XXXX`` is dropped, and a
sentence left without a word is dropped with it.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from domainfm.shared.errors import DomainfmError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
LIST_MARKER = re.compile(r"^\(?\d{1,2}[.)]$")
ANONYMISED = re.compile(r"-?X{3,}")  # "XXXX", and the hyphen of "x-XXXX"
SECTIONS = ("findings", "impression")
STUDY_COLUMNS = ("study_id", "study id", "studyid", "study", "uid", "id")
TEXT_COLUMNS = ("report", "text", "report_text", "report text")
TABLE_SUFFIXES = (".csv", ".jsonl", ".ndjson")
REPORT_SUFFIXES = (*TABLE_SUFFIXES, ".xml", ".txt")
TXT_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:", re.M | re.I)
TXT_HEADING = re.compile(r"^\s*[A-Z][A-Z /&-]{2,}:", re.M)


class ReportsError(DomainfmError, ValueError):
    """A report file that cannot be read; the message names the file and the fix."""


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


def _clean(sentence: str) -> str:
    """``sentence`` without anonymisation tokens and the spaces and commas they leave behind."""
    text = ANONYMISED.sub(" ", sentence)
    text = re.sub(r"(\s*,)+\s*([.!?])", r"\2", text)  # "Comparison XXXX, XXXX." -> "Comparison ."
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip(" ,;:")


def split_sentences(text: str | None) -> list[str]:
    """Sentences of a section: list numbers kept with their item, ``XXXX`` dropped, wordless ones dropped."""
    if not text:
        return []
    parts = [p.strip() for p in SENTENCE_END.split(" ".join(str(text).split())) if p.strip()]
    joined: list[str] = []
    marker = ""
    for part in parts:
        if LIST_MARKER.match(part):
            marker = f"{marker} {part}".strip()
            continue
        joined.append(f"{marker} {part}".strip())
        marker = ""
    sentences = [_clean(p) for p in joined]
    return [s for s in sentences if _has_words(s)]


def _has_words(sentence: str) -> bool:
    """Whether ``sentence`` holds a word of two letters or more besides its list number."""
    words = sentence.split()
    if words and LIST_MARKER.match(words[0]):
        words = words[1:]
    return any(re.search(r"[A-Za-z]{2,}", w) for w in words)


def _column(lowered: dict[str, object], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in lowered), None)


def _from_row(row: dict[str, object], source: Path, line: int) -> Report:
    lowered = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    study_column = _column(lowered, STUDY_COLUMNS)
    text_columns = [c for c in (*SECTIONS, *TEXT_COLUMNS) if c in lowered]
    if study_column is None or not text_columns:
        raise ReportsError(
            f"{source}: a report table needs a study id column ({', '.join(STUDY_COLUMNS)}) and findings and/or "
            f"impression (or one of {', '.join(TEXT_COLUMNS)}); it has {[str(k) for k in row if k is not None]}: "
            "rename its columns"
        )
    study = str(lowered[study_column] or "").strip()
    if not study:
        raise ReportsError(f"{source}, line {line}: the study id ({study_column}) is empty")
    sections = {name: split_sentences(lowered.get(name)) for name in SECTIONS if name in lowered}  # type: ignore[arg-type]
    if not any(name in lowered for name in SECTIONS):
        column = next(c for c in TEXT_COLUMNS if c in lowered)
        sections = {"findings": split_sentences(lowered[column])}  # type: ignore[arg-type]
    return Report(study, sections)


def read_table(path: Path) -> list[Report]:
    """Reports from a CSV or JSONL file (columns matched in any case; see the module docstring)."""
    rows: list[tuple[int, dict]] = []
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ReportsError(f"{path}, line {number}: not JSON ({error.msg})") from error
                    if not isinstance(row, dict):
                        raise ReportsError(
                            f"{path}, line {number}: a JSONL report is one object per line, not {row!r:.40}"
                        )
                    rows.append((number, row))
        else:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                rows = list(enumerate(csv.DictReader(handle), 2))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ReportsError(f"{path}: not a UTF-8 CSV/JSONL report table ({error})") from error
    if not rows:
        raise ReportsError(f"{path}: holds no reports (a header and one row per study are needed)")
    return [_from_row(row, path, number) for number, row in rows]


def read_openi_xml(path: Path) -> Report:
    """One Open-i / IU X-ray report XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ReportsError(f"{path} is not well-formed XML: {error}") from error
    uid = root.find(".//uId")
    study = uid.get("id") if uid is not None and uid.get("id") else path.stem
    sections = {}
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").lower()
        if label in SECTIONS:
            sections[label] = split_sentences(element.text)
    images = [e.get("id", "") for e in root.iter("parentImage") if e.get("id")]
    return Report(study, sections, images)


def read_text_report(path: Path) -> Report:
    """A plain-text report named by its study id: FINDINGS and IMPRESSION sections, else the whole text."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ReportsError(f"{path}: not a UTF-8 text report ({error})") from error
    sections: dict[str, list[str]] = {}
    for match in TXT_SECTION.finditer(text):
        rest = text[match.end() :]
        following = TXT_HEADING.search(rest)
        sections[match[1].lower()] = split_sentences(rest[: following.start()] if following else rest)
    return Report(path.stem, sections or {"findings": split_sentences(text)})


def read_report_file(path: Path) -> list[Report]:
    """The reports of one file of a supported format (by suffix)."""
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return [read_openi_xml(path)]
    if suffix == ".txt":
        return [read_text_report(path)]
    if suffix in TABLE_SUFFIXES:
        return read_table(path)
    raise ReportsError(f"{path}: not a report format domainfm reads (use {', '.join(REPORT_SUFFIXES)})")


def read_report_folder(folder: Path) -> tuple[list[Report], list[Path]]:
    """Reports of every supported file in ``folder`` (recursive), and the files skipped (other formats)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    reports, source = [], {}
    for path in (p for p in files if p.suffix.lower() in REPORT_SUFFIXES):
        for report in read_report_file(path):
            if report.study_id in source:
                raise ReportsError(
                    f"{path}: study {report.study_id!r} has a report in {source[report.study_id]} too; keep one "
                    "report per study in the folder"
                )
            source[report.study_id] = path
            reports.append(report)
    return reports, [p for p in files if p.suffix.lower() not in REPORT_SUFFIXES]


def read_reports(path: Path) -> list[Report]:
    """Reports from one file of a supported format, or a folder of them (mixed formats allowed)."""
    path = Path(path)
    if path.is_dir():
        return read_report_folder(path)[0]
    if not path.is_file():
        raise ReportsError(f"{path} does not exist: give a report file ({', '.join(REPORT_SUFFIXES)}) or a folder")
    return read_report_file(path)
