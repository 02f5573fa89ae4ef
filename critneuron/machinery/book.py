"""Execute the notebooks with papermill, then render the book with jupyter-book 1.x.

Phase 1 runs every ``notebooks/NN_*.ipynb`` (in number order) in its own papermill process,
injecting a profile's parameters, into ``book/_build/executed/``; a failing or timed-out notebook
is reported by name and cell while the others still run. Phase 2 runs ``jupyter-book build``,
whose static ``_config.yml`` never executes anything. Notebooks call `save_table` and the
`read_*` helpers, so the results-summary chapter finds every table and the provenance.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import yaml

from critneuron.errors import ConfigError, CritneuronError
from critneuron.experiments.store import versions

PROFILE_KEYS = ("timeout", "common")
INJECTED = ("profile", "notebook", "output_dir")
EXECUTED = Path("_build") / "executed"
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
VERSIONED = ("critneuron", "torch", "torchvision", "numpy", "pandas", "pyomo", "highspy",
             "papermill", "jupyter-book")
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


PATH_VARIABLES = ("CRITNEURON_DATA", "CRITNEURON_CACHE", "CRITNEURON_RESULTS")


class BookError(CritneuronError, RuntimeError):
    """A notebook failed or timed out, or jupyter-book could not render the book."""


@dataclass(frozen=True)
class Profile:
    """A loaded profile: its name, per-notebook timeout, and the parameters of each notebook."""

    name: str
    timeout: float | None
    parameters: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class NotebookRun:
    """Outcome of executing one notebook."""

    notebook: str
    status: str  # "ok", "failed" or "timeout"
    wall_s: float
    message: str = ""


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
    every notebook that declares them) and one mapping per notebook stem. Every parameter a
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
    return Profile(path.stem, None if timeout is None else float(timeout), parameters)


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


def _cell_problem(cell: dict) -> str | None:
    """The error of one executed cell, "did not finish" if it was interrupted, else None."""
    error = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    if error:
        return f"{error['ename']}: {error['evalue']}" if error["evalue"] else error["ename"]
    state = cell.get("metadata", {}).get("papermill", {})
    return "did not finish" if state.get("exception") or state.get("status") == "running" else None


def failing_cell(executed: Path) -> str:
    """Describe where an executed (or interrupted) notebook stopped: cell number, first line, error."""
    if not executed.is_file():
        return "no output notebook was written"
    cells = json.loads(executed.read_text())["cells"]
    cells = [c for c in cells if not PAPERMILL_TAGS & set(c.get("metadata", {}).get("tags", []))]
    for number, cell in enumerate(cells, 1):
        problem = _cell_problem(cell)
        if problem:
            first = ("".join(cell["source"]).strip().splitlines() or [""])[0]
            return f"cell {number} ({first!r}): {problem}"
    return "no failing cell recorded"


def _papermill_command(src: Path, dst: Path, parameters: dict) -> list[str]:
    encoded = base64.b64encode(yaml.safe_dump(parameters).encode()).decode()
    return [sys.executable, "-m", "papermill", str(src), str(dst), "-b", encoded, "-k", "python3",
            "--cwd", str(src.parent), "--no-progress-bar", "--log-output"]


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for papermill; on timeout interrupt it (it then shuts its kernel down). True if timed out."""
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True


def notebook_env(src: Path) -> dict[str, str]:
    """Environment of a notebook run: the data root defaults to <repo>/data, and path variables
    given relative to here are made absolute (notebooks run with their own folder as cwd)."""
    env = dict(os.environ)
    env.setdefault("CRITNEURON_DATA", str(src.parent.parent.resolve() / "data"))
    for name in PATH_VARIABLES:
        if env.get(name):
            env[name] = str(Path(env[name]).resolve())
    return env


def run_notebook(src: Path, executed_dir: Path, parameters: dict, timeout: float | None) -> NotebookRun:
    """Execute one notebook into ``executed_dir`` with papermill, its log in ``<stem>.log``."""
    for old in [*executed_dir.glob(f"{src.stem}__*"), executed_dir / src.name]:
        old.unlink(missing_ok=True)
    dst, log = executed_dir / src.name, executed_dir / f"{src.stem}.log"
    env = notebook_env(src)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(_papermill_command(src, dst, parameters), stdout=out,
                                stderr=subprocess.STDOUT, env=env)
        timed_out = _wait(proc, timeout)
    wall = round(time.perf_counter() - start, 2)
    if timed_out:
        return NotebookRun(src.stem, "timeout", wall,
                           f"timed out after {timeout:g} s in {failing_cell(dst)} (log: {log})")
    if proc.returncode != 0:
        return NotebookRun(src.stem, "failed", wall, f"failed in {failing_cell(dst)} (log: {log})")
    hide_injected_parameters(dst)
    return NotebookRun(src.stem, "ok", wall)


