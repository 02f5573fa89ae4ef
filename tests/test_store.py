"""Tests of critneuron.experiments.store: keys, atomic run folders under SIGKILL and concurrent writers."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from critneuron.config import RunConfig, ScoreConfig, to_dict
from critneuron.errors import IrreproducibleError
from critneuron.experiments.fingerprint import Code
from critneuron.experiments.store import RESULTS_ENV, RunNotFoundError, RunOutput, Store, cpu_model, versions

CODE = Code(("critneuron.config",))
CONFIG = {"score": {"lambda_": 5.0, "mode": "relaxed"}, "model": {"name": "lenet5"}}
INPUTS = {"weights": "ab12", "batch": np.arange(1000), "solver": "appsi_highs"}

# A writer that announces each file it writes, then sleeps, so the parent can SIGKILL it
# between two writes. argv: root, label, number of the write after which it pauses long.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    import critneuron.experiments.runfiles as runfiles
    import critneuron.experiments.store as store
    from critneuron.experiments.fingerprint import Code
    root, label, pause_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    real, count = runfiles.write_bytes, 0
    def announcing(path, data):
        global count
        real(path, data)
        count += 1
        print("wrote", Path(path).name, flush=True)
        time.sleep(30 if count == pause_after else 0.05)
    runfiles.write_bytes = announcing
    go = Path(root) / "go"
    while not go.exists():
        time.sleep(0.01)
    s = store.Store(root)
    key = s.key("prune", {"a": 1})
    out = store.RunOutput({"writer": label}, {"who.json": label, "w.npz": {"w": np.ones(1000)}}, "log")
    print("published", s.write("prune", key, {"a": 1}, out, code=Code(("critneuron.config",))), flush=True)
""")
WRITES = ["config.json", "meta.json", "log.txt", "who.json", "w.npz", "result.json"]


def start_writer(root: Path, label: str, pause_after: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), label, str(pause_after)],
                            stdout=subprocess.PIPE, text=True)


def test_key_changes_when_and_only_when_an_input_changes():
    store = Store("unused")
    key = store.key("prune", CONFIG, **INPUTS)
    reordered = {"model": {"name": "lenet5"}, "score": {"mode": "relaxed", "lambda_": 5.0}}
    assert store.key("prune", reordered, **dict(reversed(list(INPUTS.items())))) == key
    assert store.key("prune", CONFIG, **{**INPUTS, "batch": list(range(1000))}) == key
    batch = np.arange(1000)
    batch[500] = -1  # a change that a truncated array repr would hide
    changed = [
        store.key("score", CONFIG, **INPUTS),
        store.key("prune", {**CONFIG, "score": {"lambda_": 6.0, "mode": "relaxed"}}, **INPUTS),
        store.key("prune", CONFIG, **{**INPUTS, "weights": "ab13"}),
        store.key("prune", CONFIG, **{**INPUTS, "batch": batch}),
        store.key("prune", CONFIG, **INPUTS, torch="2.14.1"),
        store.key("prune", CONFIG, **{k: v for k, v in INPUTS.items() if k != "solver"}),
    ]
    assert len(set(changed)) == len(changed) and key not in changed


def test_dataclass_and_dict_configs_share_a_key():
    cfg = RunConfig(score=ScoreConfig(lambda_=3.0))
    store = Store("unused")
    assert store.key("prune", cfg, **versions()) == store.key("prune", to_dict(cfg), **versions())
    assert store.key("prune", cfg) != store.key("prune", dataclasses.replace(cfg, score=ScoreConfig()))


def test_versions_names_the_stack():
    found = versions()
    assert set(found) == {"python", "critneuron", "torch", "pyomo", "highspy"}
    assert found["critneuron"] is not None and found["python"].count(".") == 2


def test_root_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "r"))
    assert Store().root == tmp_path / "r"
    monkeypatch.delenv(RESULTS_ENV)
    assert Store().root == Path("results")


