"""Tests of critneuron.experiments.lookup: stored runs found by config and part of their inputs."""

from __future__ import annotations

import json

from critneuron.experiments.fingerprint import Code
from critneuron.experiments.lookup import StoreIndex, the_fresh_run
from critneuron.experiments.store import Store

CODE = Code(("critneuron.config",))
CONFIG = {"lambda_": 1.0, "mode": "relaxed"}


def _write(store: Store, weights: str, batch: list[int], value: float) -> str:
    inputs = {"weights": weights, "batch_indices": batch}
    key = store.key("score", CONFIG, **inputs)
    store.write("score", key, CONFIG, {"value": value}, inputs=inputs, code=CODE)
    return key


def test_the_fresh_run_is_found_by_config_and_known_inputs(tmp_path) -> None:
    store = Store(tmp_path)
    _write(store, "aa", [1, 2], 0.5)
    _write(store, "bb", [3, 4], 0.7)
    assert the_fresh_run(store, "score", CONFIG, weights="bb")["result"] == {"value": 0.7}
    assert the_fresh_run(store, "score", CONFIG, weights="cc") is None
    assert the_fresh_run(store, "score", {**CONFIG, "lambda_": 2.0}, weights="aa") is None
    assert the_fresh_run(store, "score", CONFIG) is None  # two match: none is the one


def test_a_stale_run_is_listed_as_stale_and_not_found(tmp_path) -> None:
    store = Store(tmp_path)
    key = _write(store, "aa", [1, 2], 0.5)
    meta = store.path("score", key) / "meta.json"
    record = json.loads(meta.read_text())
    record["code"]["fingerprint"] = "0" * 16  # computed by other code
    meta.write_text(json.dumps(record))
    assert [(k, fresh) for k, _i, fresh in StoreIndex(store).runs("score", CONFIG, weights="aa")] == [(key, False)]
    assert the_fresh_run(store, "score", CONFIG, weights="aa") is None


def test_runs_written_after_a_lookup_are_found_by_the_next(tmp_path) -> None:
    reader, writer = Store(tmp_path), Store(tmp_path)
    assert the_fresh_run(reader, "score", CONFIG, weights="aa") is None
    _write(writer, "aa", [1, 2], 0.5)
    assert the_fresh_run(reader, "score", CONFIG, weights="aa")["result"] == {"value": 0.5}
