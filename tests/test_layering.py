"""Layering: library code never imports study code, and ``domainfm.shared`` never imports a domain.

Study code (phantom data, phantom studies, quickstart sections, benchmarks, the PEFT comparison) lives in
``domainfm/studies``. Every other module under ``domainfm/`` is library code and must not import it, not
even lazily inside a function. The composition points name study modules too, but only as
``"module:function"`` strings, which load when a verb or section runs: the CLI tables
(``domainfm/cli.py``, ``domainfm/domains/*/cli.py``) and the quickstart's section list
(``domainfm/quickstart.py``). Those strings are allowed there and nowhere else in the library.

Real imports are ``ast`` ``Import``/``ImportFrom`` nodes (plus ``importlib.import_module("...")`` with a
literal name). Module names held in other strings (e.g. ``shared/deploy/registry.py``'s table of domain
deploy modules) are reported as a warning, not failed, for ``shared`` -> ``domains``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import domainfm

PACKAGE = Path(domainfm.__file__).parent
STUDIES = "domainfm.studies"
COMPOSITION_POINTS = {"cli.py", "quickstart.py"} | {f"domains/{d.name}/cli.py" for d in (PACKAGE / "domains").iterdir()}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def importer_name(path: Path) -> str:
    """The dotted name relative imports resolve against (``pkg.__init__`` for a package, so ``.`` is ``pkg``)."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "studies")


def imported_modules(source: str, name: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source`` (module ``name``), at any depth, relatives resolved.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level] if node.level else []
                base = ".".join(package + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def string_references(source: str, prefix: str) -> list[tuple[int, str]]:
    """``(line, string)`` of string constants that name a module under ``prefix`` (docstrings excluded)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and (node.value == prefix or node.value.startswith((prefix + ".", prefix + ":")))
    ]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_library_and_study_modules() -> None:
    names = {module_name(p) for p in library_modules()}
    assert {"domainfm.cli", "domainfm.domains.pathology.tiling", "domainfm.shared.tiles.store"} <= names
    assert not any(within(n, STUDIES) for n in names)
    studies = {module_name(p) for p in (PACKAGE / "studies").rglob("*.py")}
    assert {"domainfm.studies.pathology.phantom", "domainfm.studies.shared.peft.compare"} <= studies


def test_the_checks_catch_a_violation() -> None:
    source = (
        "def f():\n    from domainfm.studies.pathology import phantom\n"
        "from ..studies import device_check\nimport importlib\nimportlib.import_module('domainfm.studies.x')\n"
        "TABLE = {'a': 'domainfm.studies.x:run'}\n"
    )
    modules = [m for _, m in imported_modules(source, "domainfm.domains.pathology.tiling")]
    assert "domainfm.studies.pathology.phantom" in modules
    assert "domainfm.domains.studies.device_check" in modules  # relative, resolved against the package
    assert "domainfm.studies.x" in modules
    assert set(string_references(source, STUDIES)) == {(5, "domainfm.studies.x"), (6, "domainfm.studies.x:run")}
    resolved = imported_modules("from ...studies import x\n", "domainfm.domains.pathology.tiling")
    assert (1, "domainfm.studies.x") in resolved
    assert (1, "domainfm.studies.x") in imported_modules("from ..studies import x\n", "domainfm.domains.__init__")


def test_library_modules_never_import_study_code() -> None:
    bad = []
    for path in library_modules():
        for line, module in imported_modules(path.read_text(), importer_name(path)):
            if within(module, STUDIES):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    assert not bad, "library code imports study code (move it to domainfm/studies or cut it):\n" + "\n".join(bad)


def test_only_the_composition_points_name_study_modules() -> None:
    bad = []
    for path in library_modules():
        if path.relative_to(PACKAGE).as_posix() in COMPOSITION_POINTS:
            continue
        for line, text in string_references(path.read_text(), STUDIES):
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}")
    assert not bad, "only the CLI tables and the quickstart section list may name study modules:\n" + "\n".join(bad)


def test_shared_never_imports_a_domain() -> None:
    bad, named = [], []
    for path in sorted((PACKAGE / "shared").rglob("*.py")):
        source, where = path.read_text(), path.relative_to(PACKAGE.parent)
        for line, module in imported_modules(source, importer_name(path)):
            if within(module, "domainfm.domains"):
                bad.append(f"{where}:{line}: imports {module}")
        named += [f"{where}:{line}: {text!r}" for line, text in string_references(source, "domainfm.domains")]
    assert not bad, "domainfm.shared imports a domain module:\n" + "\n".join(bad)
    # domains register themselves (domainfm.shared.plugins): shared does not even name their modules
    assert not named, "domainfm.shared names domain modules by string:\n" + "\n".join(named)


def test_shared_names_no_domain() -> None:
    """No domain's name in shared code, docstrings included ("segmentation" is also a task kind, so allowed)."""
    import re

    pattern = re.compile(r"pathology|radiology|remote[ _-]sensing", re.IGNORECASE)
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted((PACKAGE / "shared").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "domainfm/shared names a domain:\n" + "\n".join(found)
