"""The shipped results (shipped/: the result store's records and the executed chapters of the
shipped profile) are current for the code of this commit, and small."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from critneuron.experiments.store import Store
from critneuron.machinery import reuse
from critneuron.machinery.profiles import list_notebooks, load_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PROFILE = load_profile("shipped", NOTEBOOKS)
STORE = Store(NOTEBOOKS / PROFILE.parameters["01_formulation"]["results_dir"])
MAX_BYTES = 2 * 1024 * 1024


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", str(STORE.root)], cwd=REPO, capture_output=True, check=True)
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def test_the_shipped_profile_reads_and_reuses_the_shipped_store() -> None:
    roots = {(NOTEBOOKS / params["results_dir"]).resolve() for params in PROFILE.parameters.values()
             if "results_dir" in params}
    assert roots == {STORE.root.resolve()} and PROFILE.reuse.resolve() == (STORE.root / "book").resolve()


def test_every_shipped_run_is_complete_and_fresh() -> None:
    runs = [run for run in STORE.ls()]
    bad = [f"{r['kind']}/{r['key']}: {r['status']}, {r['code']}" for r in runs
           if r["status"] != "complete" or r["code"] != "fresh"]
    assert not bad, f"shipped runs to recompute (or delete) in this submission: {bad}"


def test_no_shipped_file_is_large_or_a_checkpoint() -> None:
    files = _tracked()
    assert not [f for f in files if f.stat().st_size > MAX_BYTES]
    assert not [f for f in files if f.suffix == ".pt"]


# The chapters that read the store; the results summary describes each build and runs every build.
READERS = [nb for nb in list_notebooks(NOTEBOOKS) if "results_dir" in PROFILE.parameters[nb.stem]]


@pytest.mark.parametrize("notebook", READERS, ids=lambda p: p.stem)
def test_every_shipped_chapter_is_current(notebook: Path) -> None:
    params = PROFILE.parameters[notebook.stem]
    why = reuse.why_not_reusable(PROFILE.reuse, notebook, params, NOTEBOOKS / params["results_dir"])
    assert why is None, f"{notebook.stem}: {why}; run `critneuron book --profile shipped` and commit shipped/book"
