"""Stored runs are reproducible whatever process runs them."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import numpy as np
import torch

from critneuron.catalog import paper_threshold
from critneuron.config import DataConfig, ModelConfig, RunConfig, paper_train_config
from critneuron.experiments.runs import mip_scores, reusable_here, trained_model
from critneuron.experiments.store import Store
from critneuron.experiments.whole import vertex_interior
from critneuron.nets.train import torch_threads
from critneuron.pruning.masks import masks_from_scores


def test_stored_training_does_not_depend_on_the_callers_thread_count(shared_data_root: Path, tmp_path: Path) -> None:
    """A Dask worker starts with 1 torch thread, a notebook with one per core: same weights."""
    cfg = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000, test_subset=200),
                    model=ModelConfig(name="lenet5"), train=paper_train_config("lenet5", "mnist", epochs=1))
    states = []
    for threads in (1, 2):
        with torch_threads(threads):
            model, _ = trained_model(cfg, Store(tmp_path / str(threads)))
            assert torch.get_num_threads() == threads
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_vertex_and_interior_scores_are_both_stored_and_compared(shared_data_root: Path, tmp_path: Path) -> None:
    cfg = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000, test_subset=200),
                    model=ModelConfig(name="fc3"), train=paper_train_config("fc3", "mnist", epochs=1))
    store = Store(tmp_path)
    row = vertex_interior(cfg, store)
    assert (row["units"], row["tau"], row["interior_point"]) == (400, 0.1, "interior")
    assert 0 <= row["units_changing_side"] <= row["units"] and row["objective_difference"] <= 1e-5
    points = sorted(store.read("score", r["key"])["config"]["final_point"] for r in store.ls("score"))
    assert points == ["interior", "vertex"] and vertex_interior(cfg, store) == row  # both cached


def test_one_config_scored_from_two_empty_stores_and_with_two_thread_counts(shared_data_root: Path,
                                                                            tmp_path: Path) -> None:
    """Trained, batch drawn and scored from scratch three times (two empty stores with 1 HiGHS
    thread, a third with 2): the same scores bit for bit, so the same masks."""
    base = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000, test_subset=200),
                     model=ModelConfig(name="fc3"), train=paper_train_config("fc3", "mnist", epochs=1))
    runs = []
    for i, threads in enumerate((1, 1, 2)):
        cfg = dataclasses.replace(base, score=dataclasses.replace(base.score, threads=threads))
        store = Store(tmp_path / str(i))
        model, _ = trained_model(cfg, store)
        runs.append(mip_scores(model, cfg, store))
    tau = paper_threshold("fc3", "mnist")
    first = runs[0]
    assert first.provenance["solver"]["status"] == "optimal"
    for other in runs[1:]:
        assert other.provenance["batch_indices"] == first.provenance["batch_indices"]
        assert list(other.layers) == list(first.layers)
        for name, values in first.layers.items():
            assert np.array_equal(other.layers[name], values), name
        assert masks_from_scores(other, tau) == masks_from_scores(first, tau)


def test_time_limited_scores_are_reused_only_on_the_machine_that_stopped_them() -> None:
    def run(status: str, host: str, blocks: bool = False) -> dict:
        provenance = {"blocks": [{"status": "optimal"}, {"status": status}]} if blocks else {"solver": {"status": status}}
        return {"result": {"provenance": provenance}, "meta": {"host": host}}

    here = socket.gethostname()
    assert reusable_here(run("optimal", "elsewhere")) and reusable_here(run("maxTimeLimit", here))
    assert not reusable_here(run("maxTimeLimit", "elsewhere"))
    assert not reusable_here(run("maxTimeLimit", "elsewhere", blocks=True))
