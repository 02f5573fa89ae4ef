"""Book profiles: which parameters each chapter notebook gets (``notebooks/profiles/NAME.yaml``).

A profile may extend another (``extends: paper``: its sections are merged over the other's) and may
name a folder of executed chapters to reuse while they are current (``reuse:``, `machinery.reuse`).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from critneuron.errors import ConfigError

PROFILE_KEYS = ("timeout", "common", "reuse")
INJECTED = ("profile", "notebook", "output_dir")


@dataclass(frozen=True)
class Profile:
    """A loaded profile: its name, per-notebook timeout, and the parameters of each notebook."""

    name: str
    timeout: float | None
    parameters: dict[str, dict[str, Any]]
    reuse: Path | None = None  # executed chapters to reuse while current (`machinery.reuse`)


def list_notebooks(notebooks_dir: Path) -> list[Path]:
    """The chapter notebooks ``NN_name.ipynb`` of a folder, sorted by number."""
    found = [p for p in Path(notebooks_dir).glob("*.ipynb") if re.match(r"\d+_", p.name)]
    return sorted(found, key=lambda p: (int(p.name.split("_", 1)[0]), p.name))


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (empty if there is none)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            targets = [t for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
            targets += [n.target for n in tree.body if isinstance(n, ast.AnnAssign)]
            return {t.id for t in targets if isinstance(t, ast.Name)}
    return set()


def _read_profile_yaml(profile: str | Path, notebooks_dir: Path) -> tuple[Path, dict]:
    folder = Path(notebooks_dir) / "profiles"
    path = Path(profile) if str(profile).endswith((".yaml", ".yml")) else folder / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))) or "none"
        raise ConfigError(f"profile {str(profile)!r} not found at {path}; available: {known}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"profile {path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path}: expected a mapping at top level")
    base = data.pop("extends", None)
    if base is None:
        return path, data
    if not isinstance(base, str) or Path(base).stem == path.stem:
        raise ConfigError(f"profile {path}: 'extends' must name another profile, got {base!r}")
    _base_path, merged = _read_profile_yaml(base, notebooks_dir)
    for key, value in data.items():
        merged[key] = {**(merged.get(key) or {}), **value} if isinstance(value, dict) else value
    return path, merged


def _check_mapping(path: Path, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"profile {path}: {key!r} must be a mapping of parameters, got {value!r}")
    reserved = sorted(set(value) & set(INJECTED))
    if reserved:
        raise ConfigError(f"profile {path}: {key!r} sets {reserved}, which book.py injects itself")
    return value


def load_profile(profile: str | Path, notebooks_dir: Path) -> Profile:
    """Load and validate ``notebooks/profiles/<profile>.yaml`` (or a YAML path).

    Top-level keys: ``timeout`` (seconds per notebook, null = none), ``common`` (parameters for
    every notebook that declares them), ``reuse`` (a folder of executed chapters, relative to the
    notebooks), ``extends`` (a profile whose sections this one updates) and one mapping per
    notebook stem. Every parameter a
    profile sets must appear in that notebook's ``parameters`` cell (a ``common`` one in some
    notebook's), and every parameter a notebook declares (but those book.py injects) must be set.
    Raises ConfigError naming the file and the problem.
    """
    path, data = _read_profile_yaml(profile, notebooks_dir)
    stems = {nb.stem: nb for nb in list_notebooks(notebooks_dir)}
    unknown = sorted(set(data) - set(stems) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(f"profile {path}: unknown notebook key(s) {unknown}; notebooks: {sorted(stems)}")
    timeout = data.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or timeout <= 0):
        raise ConfigError(f"profile {path}: timeout must be a positive number or null, got {timeout!r}")
    common = _check_mapping(path, "common", data.get("common") or {})
    declared = {stem: declared_parameters(notebook) for stem, notebook in stems.items()}
    unused = sorted(set(common) - set().union(*declared.values()))
    if unused:
        raise ConfigError(f"profile {path}: 'common' sets {unused}, which no notebook declares")
    parameters = {}
    for stem, names in declared.items():
        own = _check_mapping(path, stem, data.get(stem) or {})
        missing = sorted(set(own) - names)
        if missing:
            raise ConfigError(f"profile {path}: notebook {stem} has no parameter(s) {missing} "
                              "in its 'parameters' cell")
        params = {**{k: v for k, v in common.items() if k in names}, **own}
        unset = sorted(names - set(params) - set(INJECTED))
        if unset:
            raise ConfigError(f"profile {path}: notebook {stem} declares parameter(s) {unset} that the "
                              "profile does not set")
        parameters[stem] = params
    reuse = data.get("reuse")
    if reuse is not None and not isinstance(reuse, str):
        raise ConfigError(f"profile {path}: reuse must be a folder (relative to the notebooks), got {reuse!r}")
    return Profile(path.stem, None if timeout is None else float(timeout), parameters,
                   None if reuse is None else Path(notebooks_dir) / reuse)


def select_notebooks(notebooks: list[Path], only: Iterable[str] | None) -> list[Path]:
    """The notebooks named in ``only`` (stem, file name or number prefix), all when empty."""
    if not only:
        return notebooks
    chosen = []
    for name in only:
        match = [nb for nb in notebooks if name in (nb.stem, nb.name, nb.stem.split("_", 1)[0])]
        if not match:
            stems = [nb.stem for nb in notebooks]
            raise ConfigError(f"--only {name!r}: no such notebook; notebooks: {stems}")
        chosen += [nb for nb in match if nb not in chosen]
    return sorted(chosen, key=notebooks.index)
