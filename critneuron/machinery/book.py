"""Execute the notebooks with papermill, then render the book with jupyter-book 1.x.

Phase 1 runs every ``notebooks/NN_*.ipynb`` (in number order) in its own papermill process,
injecting a profile's parameters, into ``book/_build/executed/``; a failing or timed-out notebook
is reported by name and cell while the others still run. Phase 2 runs ``jupyter-book build``,
whose static ``_config.yml`` never executes anything. Notebooks call `save_table` and the
`read_*` helpers, so the results-summary chapter finds every table and the provenance.
"""

from __future__ import annotations

import base64
import dataclasses
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
from typing import Iterable, Sequence

import pandas as pd
import yaml

from critneuron.errors import ConfigError, CritneuronError
from critneuron.experiments.store import versions
from critneuron.machinery import reuse
from critneuron.machinery.profiles import Profile, list_notebooks, load_profile, select_notebooks

EXECUTED = Path("_build") / "executed"
PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}
VERSIONED = ("critneuron", "torch", "torchvision", "numpy", "pandas", "pyomo", "highspy",
             "papermill", "jupyter-book")
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


PATH_VARIABLES = ("CRITNEURON_DATA", "CRITNEURON_CACHE", "CRITNEURON_RESULTS")


class BookError(CritneuronError, RuntimeError):
    """A notebook failed or timed out, or jupyter-book could not render the book."""


@dataclass(frozen=True)
class NotebookRun:
    """Outcome of executing one notebook."""

    notebook: str
    status: str  # "ok", "failed", "timeout" or "reused" (an executed copy kept from an earlier build)
    wall_s: float
    message: str = ""


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


def _git_commit(folder: Path, outputs: Sequence[Path]) -> str | None:
    """The checked-out commit, with ``-dirty`` when tracked files have changes other than under
    `outputs` (folders a build writes, e.g. the shipped result store and its executed chapters)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True).stdout.strip()

    try:
        top, commit = git("rev-parse", "--show-toplevel"), git("rev-parse", "HEAD")
    except OSError:
        return None
    if not commit:
        return None
    inside = [p.resolve() for p in outputs if p.resolve().is_relative_to(Path(top).resolve())]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                  *[f":(exclude){p}" for p in inside])
    return commit + ("-dirty" if changed else "")


def write_provenance(profile: Profile, notebooks_dir: Path, executed_dir: Path) -> Path:
    """Write ``profile.json``: profile name and parameters, versions, date and git commit."""
    path = executed_dir / "profile.json"
    _write_json(path, {
        "profile": profile.name, "timeout": profile.timeout, "parameters": profile.parameters,
        "versions": package_versions(), "git_commit": _git_commit(notebooks_dir, _outputs(profile, notebooks_dir)),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    return path


def _outputs(profile: Profile, notebooks_dir: Path) -> list[Path]:
    """The folders a build of `profile` writes into: its result stores and its kept chapters."""
    roots = {Path(notebooks_dir) / params["results_dir"] for params in profile.parameters.values()
             if "results_dir" in params}
    return sorted(roots) + ([profile.reuse] if profile.reuse is not None else [])


def execute_notebooks(profile: Profile, notebooks: list[Path], executed_dir: Path,
                      timeout: float | None) -> list[NotebookRun]:
    """Run each notebook in turn, printing a progress line each; failures do not stop the rest.

    With a profile that reuses executed chapters (``reuse:``), a current copy is restored instead
    of running (`machinery.reuse`), and each chapter that ran is copied back there."""
    runs: list[NotebookRun] = []
    for i, src in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {src.stem} ...", end=" ", flush=True)
        own = profile.parameters[src.stem]
        why = "the profile reuses nothing"
        if profile.reuse is not None:
            why = reuse.why_not_reusable(profile.reuse, src, own, src.parent / own.get("results_dir", "."))
        if why is None:
            reuse.restore(profile.reuse, src, executed_dir)
            run = NotebookRun(src.stem, "reused", 0.0, f"executed copy from {profile.reuse}")
        else:
            params = {**own, "profile": profile.name, "notebook": src.stem,
                      "output_dir": os.path.relpath(executed_dir.resolve(), src.parent.resolve())}
            start = time.time()
            run = run_notebook(src, executed_dir, params, timeout)
            if run.status == "ok":
                reuse.record_build(executed_dir, src, own, _written(executed_dir, src.stem, start))
                if profile.reuse is not None:
                    reuse.keep_executed(executed_dir, src, profile.reuse)
            if profile.reuse is not None:
                run = dataclasses.replace(run, message=f"{run.message} (ran: {why})".strip())
        print(f"{run.status} {run.wall_s:.1f} s" + (f": {run.message}" if run.message else ""), flush=True)
        record_timing(run, profile.name, executed_dir)
        runs.append(run)
    return runs


def _written(executed_dir: Path, stem: str, since: float) -> list[str]:
    """Files a notebook wrote into `executed_dir` (tables, the summary's pages), not its own copy or log."""
    own = {f"{stem}.ipynb", f"{stem}.log", f"{stem}{reuse.BUILD_SUFFIX}", "timings.json", "profile.json"}
    return [p.name for p in executed_dir.iterdir() if p.is_file() and p.name not in own and p.stat().st_mtime >= since]


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
    failed = [f"{r.notebook}: {r.message}" for r in runs if r.status not in ("ok", "reused")]
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