def test_write_and_read_back_every_artifact_format(tmp_path):
    store = Store(tmp_path)
    key = store.key("prune", CONFIG)
    frame = pd.DataFrame({"layer": ["c1", "f1"], "kept": [3, 7]})
    artifacts = {"scores.npz": {"c1": np.array([0.1, 0.9])}, "mask.npy": np.array([1, 0]),
                 "kept.json": {"c1": [0, 2]}, "table.csv": frame, "raw.bin": b"\x00\x01"}
    assert store.write("prune", key, CONFIG, RunOutput({"acc": 0.98}, artifacts, "trained\n"), inputs={"w": "x"})
    run = store.read("prune", key)
    assert (run["config"], run["result"], run["meta"]["inputs"]) == (CONFIG, {"acc": 0.98}, {"w": "x"})
    assert run["artifacts"] == sorted(artifacts)
    assert store.load_artifact("prune", key, "scores.npz")["c1"].tolist() == [0.1, 0.9]
    assert store.load_artifact("prune", key, "mask.npy").tolist() == [1, 0]
    assert store.load_artifact("prune", key, "kept.json") == {"c1": [0, 2]}
    assert pd.read_csv(Path(run["path"]) / "artifacts" / "table.csv").equals(frame)
    assert store.load_artifact("prune", key, "raw.bin") == b"\x00\x01"
    assert (Path(run["path"]) / "log.txt").read_text() == "trained\n"


def test_meta_records_the_host_and_its_processor(tmp_path):
    store = Store(tmp_path)
    key = store.key("prune", CONFIG)
    store.write("prune", key, CONFIG, RunOutput({"acc": 0.98}))
    meta = store.read("prune", key)["meta"]
    assert meta["host"] == socket.gethostname()
    assert meta["cpu"] == cpu_model() and meta["cpu"].endswith(f"({os.cpu_count()} CPUs)")
    assert not meta["cpu"].startswith(" (")  # a model name or architecture precedes the count


def test_cached_computes_once_and_returns_the_stored_result(tmp_path):
    store, calls = Store(tmp_path), []

    def compute() -> dict:
        calls.append(1)
        return {"acc": 0.5, "sizes": (1, 2)}

    first = store.cached("prune", CONFIG, compute, code=CODE, weights="ab12")
    second = store.cached("prune", CONFIG, compute, code=CODE, weights="ab12")
    assert first == second == {"acc": 0.5, "sizes": [1, 2]} and len(calls) == 1
    store.cached("prune", CONFIG, compute, code=CODE, weights="other")
    assert len(calls) == 2


def test_failure_is_not_complete_and_a_rerun_replaces_it(tmp_path):
    store = Store(tmp_path)
    key = store.key("prune", CONFIG)
    assert store.record_failure("prune", key, CONFIG, "Traceback ...\nValueError: boom")
    assert not store.is_complete("prune", key)
    assert store.ls("prune") == [{"kind": "prune", "key": key, "status": "failed",
                                  "path": str(tmp_path / "prune" / key), "code": None,
                                  "error": "Traceback ...\nValueError: boom"}]
    with pytest.raises(RunNotFoundError, match=f"no complete 'prune' run '{key}'"):
        store.read("prune", key)
    assert store.cached("prune", CONFIG, lambda: {"acc": 1.0}, code=CODE) == {"acc": 1.0}
    assert not store.record_failure("prune", key, CONFIG, "late failure")
    assert store.ls() == [{"kind": "prune", "key": key, "status": "complete", "path": str(tmp_path / "prune" / key),
                           "code": "fresh"}]
    assert not list((tmp_path / "prune").glob(".*"))


def test_a_result_that_is_not_json_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(TypeError, match="object is not JSON-able"):
        store.write("prune", "k1", CONFIG, {"acc": object()})
    assert store.ls() == [] and not list((tmp_path / "prune").iterdir())


def test_to_frame_and_export_csv_flatten_config_and_scalar_results(tmp_path):
    store = Store(tmp_path)
    for lam in (2.0, 1.0):
        cfg = {"score": {"lambda_": lam}}
        store.write("prune", store.key("prune", cfg), cfg, {"acc": lam / 10, "solve": {"gap": 0.0}, "kept": [1, 2]})
    store.record_failure("prune", "f" * 16, CONFIG, "boom")
    frame = store.to_frame("prune").sort_values("score.lambda_")
    assert list(frame.columns) == ["kind", "key", "score.lambda_", "acc", "solve.gap"]
    assert frame["acc"].tolist() == [0.1, 0.2]
    assert store.export_csv(None, tmp_path / "out.csv") == 2
    assert pd.read_csv(tmp_path / "out.csv").sort_values("score.lambda_")["acc"].tolist() == [0.1, 0.2]


