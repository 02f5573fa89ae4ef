"""Tests of critneuron.machinery.sweep: sweep files, runs on a real Dask LocalCluster, kill and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from critneuron.errors import ConfigError
from critneuron.experiments.store import Store
from critneuron.errors import CritneuronError
from critneuron.machinery.sweep import collect, main, run_sweep, sweep_results
from critneuron.machinery.sweepfile import Sweep, expand, load_sweep, parse_sweep

TESTS = Path(__file__).parent
SWEEPS = TESTS.parent / "sweeps"
HEAD = {"task": "sweep_tasks:square", "kind": "toy"}


@pytest.fixture
def toy_tasks(monkeypatch, tmp_path) -> Path:
    """Make tests/sweep_tasks.py importable here and in worker processes; a markers folder."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("SWEEP_MARKERS", str(markers))
    return markers


def toy_sweep(task: str, lambdas: list) -> Sweep:
    return parse_sweep({"task": f"sweep_tasks:{task}", "kind": "toy", "grid": {"score.lambda_": lambdas}})


def executions(markers: Path) -> dict[float, int]:
    """How often the toy task really ran, per λ."""
    counts: dict[float, int] = {}
    for path in markers.iterdir():
        lam = float(path.name.split("-")[0])
        counts[lam] = counts.get(lam, 0) + 1
    return counts


def stored_values(store: Store) -> dict[float, float]:
    runs = [store.read("toy", r["key"]) for r in store.ls("toy") if r["status"] == "complete"]
    return {run["config"]["score"]["lambda_"]: run["result"]["value"] for run in runs}


@pytest.mark.parametrize("raw, message", [
    ({**HEAD, "grid": {"score.lambda_": [1]}, "gird": {}}, r"unknown sweep key\(s\) \['gird'\]"),
    ({**HEAD, "grid": {"score.lamda": [1]}}, "bad key 'score.lamda': ScoreConfig has no field 'lamda'"),
    ({**HEAD, "grid": {"score.lambda_.x": [1]}}, "bad key 'score.lambda_.x': 'lambda_' is a value"),
    ({**HEAD, "grid": {}}, "grid must be a non-empty mapping"),
    ({**HEAD, "grid": {"score.lambda_": []}}, r"grid\['score.lambda_'\] must be a non-empty list"),
    ({**HEAD, "grid": {"score.mode": ["exakt"]}}, "run {'score.mode': 'exakt'}: mode must be one of"),
    ({**HEAD, "base": {"scor": {}}, "grid": {"score.seed": [1]}}, "bad key 'scor': RunConfig has no field"),
    ({**HEAD, "task": "sweep_tasks.square"}, "task must be 'module:function'"),
    (HEAD, "a sweep needs 'grid' or 'list'"),
])
def test_load_sweep_names_the_problem(tmp_path, raw, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"bad.yaml: {message}"):
        load_sweep(path)


