"""Results never outlive their code: a one-line change to the scoring code makes a stored score
(and the sweep run that used it, when the change is in code it calls) stale but not the trained
network; the next sweep recomputes exactly those. Real store, real HiGHS, a tiny fc3 run, on a copy of the package that the test edits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def critneuron(source: Path, *args: str) -> str:
    """Run ``python -m critneuron ARGS`` on the package copy under `source`; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run([sys.executable, "-m", "critneuron", *args], cwd=source, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def listing(source: Path, results: Path) -> dict[str, list[str]]:
    """`critneuron results ls`: the fresh/stale column of each run, by kind."""
    table: dict[str, list[str]] = {}
    for line in critneuron(source, "results", "ls", "--results", str(results)).splitlines():
        kind, _key, status, code = line.split()[:4]
        assert status == "complete", line
        table.setdefault(kind, []).append(code)
    return table


def written(results: Path, kind: str) -> float:
    """When the one run of `kind` was stored (its meta.json's modification time)."""
    (run,) = [p for p in (results / kind).iterdir() if not p.name.startswith(".")]
    return (run / "meta.json").stat().st_mtime_ns


def test_a_scoring_change_makes_scores_stale_and_keeps_training(shared_data_root: Path, tmp_path: Path) -> None:
    source, results = tmp_path / "src", tmp_path / "results"
    shutil.copytree(REPO / "critneuron", source / "critneuron", ignore=shutil.ignore_patterns("__pycache__"))
    sweep = source / "tiny.yaml"
    sweep.write_text(yaml.safe_dump({
        "task": "critneuron.experiments.whole:prune_task", "kind": "prune",
        "base": {"data": {"dataset": "mnist", "root": str(shared_data_root), "subset": 2000, "test_subset": 200},
                 "model": {"name": "fc3"}, "train": {"epochs": 1, "batch_size": 32, "seed": 0},
                 "score": {"batch_size": 4, "mode": "relaxed", "time_limit": 60}},
        "grid": {"train.seed": [0]},
    }))
    run_sweep = ("sweep", str(sweep), "--scheduler", "serial", "--results", str(results), "--no-progress")
    assert "1 runs: 1 done" in critneuron(source, *run_sweep)
    assert listing(source, results) == {"prune": ["fresh"], "score": ["fresh"], "train": ["fresh"]}
    trained, scored = written(results, "train"), written(results, "score")

    formulation = source / "critneuron" / "mip" / "formulation.py"
    formulation.write_text(formulation.read_text() + "\n\ndef noop() -> None:\n    pass\n")
    # the score takes mip modules whole; the sweep row follows what its task calls, which is unchanged
    assert listing(source, results) == {"prune": ["fresh"], "score": ["stale"], "train": ["fresh"]}
    formulation.write_text(formulation.read_text().replace('"""A built model: its', '"""A built model (edited): its'))
    assert listing(source, results) == {"prune": ["stale"], "score": ["stale"], "train": ["fresh"]}

    assert "1 runs: 1 done, 0 skipped" in critneuron(source, *run_sweep)
    assert listing(source, results) == {"prune": ["fresh"], "score": ["fresh"], "train": ["fresh"]}
    assert written(results, "train") == trained and written(results, "score") > scored
    (score_run,) = [p for p in (results / "score").iterdir() if not p.name.startswith(".")]
    code = json.loads((score_run / "meta.json").read_text())["code"]
    assert "critneuron.mip.scores" in code["entries"] and "critneuron.experiments.runs:_train" in code["entries"]
    assert "1 runs: 0 done, 1 skipped" in critneuron(source, *run_sweep)
