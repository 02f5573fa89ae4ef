"""The budget sweep: every method at the MIP's per-layer counts for each τ, on real data, cached."""

from __future__ import annotations

from pathlib import Path

import pytest

from critneuron.experiments.budget import METHODS, budget_sweep
from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.nets.data import load_split
from critneuron.experiments.runs import mip_scores, trained_model
from critneuron.experiments.whole import evaluate_masks
from critneuron.pruning.masks import masks_from_scores, pruning_stats
from critneuron.experiments.store import Store

TAUS = [0.0, 0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def sweep(shared_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, Store, list[dict]]:
    data = DataConfig(root=str(shared_data_root), subset=2000, test_subset=500)
    cfg = RunConfig(data=data, model=ModelConfig("fc3"), train=paper_train_config("fc3", "mnist", epochs=1),
                    score=ScoreConfig(time_limit=30))
    store = Store(tmp_path_factory.mktemp("budget"))
    return cfg, store, budget_sweep(cfg, store, TAUS, random_seeds=(0, 1))


def test_every_method_at_every_tau_prunes_the_mips_share(sweep: tuple) -> None:
    cfg, store, rows = sweep
    assert len(rows) == len(TAUS) * (len(METHODS) + 1)  # random twice
    assert {r["method"] for r in rows} == set(METHODS)
    assert sorted(r["random_seed"] for r in rows if r["method"] == "random" and r["tau"] == 0.5) == [0, 1]
    model, _ = trained_model(cfg, store)
    scores = mip_scores(model, cfg, store)
    for tau in TAUS:
        expected = pruning_stats(model, masks_from_scores(scores, tau))
        at_tau = [r for r in rows if r["tau"] == tau]
        assert {r["pct_neurons_pruned"] for r in at_tau} == {expected["pct_neurons_pruned"]}
        assert {r["pct_params_pruned"] for r in at_tau} == {expected["pct_params_pruned"]}
    shares = [next(r["pct_neurons_pruned"] for r in rows if r["tau"] == tau) for tau in TAUS]
    assert shares[0] == 0.0 and shares == sorted(shares) and shares[-1] > shares[1] > 0
    dense = {r["test_accuracy"] for r in rows if r["tau"] == 0.0}
    assert len(dense) == 1  # nothing pruned: every method is the dense network


def test_budget_rows_agree_with_the_pruning_table_row(sweep: tuple) -> None:
    """At the paper's τ (0.1 for fc3), the MIP, random (seed 0) and critical rows are the run's."""
    cfg, store, rows = sweep
    model, _ = trained_model(cfg, store)
    data = {s: load_split(cfg.data, s) for s in ("train", "test")}
    row = evaluate_masks(model, mip_scores(model, cfg, store), cfg, data)
    at = {(r["method"], r["random_seed"]): r["test_accuracy"] for r in rows if r["tau"] == 0.1}
    assert at[("mip", None)] == row["pruned"]["test"]["accuracy"]
    assert at[("random", 0)] == row["random"]["test"]["accuracy"]
    assert at[("critical", None)] == row["critical"]["test"]["accuracy"]
    assert at[("critical", None)] < at[("mip", None)]


def test_budget_sweep_is_cached(sweep: tuple) -> None:
    cfg, store, rows = sweep
    assert len(store.ls("budget")) == 1
    assert budget_sweep(cfg, store, TAUS, random_seeds=(0, 1)) == rows
    assert len(store.ls("budget")) == 1 and len(store.ls("score")) == 1
