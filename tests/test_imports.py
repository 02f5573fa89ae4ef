"""Imports inside critneuron follow the table in docs/ARCHITECTURE.md (data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "critneuron"

_BASE = {
    "config": set(),
    "data": {"config", "models"},
    "models": {"config"},
    "train": {"config", "data", "models"},
    "spec": {"config"},
    "bounds": {"config", "spec"},
    "formulation": {"config", "spec", "bounds"},
    "solve": {"config", "formulation"},
    "scores": {"config", "spec", "bounds", "formulation", "solve"},
    "prune": {"config", "models", "spec", "scores"},
    "compact": {"config", "models", "prune"},
    "baselines": {"config", "data", "models", "train", "spec", "scores", "prune"},
    "decoupled": {"config", "data", "models", "train", "spec", "bounds", "scores"},
    "fingerprint": {"config"},
    "store": {"config", "fingerprint"},
}
_EVERYTHING_ABOVE = set(_BASE)
ALLOWED: dict[str, set[str] | None] = {
    **_BASE,
    "experiment": _EVERYTHING_ABOVE,
    "sweep": _EVERYTHING_ABOVE | {"experiment"},
    "budget": {"config", "data", "train", "scores", "prune", "baselines", "store", "fingerprint", "experiment"},
    "transfer": {"config", "data", "models", "train", "scores", "prune", "baselines", "decoupled", "store",
                 "fingerprint", "experiment"},
    "book": None,  # may import anything
    "cli": None,  # may import anything
}


def critneuron_imports(source: str, package: str = "critneuron") -> set[str]:
    """Top-level critneuron modules imported by `source` (absolute and relative imports)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else node.module or ""
            if node.level and node.module:
                base = f"{package}.{node.module}"
            names = [base] if base != package else [f"{package}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith(f"{package}.")}
    return found


def forbidden_edges(module: str, source: str) -> set[str]:
    """Imports of `module` that the table does not allow (modules outside the table: none)."""
    allowed = ALLOWED.get(module)
    if allowed is None:
        return set()
    return critneuron_imports(source) - allowed - {module}


def test_package_imports_follow_the_table() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert any(p.stem == "config" for p in modules)
    bad = {p.stem: forbidden_edges(p.stem, p.read_text()) for p in modules}
    assert {name: edges for name, edges in bad.items() if edges} == {}


def test_checker_sees_every_import_form() -> None:
    source = (
        "import critneuron.scores\n"
        "from critneuron.solve import x\n"
        "from critneuron import prune, store as s\n"
        "from . import cli\n"
        "from .sweep import y\n"
        "import torch, critneuron.data\n"
    )
    assert critneuron_imports(source) == {"scores", "solve", "prune", "store", "cli", "sweep", "data"}
    assert forbidden_edges("bounds", source) == {"scores", "solve", "prune", "store", "cli", "sweep", "data"}
    assert forbidden_edges("sweep", source) == {"cli"}
    assert forbidden_edges("cli", source) == set()