def test_missing_sweep_file_is_a_config_error_and_exit_status_2(tmp_path, capsys):
    assert main([str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'none.yaml'}: [Errno 2] No such file")


def test_expand_is_list_outer_grid_inner_resolved_and_deduplicated():
    sweep = parse_sweep({**HEAD, "base": {"train.epochs": 2, "score": {"seed": 7}},
                         "list": [{"model.name": "fc3"}, {"model": {"name": "lenet5"}}, {"model.name": "fc3"}],
                         "grid": {"score.lambda_": [1, 2], "data.dataset": ["mnist", "kmnist"]}})
    runs = [(c["model"]["name"], c["score"]["lambda_"], c["data"]["dataset"]) for c in expand(sweep)]
    assert runs == [(m, lam, d) for m in ("fc3", "lenet5") for lam in (1.0, 2.0) for d in ("mnist", "kmnist")]
    first = expand(sweep)[0]
    assert isinstance(first["score"]["lambda_"], float) and first["score"]["seed"] == 7
    assert first["train"] == {**first["train"], "epochs": 2} and first["score"]["mode"] == "relaxed"


def test_shipped_sweep_files_are_valid_and_quick():
    sizes = {path.stem: expand(load_sweep(path)) for path in sorted(SWEEPS.glob("*.yaml"))}
    assert {name: len(runs) for name, runs in sizes.items()} == {"batches": 25, "lambda": 24, "seeds": 15, "threshold": 12}
    assert [c["score"]["lambda_"] for c in sizes["lambda"]] == [float(lam) for lam in range(1, 25)]
    assert [c["score"]["seed"] for c in sizes["batches"]] == list(range(25))
    assert all(c["train"]["epochs"] == 2 for runs in sizes.values() for c in runs)


def test_sweep_on_local_cluster_completes_skips_and_records_failure(tmp_path, toy_tasks):
    store, sweep = Store(tmp_path / "results"), toy_sweep("fail_on_three", [1, 2, 3, 4, 5, 6])
    first = run_sweep(sweep, store, n_workers=2, progress=False)
    assert (first.total, first.done, first.skipped, first.failed) == (6, 5, 0, 1)
    assert "ValueError: lambda 3 is refused" in first.failures[0][1]
    assert stored_values(store) == {lam: lam**2 for lam in (1.0, 2.0, 4.0, 5.0, 6.0)}
    pids = {store.read("toy", r["key"])["result"]["pid"] for r in store.ls("toy") if r["status"] == "complete"}
    assert os.getpid() not in pids
    (failed,) = [r for r in store.ls("toy") if r["status"] == "failed"]
    assert failed["error"].strip().endswith("ValueError: lambda 3 is refused")
    second = run_sweep(sweep, store, n_workers=2, progress=False)
    assert (second.total, second.done, second.skipped, second.failed) == (6, 0, 5, 1)
    assert executions(toy_tasks) == {1.0: 1, 2.0: 1, 4.0: 1, 5.0: 1, 6.0: 1}


def test_serial_mode_stores_the_same_runs_with_logs_and_artifacts(tmp_path, toy_tasks):
    dask_store, serial_store = Store(tmp_path / "dask"), Store(tmp_path / "serial")
    sweep = toy_sweep("with_artifacts", [1, 2])
    run_sweep(sweep, dask_store, n_workers=2, progress=False)
    summary = run_sweep(sweep, serial_store, scheduler="serial", progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    assert [r["key"] for r in dask_store.ls()] == [r["key"] for r in serial_store.ls()]
    for store in (dask_store, serial_store):
        key = store.ls("toy")[0]["key"]
        assert store.load_artifact("toy", key, "lam.json") in (1.0, 2.0)
        log = (store.path("toy", key) / "log.txt").read_text()
        assert "hello from the task\n" in log and log.endswith("done\n")


def test_sweep_results_in_sweep_order_without_failures(tmp_path, toy_tasks):
    store = Store(tmp_path)
    sweep = toy_sweep("fail_on_three", [4, 3, 2])
    assert sweep_results(sweep, store) == []
    with pytest.raises(CritneuronError, match=r"3 runs: 2 done, 0 skipped, 1 failed"):
        collect(sweep, store)
    assert [r["value"] for r in sweep_results(sweep, store)] == [16, 4]
    assert [r["value"] for r in collect(toy_sweep("square", [2, 4]), store)] == [4, 16]


def test_wrong_task_path_fails_before_any_run(tmp_path, toy_tasks):
    with pytest.raises(ConfigError, match="task 'sweep_tasks:nope' cannot be imported"):
        run_sweep(toy_sweep("nope", [1]), Store(tmp_path), scheduler="serial", progress=False)


def sweep_command(sweep_file: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "critneuron.machinery.sweep", str(sweep_file), "--workers", "2",
            "--results", str(results), "--no-progress"]


def test_killed_sweep_restarts_without_redoing_or_corrupting_runs(tmp_path, toy_tasks, monkeypatch):
    sweep_file, results = tmp_path / "toy.yaml", tmp_path / "results"
    sweep_file.write_text(yaml.safe_dump({**HEAD, "grid": {"score.lambda_": list(range(1, 13))}}))
    monkeypatch.setenv("SWEEP_SLEEP", "0.4")
    driver = subprocess.Popen(sweep_command(sweep_file, results), start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store, deadline = Store(results), time.time() + 60
    while sum(r["status"] == "complete" for r in store.ls()) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its worker processes
    driver.wait()
    landed = {lam for lam in stored_values(store)}
    assert 3 <= len(landed) < 12 and all(r["status"] == "complete" for r in store.ls())
    rerun = subprocess.run(sweep_command(sweep_file, results), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert f"12 runs: {12 - len(landed)} done, {len(landed)} skipped, 0 failed" in rerun.stdout
    assert stored_values(store) == {float(lam): float(lam) ** 2 for lam in range(1, 13)}
    assert len(store.ls()) == 12 and all(r["status"] == "complete" for r in store.ls())
    assert all(executions(toy_tasks)[lam] == 1 for lam in landed)


def test_cli_sweep_then_results_ls_show_export(tmp_path, toy_tasks, capsys):
    from critneuron import cli

    sweep_file, results = tmp_path / "toy.yaml", str(tmp_path / "results")
    sweep_file.write_text(yaml.safe_dump({**HEAD, "task": "sweep_tasks:fail_on_three",
                                          "grid": {"score.lambda_": [2, 3]}}))
    assert cli.main(["sweep", str(sweep_file), "--scheduler", "serial", "--results", results, "--no-progress"]) == 1
    assert "2 runs: 1 done, 0 skipped, 1 failed" in capsys.readouterr().out
    assert cli.main(["results", "ls", "--results", results]) == 0
    lines = sorted(capsys.readouterr().out.splitlines(), key=lambda line: "failed" in line)
    assert lines[0].split()[2:] == ["complete", "fresh"] and lines[1].split()[2:4] == ["failed", "-"]
    assert lines[1].endswith("ValueError: lambda 3 is refused")
    done_key = lines[0].split()[1]
    assert cli.main(["results", "show", done_key[:6], "--results", results]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["key"], shown["result"]["value"]) == (done_key, 4.0)
    assert cli.main(["results", "show", "zzz", "--results", results]) == 2
    assert "error: no run under" in capsys.readouterr().err
    assert cli.main(["results", "export", "--csv", str(tmp_path / "t.csv"), "--kind", "toy", "--results", results]) == 0
    assert capsys.readouterr().out.startswith("1 runs -> ")
    assert "score.lambda_" in (tmp_path / "t.csv").read_text()


def test_a_sweep_reruns_runs_whose_task_code_changed(tmp_path, toy_tasks, monkeypatch):
    module = f"stale_tasks_{uuid.uuid4().hex[:8]}"  # a copy of the toy tasks that the test may edit
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / f"{module}.py"
    source.write_text((TESTS / "sweep_tasks.py").read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    sweep, store = parse_sweep({"task": f"{module}:square", "kind": "toy", "grid": {"score.lambda_": [1, 2]}}), \
        Store(tmp_path / "results")
    assert run_sweep(sweep, store, scheduler="serial", progress=False).done == 2
    assert run_sweep(sweep, store, scheduler="serial", progress=False).skipped == 2
    source.write_text(source.read_text() + "\n\ndef noop() -> None:\n    pass\n")  # beside the task: no change
    assert [r["code"] for r in store.ls()] == ["fresh", "fresh"]
    source.write_text(source.read_text().replace('"value": lam**2', '"value": lam * lam'))
    assert [r["code"] for r in store.ls()] == ["stale", "stale"] and sweep_results(sweep, store) == []
    summary = run_sweep(sweep, store, scheduler="serial", progress=False)
    assert (summary.done, summary.skipped) == (2, 0) and executions(toy_tasks) == {1.0: 2, 2.0: 2}
    assert [r["code"] for r in store.ls()] == ["fresh", "fresh"] and len(sweep_results(sweep, store)) == 2