@pytest.mark.parametrize("pause_after", [1, 4, len(WRITES)])
def test_sigkill_mid_write_leaves_no_complete_result(tmp_path, pause_after):
    (tmp_path / "go").touch()
    writer = start_writer(tmp_path, "killed", pause_after)
    lines = [writer.stdout.readline().split() for _ in range(pause_after)]
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert [line[1] for line in lines] == WRITES[:pause_after]
    store, key = Store(tmp_path), Store(tmp_path).key("prune", {"a": 1})
    assert not store.is_complete("prune", key) and store.ls() == []
    (temp,) = (tmp_path / "prune").glob(".tmp-*")
    assert (temp / "result.json").exists() == (pause_after == len(WRITES))
    assert store.cached("prune", {"a": 1}, lambda: {"writer": "rerun"}, code=CODE) == {"writer": "rerun"}
    assert store.remove_stale_temp(max_age_s=0) == 1
    assert [p.name for p in (tmp_path / "prune").iterdir()] == [key]


@pytest.mark.parametrize("earlier_failure", [False, True])
def test_two_processes_writing_one_key_leave_one_intact_result(tmp_path, earlier_failure):
    store = Store(tmp_path)
    key = store.key("prune", {"a": 1})
    if earlier_failure:
        store.record_failure("prune", key, {"a": 1}, "boom")
    writers = [start_writer(tmp_path, label) for label in ("one", "two")]
    time.sleep(0.3)
    (tmp_path / "go").touch()
    outputs = [w.communicate(timeout=30)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    published = [out.strip().splitlines()[-1] for out in outputs]
    assert sorted(published) == ["published False", "published True"]
    assert all("wrote result.json" in out for out in outputs)  # the loser wrote a full copy too
    run = store.read("prune", key)
    assert store.load_artifact("prune", key, "who.json") == run["result"]["writer"]
    assert store.load_artifact("prune", key, "w.npz")["w"].sum() == 1000
    assert [p.name for p in (tmp_path / "prune").iterdir()] == [key]
    assert json.loads((tmp_path / "prune" / key / "meta.json").read_text())["key"] == key
    assert not os.path.exists(tmp_path / "prune" / key / "failed.json")


CACHED = textwrap.dedent("""
    import sys, time, uuid
    from pathlib import Path
    from critneuron.experiments.fingerprint import Code
    from critneuron.experiments.store import Store
    root = Path(sys.argv[1])
    def compute():
        (root / f"ran-{uuid.uuid4().hex}").touch()
        time.sleep(1.0)
        return {"value": 1}
    while not (root / "go").exists():
        time.sleep(0.01)
    print(Store(root).cached("train", {"a": 1}, compute, code=Code(("critneuron.config",))))
""")


def test_concurrent_cached_calls_compute_once(tmp_path):
    callers = [subprocess.Popen([sys.executable, "-c", CACHED, str(tmp_path)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    time.sleep(0.3)
    (tmp_path / "go").touch()
    assert [c.communicate(timeout=30)[0] for c in callers] == ["{'value': 1}\n"] * 2
    assert len(list(tmp_path.glob("ran-*"))) == 1


def test_a_run_of_changed_code_is_stale_recomputed_and_replaced(tmp_path, toy_package):
    store, code = Store(tmp_path / "results"), Code((f"{toy_package.name}.compute",))
    key = store.key("score", CONFIG)
    assert store.cached("score", CONFIG, lambda: {"v": 1}, code=code) == {"v": 1}
    assert store.read("score", key)["meta"]["code"] == code.record()
    assert [r["code"] for r in store.ls()] == ["fresh"]
    helpers = toy_package / "helpers.py"
    helpers.write_text(helpers.read_text() + "\n\ndef noop():\n    pass\n")
    assert [r["code"] for r in store.ls()] == ["stale"] and not store.is_fresh("score", key, code)
    assert store.is_complete("score", key)  # the key still finds it

    def crash() -> dict:
        raise RuntimeError("killed while recomputing")

    with pytest.raises(RuntimeError):
        store.cached("score", CONFIG, crash, code=code)
    assert store.read("score", key)["result"] == {"v": 1}  # the stale run is kept until replaced
    assert not store.record_failure("score", key, CONFIG, "boom")  # nor does a failure replace it
    assert store.cached("score", CONFIG, lambda: {"v": 2}, code=code) == {"v": 2}
    assert [r["code"] for r in store.ls()] == ["fresh"] and store.is_fresh("score", key, code)
    assert [p.name for p in (store.root / "score").iterdir()] == [key]


def test_a_run_without_recorded_code_is_stale(tmp_path):
    store = Store(tmp_path)
    key = store.key("train", CONFIG)
    assert store.write("train", key, CONFIG, {"v": "old"})
    assert not store.write("train", key, CONFIG, {"v": "uncoded"})  # without code: keeps any complete run
    assert store.ls()[0]["code"] == "stale" and store.read("train", key)["meta"]["code"] is None
    assert store.cached("train", CONFIG, lambda: {"v": "new"}, code=CODE) == {"v": "new"}
    assert store.ls()[0]["code"] == "fresh"


def test_a_needed_artifact_that_is_missing_is_recomputed_and_restored_only_when_reproduced(tmp_path):
    store, calls = Store(tmp_path), []

    def compute(weights: str, blob: bytes):
        def run():
            calls.append(weights)
            return RunOutput(result={"weights_hash": weights, "seconds": len(calls)}, artifacts={"net.pt": blob})
        return run

    first = store.cached("train", CONFIG, compute("aa", b"one"), code=CODE, needs=("net.pt",), **INPUTS)
    folder = store.path("train", store.key("train", CONFIG, **INPUTS))
    shutil.rmtree(folder / "artifacts")  # as in a clone of a shipped store: git keeps no empty folder
    assert store.read("train", folder.name)["artifacts"] == []
    again = store.cached("train", CONFIG, compute("aa", b"two"), code=CODE, needs=("net.pt",), **INPUTS)
    assert calls == ["aa", "aa"] and again == first  # the same weights: the stored record stays
    assert (folder / "artifacts" / "net.pt").read_bytes() == b"two"
    assert store.cached("train", CONFIG, compute("aa", b"three"), code=CODE, needs=("net.pt",), **INPUTS) == first
    assert calls == ["aa", "aa"]  # present now: not computed again
    (folder / "artifacts" / "net.pt").unlink()
    with pytest.raises(IrreproducibleError, match=r"another weights_hash \(bb, stored aa"):  # e.g. another CPU
        store.cached("train", CONFIG, compute("bb", b"four"), code=CODE, needs=("net.pt",), **INPUTS)
    assert store.read("train", folder.name)["result"] == first  # kept, with what was computed on it
    assert not (folder / "artifacts" / "net.pt").exists()
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # nothing left behind


def test_reuse_if_false_recomputes_and_replaces_a_fresh_run(tmp_path):
    store, calls = Store(tmp_path), []

    def compute() -> dict:
        calls.append(1)
        return {"status": "maxTimeLimit" if len(calls) == 1 else "optimal"}

    def here(run: dict) -> bool:
        return run["result"]["status"] != "maxTimeLimit"

    assert store.cached("score", CONFIG, compute, code=CODE, reuse_if=here)["status"] == "maxTimeLimit"
    assert store.cached("score", CONFIG, compute, code=CODE, reuse_if=here)["status"] == "optimal"
    assert store.cached("score", CONFIG, compute, code=CODE, reuse_if=here)["status"] == "optimal"
    assert len(calls) == 2 and len(list((tmp_path / "score").iterdir())) == 1


def test_files_beside_the_runs_are_not_runs(tmp_path):
    """The shipped profile keeps its executed chapters in the store's root (``book/``)."""
    store = Store(tmp_path)
    key = store.key("prune", CONFIG)
    store.write("prune", key, CONFIG, {"acc": 1.0}, code=CODE)
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "01_formulation.ipynb").write_text("{}")
    (tmp_path / "prune" / "notes.txt").write_text("not a run")
    assert [(r["kind"], r["key"], r["status"]) for r in store.ls()] == [("prune", key, "complete")]