def hide_injected_parameters(executed: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell``: the page lists the profile's values in
    its settings box instead."""
    notebook = json.loads(executed.read_text())
    for cell in notebook["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    executed.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _update_json(path: Path, entries: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    _write_json(path, {**data, **entries})


def record_timing(run: NotebookRun, profile: str, executed_dir: Path) -> None:
    """Merge one notebook's wall time and status into ``timings.json``."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    entry = {"status": run.status, "wall_s": run.wall_s, "profile": profile, "finished": now}
    _update_json(executed_dir / "timings.json", {run.notebook: entry})


def package_versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that determine the results and the book."""
    return versions(VERSIONED)


def _git_commit(folder: Path) -> str | None:
    """The checked-out commit, with ``-dirty`` when the working tree has changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=folder,
                             capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def write_provenance(profile: Profile, notebooks_dir: Path, executed_dir: Path) -> Path:
    """Write ``profile.json``: profile name and parameters, versions, date and git commit."""
    path = executed_dir / "profile.json"
    _write_json(path, {
        "profile": profile.name, "timeout": profile.timeout, "parameters": profile.parameters,
        "versions": package_versions(), "git_commit": _git_commit(notebooks_dir),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    return path


def execute_notebooks(profile: Profile, notebooks: list[Path], executed_dir: Path,
                      timeout: float | None) -> list[NotebookRun]:
    """Run each notebook in turn, printing a progress line each; failures do not stop the rest."""
    runs = []
    for i, src in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {src.stem} ...", end=" ", flush=True)
        params = {**profile.parameters[src.stem], "profile": profile.name, "notebook": src.stem,
                  "output_dir": os.path.relpath(executed_dir.resolve(), src.parent.resolve())}
        run = run_notebook(src, executed_dir, params, timeout)
        print(f"{run.status} {run.wall_s:.1f} s" + (f": {run.message}" if run.message else ""), flush=True)
        record_timing(run, profile.name, executed_dir)
        runs.append(run)
    return runs


def build_html(book_dir: Path, notebooks: list[Path]) -> Path:
    """Render ``book_dir`` with jupyter-book into ``book_dir/_build/html``; return its index page."""
    missing = [nb.stem for nb in notebooks if not (book_dir / EXECUTED / nb.name).is_file()]
    if missing:
        raise BookError(f"no executed copy of {missing}: run `critneuron book` without --only first")
    exe = Path(sys.executable).with_name("jupyter-book")
    log = book_dir / "_build" / "jupyter-book.log"
    with log.open("w") as out:
        done = subprocess.run([str(exe), "build", str(book_dir), "--builder", "html", "-W", "-n",
                               "--keep-going"], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise BookError(f"jupyter-book build failed (log: {log}):\n{tail}")
    return book_dir / "_build" / "html" / "index.html"


def build_book(profile: str | Path = "quick", *, notebooks_dir: Path = Path("notebooks"),
               book_dir: Path = Path("book"), only: Iterable[str] | None = None,
               timeout: float | None = None) -> Path:
    """Execute the notebooks on a profile, then build the HTML book; return its index page.

    ``timeout`` (seconds per notebook) overrides the profile's. Raises BookError listing every
    failed notebook (the HTML is then not built; executed copies and logs are kept).

    Example:
        >>> build_book("smoke")  # doctest: +SKIP
        PosixPath('book/_build/html/index.html')
    """
    notebooks_dir, book_dir = Path(notebooks_dir), Path(book_dir)
    loaded = load_profile(profile, notebooks_dir)
    notebooks = list_notebooks(notebooks_dir)
    executed_dir = book_dir / EXECUTED
    executed_dir.mkdir(parents=True, exist_ok=True)
    write_provenance(loaded, notebooks_dir, executed_dir)
    runs = execute_notebooks(loaded, select_notebooks(notebooks, only), executed_dir,
                             timeout if timeout is not None else loaded.timeout)
    failed = [f"{r.notebook}: {r.message}" for r in runs if r.status != "ok"]
    if failed:
        raise BookError(f"{len(failed)} notebook(s) failed:\n  " + "\n  ".join(failed))
    return build_html(book_dir, notebooks)


def save_table(table: pd.DataFrame, notebook: str, name: str, output_dir: str | Path) -> Path:
    """Save a result table as ``<output_dir>/<notebook>__<name>.csv`` (the index is not written).

    Example:
        >>> save_table(df, notebook, "accuracy", output_dir)  # doctest: +SKIP
    """
    if not _TABLE_NAME.fullmatch(name) or "__" in name:
        raise ConfigError(f"table name must be letters, digits, '-' or '_' (no '__'), got {name!r}")
    path = Path(output_dir) / f"{notebook}__{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def read_tables(output_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Every table saved by `save_table` in ``output_dir``, keyed ``<notebook>__<name>``, sorted."""
    return {p.stem: pd.read_csv(p) for p in sorted(Path(output_dir).glob("*__*.csv"))}


def read_provenance(output_dir: str | Path) -> dict:
    """The ``profile.json`` written before the notebooks ran."""
    return json.loads((Path(output_dir) / "profile.json").read_text())


def read_timings(output_dir: str | Path) -> pd.DataFrame:
    """``timings.json`` as a table: one row per notebook with status, wall_s, profile, finished."""
    data = json.loads((Path(output_dir) / "timings.json").read_text())
    return pd.DataFrame.from_dict(data, orient="index").rename_axis("notebook").reset_index()

