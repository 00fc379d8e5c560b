"""The docs match the code: every ```python block in docs/ runs (in order, one namespace per page, in a scratch
directory), every relative link resolves and every page is reachable from the README, and every shell
command the docs and the README show names a real command, options it accepts and configs that exist."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
SHELL = re.compile(r"^```(?:bash|sh|console)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
PAGES = sorted(p for p in DOCS.rglob("*.md") if BLOCK.search(p.read_text()))
MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]


def test_tutorials_exist():
    assert PAGES, "docs/ must hold runnable tutorials"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
        code = compile(match[1], f"{page.name}[block {number}]", "exec")
        exec(code, namespace)


def _local_links(page: Path) -> list[Path]:
    return [(page.parent / t).resolve() for t in LINK.findall(page.read_text()) if "://" not in t]


def test_links_resolve_and_every_page_is_reachable_from_the_readme():
    for page in MARKDOWN:
        for target in _local_links(page):
            assert target.exists(), f"{page.relative_to(ROOT)} links to a missing {target}"
    reached, todo = {README.resolve()}, [README]
    while todo:
        for target in _local_links(todo.pop()):
            if target.suffix == ".md" and target not in reached:
                reached.add(target)
                todo.append(target)
    unreached = {p.relative_to(ROOT) for p in DOCS.rglob("*.md") if p.resolve() not in reached}
    assert not unreached, f"docs pages no link from the README leads to: {sorted(map(str, unreached))}"


def _documented_commands() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every ``domainfm ...`` line in the shell blocks (continuations joined, comments cut)."""
    commands = []
    for page in MARKDOWN:
        for block in SHELL.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if line.split() and Path(line.split()[0]).name == "domainfm":
                    commands.append((str(page.relative_to(ROOT)), shlex.split(line, comments=True)[1:]))
    return commands


def test_documented_commands_exist_and_accept_their_options(capsys: pytest.CaptureFixture[str]):
    from domainfm.cli import COMMANDS, GROUPS, main

    commands = _documented_commands()
    undocumented = set(GROUPS) - {argv[0] for _, argv in commands if argv}
    assert not undocumented, f"command groups no shell example shows: {sorted(undocumented)}"
    checked = 0
    for page, argv in commands:
        if argv and argv[0].startswith("-"):  # `domainfm --help`
            assert main(argv) == 0, f"{page}: domainfm {' '.join(argv)}"
            capsys.readouterr()
            continue
        assert argv and (argv[0] in GROUPS or argv[0] in COMMANDS), f"{page}: unknown command {argv[:1]}"
        command = [argv[0]]
        if argv[0] in GROUPS:  # the verb and any sub-verb: the words before the first option or argument
            for word in argv[1:]:
                if word.startswith("-") or "/" in word or "." in word or word.isupper():
                    break
                command.append(word)
        assert main([*command, "--help"]) == 0, f"{page}: `domainfm {' '.join(command)}` is not a command"
        usage = capsys.readouterr().out
        for option in (w.strip("[]").split("=")[0] for w in argv if w.strip("[]").startswith("--")):
            underscored = "--" + option[2:].replace("-", "_")  # the parser takes --tile-size for --tile_size
            assert re.search(rf"{re.escape(underscored)}\b", usage), (
                f"{page}: `domainfm {' '.join(command)}` has no {option}"
            )
        for i, word in enumerate(argv[:-1]):
            if word == "--config":
                assert (ROOT / argv[i + 1]).is_file(), f"{page}: no config {argv[i + 1]}"
        checked += 1
    assert checked >= 30
