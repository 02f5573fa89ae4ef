"""Imports inside critneuron follow the table in docs/ARCHITECTURE.md (data flows one way)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "critneuron"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """Dotted name inside the package; a subpackage's `__init__` is the subpackage's name."""
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def table(text: str) -> list[tuple[str, str]]:
    """(module, may-import cell) of each row of the module table, in order."""
    rows = re.findall(r"^\| `([\w.]+)` \|[^|]*\| ([^|]*) \|$", text, flags=re.M)
    return [(module, allowed.strip()) for module, allowed in rows]


def expand(cell: str, modules: list[str]) -> set[str] | None:
    """The modules a may-import cell allows (None: anything); `pkg.*` is every module of `pkg`."""
    if cell == "anything":
        return None
    if cell == "–":
        return set()
    allowed = set()
    for entry in (e.strip() for e in cell.split(",")):
        allowed |= {m for m in modules if m.startswith(entry[:-1])} if entry.endswith(".*") else {entry}
    return allowed


def critneuron_imports(source: str, here: str, modules: set[str]) -> set[str]:
    """The critneuron modules (as in the table) that `source`, the module `here`, imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("critneuron.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(["critneuron", *here.split(".")][: -node.level] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base.startswith("critneuron"):
                continue
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")[1:]
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                found.add(".".join(parts))
    return found


def test_every_import_is_allowed_by_the_architecture_table() -> None:
    rows = table(ARCHITECTURE.read_text())
    listed = [m for m, _ in rows]
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    assert set(listed) <= modules, f"table lists missing modules {sorted(set(listed) - modules)}"
    bad = {}
    for module, path in files.items():
        imports = critneuron_imports(path.read_text(), module, modules) - {module}
        if module not in listed:
            assert not imports, f"{module} imports {sorted(imports)} but is not in docs/ARCHITECTURE.md"
            continue
        allowed = expand(dict(rows)[module], listed)
        if allowed is not None and imports - allowed:
            bad[module] = sorted(imports - allowed)
    assert bad == {}


def upward_rows(rows: list[tuple[str, str]]) -> list[str]:
    """Modules whose may-import cell names a module that is not above them in the table."""
    listed = [m for m, _ in rows]
    return [m for i, (m, cell) in enumerate(rows)
            if not (expand(cell, listed) or set()) - {m} <= set(listed[:i])]


def test_the_table_only_lets_modules_import_what_stands_above_them() -> None:
    rows = table(ARCHITECTURE.read_text())
    assert len(rows) > 20 and upward_rows(rows) == []


def test_checker_sees_every_import_form() -> None:
    source = (
        "import critneuron.mip.scores\n"
        "from critneuron.mip.solve import x\n"
        "from critneuron import config, errors as e\n"
        "from critneuron.nets import data\n"
        "from . import store\n"
        "from ..mip.spec import y\n"
        "import torch, critneuron.nets.train\n"
    )
    modules = {"mip.scores", "mip.solve", "config", "errors", "nets.data", "nets.train", "experiments.store",
               "mip.spec", "experiments.runs"}
    assert critneuron_imports(source, "experiments.runs", modules) == {
        "mip.scores", "mip.solve", "config", "errors", "nets.data", "experiments.store", "mip.spec", "nets.train"}
    assert expand("mip.*, config", ["config", "mip.spec", "mip.bounds", "nets.data"]) == {"mip.spec", "mip.bounds", "config"}


def test_a_table_that_lets_a_module_import_one_below_it_is_caught() -> None:
    text = "| `errors` | x | – |\n| `config` | x | nets.data |\n| `nets.data` | x | config, errors |\n"
    assert upward_rows(table(text)) == ["config"]
