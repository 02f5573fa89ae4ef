"""Code fingerprints of stored stages: which source a result was computed with.

A stage (a kind of stored result) declares its code once, next to where it is cached, as a
`Code` of entries and the stages it builds on:

- ``"critneuron.mip.scores"``: a compute module, taken whole. Its imports from its own package
  (relative ones resolved) are followed, whole too, so ``critneuron.mip.scores`` covers
  formulation, solve, bounds and spec. Any change in such a module, even a new unused function,
  changes the fingerprint. Imports from other parts of the package (``critneuron.config``,
  ``critneuron.catalog``, another subpackage) are followed by definition, as below, so that a new
  scoring setting in `config` does not make every stored training stale.
- ``"critneuron.experiments.runs:_train"``: one top-level definition, for stage logic that lives
  in an orchestration module (the `experiments` package, sweep tasks), which imports far more
  than the stage uses. The definition's source is hashed, and the names it uses are followed,
  one definition at a time, into its own and other modules (imported whole only when a name is a
  module). Its module's other definitions are not part of it, so a change to the scoring glue in
  experiments/runs.py does not touch training's fingerprint.

The bookkeeping modules (`BOOKKEEPING`: this one and the result store) are not followed: storing a
result does not change it. Sources are compared as ASTs (`ast.dump`, no line numbers): comments, blank lines and code
moving up or down a file change nothing; docstrings do. Modules are found with
`importlib.util.find_spec` on the current `sys.path`, so the fingerprint is that of the code
this process imports, wherever the package lies; renaming or moving a module changes it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import subprocess
from dataclasses import dataclass
from pathlib import Path

from critneuron.errors import CritneuronError

PACKAGE = __name__.partition(".")[0]
# Modules that store results and name their code but never change a computed value: a stage that
# reaches them (e.g. through `Store.cached`) does not depend on them.
BOOKKEEPING = (__name__, "critneuron.experiments.store")
_computed: dict[tuple[str, ...], tuple[str, dict[str, tuple]]] = {}  # entries -> (fingerprint, file stamps)


class FingerprintError(CritneuronError, LookupError):
    """A declared code entry names a module or definition that cannot be found."""


@dataclass(frozen=True)
class Code:
    """The code one stored stage depends on: its own `entries` and the stages `after` it builds on.

    Example:
        >>> TRAIN_CODE = Code(("critneuron.nets.train", "critneuron.experiments.runs:_train"))
        >>> SCORE_CODE = Code(("critneuron.mip.scores",), after=(TRAIN_CODE,))
        >>> SCORE_CODE.record()["fingerprint"]  # doctest: +SKIP
    """

    entries: tuple[str, ...]
    after: tuple[Code, ...] = ()

    def all_entries(self) -> tuple[str, ...]:
        """Sorted entries of this stage and of every stage before it."""
        found = set(self.entries)
        for stage in self.after:
            found.update(stage.all_entries())
        return tuple(sorted(found))

    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the code `all_entries` reach (see the module docstring)."""
        return fingerprint(self.all_entries())

    def record(self) -> dict:
        """What a stored result keeps of its code: entries, fingerprint and git commit (or None)."""
        entries = self.all_entries()
        return {"entries": list(entries), "fingerprint": fingerprint(entries), "commit": git_commit()}


def fingerprint(entries: tuple[str, ...] | list[str]) -> str:
    """SHA-256 (16 hex digits) of the sources `entries` reach; FingerprintError if one is missing."""
    entries = tuple(entries)
    known = _computed.get(entries)
    if known is not None and all(_stamp(name) == stamp for name, stamp in known[1].items()):
        return known[0]
    files: dict[str, tuple] = {}
    digest = hashlib.sha256()
    for name, text in sorted(_closure(entries, files).items()):
        digest.update(f"{name}\0{text}\0".encode())
    _computed[entries] = (digest.hexdigest()[:16], files)
    return _computed[entries][0]


