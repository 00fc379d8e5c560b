"""Every ```python block in docs/ runs, in order, one namespace per page, in a scratch directory."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))


def test_tutorials_exist():
    assert PAGES, "docs/ must hold runnable tutorials"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
        code = compile(match[1], f"{page.name}[block {number}]", "exec")
        exec(code, namespace)