def is_current(record: dict | None) -> bool:
    """Whether a stored code `record` still matches the code: its entries resolve today to the
    fingerprint it holds. A missing record (a result from before fingerprints) is not current."""
    if not record:
        return False
    try:
        return fingerprint(record["entries"]) == record["fingerprint"]
    except (FingerprintError, KeyError):
        return False


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the checkout this package is imported from (None outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass(frozen=True)
class _Module:
    """One parsed module: its definitions, the internal names it imports, its loose statements."""

    is_package: bool
    text: str  # the whole module as a normalised AST dump
    definitions: dict[str, list[ast.stmt]]
    imports: dict[str, tuple[str, str | None]]  # local name -> (module, attribute or None)
    imported: tuple[tuple[str, str | None], ...]  # (module, attribute or None) of every internal import
    loose: str  # top-level statements that bind no name (side effects), docstring excluded


def _closure(entries: tuple[str, ...], files: dict[str, tuple] | None = None) -> dict[str, str]:
    """Normalised source of everything `entries` reach, keyed by ``module`` or ``module:name``;
    `files` gets the `_stamp` of every module read."""
    found: dict[str, str] = {}
    todo = list(entries)
    while todo:
        entry = todo.pop()
        if entry in found:
            continue
        module_name, _, attr = entry.partition(":")
        if module_name in BOOKKEEPING and entry not in entries:
            continue
        module = _module(module_name)
        if files is not None:
            files[module_name] = _stamp(module_name)
        if not attr:
            found[entry] = module.text
            for source, name in module.imported:
                target = _import_target(source, name)
                todo.append(target.partition(":")[0] if _same_package(module_name, module, target) else target)
            continue
        if attr in module.imports:
            todo.append(_import_target(*module.imports[attr]))
            found[entry] = ""
            continue
        if attr not in module.definitions:
            raise FingerprintError(f"code entry {entry!r}: {module_name} defines no {attr!r}")
        nodes = module.definitions[attr]
        found[entry] = "\n".join(ast.dump(node) for node in nodes)
        found[f"{module_name}:<module>"] = module.loose
        used = {name for node in nodes for name in _names_used(node)}
        for name in sorted(used - {attr}):
            if name in module.definitions:
                todo.append(f"{module_name}:{name}")
            elif name in module.imports:
                todo.append(_import_target(*module.imports[name]))
    return found


def _names_used(node: ast.AST) -> set[str]:
    """Names `node` loads, except in annotations: with ``from __future__ import annotations``
    they are never evaluated, so a type named only in a signature is not code the stage runs."""
    annotations = set()
    for n in ast.walk(node):
        if isinstance(n, ast.arg) and n.annotation is not None:
            annotations.add(n.annotation)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None:
            annotations.add(n.returns)
        elif isinstance(n, ast.AnnAssign):
            annotations.add(n.annotation)
    skipped = {id(a) for annotation in annotations for a in ast.walk(annotation)}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and id(n) not in skipped}


def _import_target(module: str, attr: str | None) -> str:
    """The entry an imported name stands for: a module (whole) or one of its definitions."""
    if attr is None:
        return module
    if _module(module).is_package and importlib.util.find_spec(f"{module}.{attr}") is not None:
        return f"{module}.{attr}"
    return f"{module}:{attr}"


def _same_package(name: str, module: _Module, target: str) -> bool:
    """Whether import `target` lies in the package of whole module `name` (or below it)."""
    package = name if module.is_package else name.rpartition(".")[0]
    target_module = target.partition(":")[0]
    return target_module.startswith(f"{package}.")


def _internal(name: str, own: str) -> bool:
    """Whether `name` is code of this package or of the entry's own top-level package."""
    top = name.partition(".")[0]
    return top in (PACKAGE, own.partition(".")[0])


def _stamp(name: str) -> tuple[str, bool, int, int] | None:
    """(path, is package, mtime, size) of module `name`'s source file; None if there is none."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        stat = Path(spec.origin).stat()
    except OSError:
        return None
    return spec.origin, spec.submodule_search_locations is not None, stat.st_mtime_ns, stat.st_size


def _module(name: str) -> _Module:
    stamp = _stamp(name)
    if stamp is None:
        raise FingerprintError(f"code entry {name!r}: no Python source module of that name on sys.path")
    return _parse(name, *stamp)


@functools.lru_cache(maxsize=256)
def _parse(name: str, path: str, is_package: bool, _mtime_ns: int, _size: int) -> _Module:
    """Parse one module file (cached until the file changes)."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    package = name if is_package else name.rpartition(".")[0]
    definitions: dict[str, list[ast.stmt]] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    loose = []
    for index, stmt in enumerate(_top_level(tree.body)):
        bound = _bound_names(stmt)
        for local, target in _imports(stmt, package, name).items():
            imports[local] = target
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        for local in bound:
            definitions.setdefault(local, []).append(stmt)
        is_docstring = index == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        if not bound and not is_docstring:
            loose.append(ast.dump(stmt))
    imported = {target for node in ast.walk(tree) for target in _imported(node, package, name)}
    return _Module(is_package, ast.dump(tree), definitions, imports, tuple(sorted(imported, key=str)), "\n".join(loose))


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Top-level statements, with those inside top-level ``if``/``try`` blocks (e.g. TYPE_CHECKING)."""
    out = []
    for stmt in body:
        if isinstance(stmt, ast.If):
            out.extend(_top_level(stmt.body + stmt.orelse))
        elif isinstance(stmt, ast.Try):
            out.extend(_top_level(stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse
                                  + stmt.finalbody))
        else:
            out.append(stmt)
    return out


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
    if not isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        return []
    return [n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    return importlib.util.resolve_name("." * node.level + (node.module or ""), package)


def _imports(stmt: ast.stmt, package: str, own: str) -> dict[str, tuple[str, str | None]]:
    """Local names a top-level import binds to internal code: name -> (module, attribute or None)."""
    if isinstance(stmt, ast.Import):
        return {(a.asname or a.name.partition(".")[0]): (a.name, None) for a in stmt.names if _internal(a.name, own)}
    if isinstance(stmt, ast.ImportFrom):
        source = _absolute(stmt, package)
        if _internal(source, own):
            return {(a.asname or a.name): (source, a.name) for a in stmt.names if a.name != "*"}
    return {}


def _imported(node: ast.AST, package: str, own: str) -> list[tuple[str, str | None]]:
    """(module, attribute or None) of each internal name an import statement anywhere in a module
    loads (for whole-module entries)."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names if _internal(a.name, own)]
    if isinstance(node, ast.ImportFrom):
        source = _absolute(node, package)
        if _internal(source, own):
            return [(source, a.name) for a in node.names if a.name != "*"]
    return []

