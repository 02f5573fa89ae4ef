"""Sequential per-class programs against one program on the whole batch (PAPER_SPEC §8.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.experiments.runs import mip_scores, trained_model
from critneuron.experiments.sequential import averaged, per_class_scores, sequential_vs_parallel
from critneuron.experiments.store import Store
from critneuron.mip.scores import Scores
from critneuron.pruning.masks import masks_from_scores, pruning_stats


def test_averaged_scores_are_the_layerwise_mean() -> None:
    a = Scores({"fc1": np.array([0.0, 1.0]), "fc2": np.array([1.0])}, "mip")
    b = Scores({"fc1": np.array([1.0, 1.0]), "fc2": np.array([0.0])}, "mip")
    mean = averaged([a, b])
    assert np.array_equal(mean.layers["fc1"], [0.5, 1.0]) and np.array_equal(mean.layers["fc2"], [0.5])
    assert mean.provenance == {"programs": 2}


def test_one_program_per_image_of_the_parallel_batch_stored_once(shared_data_root: Path, tmp_path: Path) -> None:
    cfg = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000, test_subset=300),
                    model=ModelConfig(name="fc3"), train=paper_train_config("fc3", "mnist", epochs=1),
                    score=ScoreConfig(time_limit=60))
    store = Store(tmp_path)
    model, _metrics = trained_model(cfg, store)
    parallel = mip_scores(model, cfg, store)
    per_class = per_class_scores(model, cfg, store)
    assert [label for label, _s in per_class] == list(range(10))  # one image per class, in the batch's order
    assert [s.provenance["batch_indices"] for _l, s in per_class] == [[i] for i in parallel.provenance["batch_indices"]]
    assert all(s.provenance["config"]["batch_size"] == 1 for _l, s in per_class)

    rows = sequential_vs_parallel(cfg, store)
    assert len(store.ls("score")) == 11  # the parallel program and the ten per-class ones, each solved once
    assert [r["program"] for r in rows] == ["parallel", "sequential", *(f"class {c}" for c in range(10))]
    assert all(r["status"] == "optimal" and r["tau"] == 0.1 for r in rows)
    assert rows[1]["solve_s"] == sum(r["solve_s"] for r in rows[2:])
    mean = averaged([s for _label, s in per_class])
    assert rows[1]["pct_neurons_pruned"] == pruning_stats(model, masks_from_scores(mean, 0.1))["pct_neurons_pruned"]
    assert rows[0]["pct_neurons_pruned"] == pruning_stats(model, masks_from_scores(parallel, 0.1))["pct_neurons_pruned"]
    assert sequential_vs_parallel(cfg, store) == rows
    [stored] = store.ls("sequential")
    checkpoint = Path(store.ls("train")[0]["path"]) / "artifacts" / "checkpoint.pt"
    checkpoint.unlink()  # as in a clone of a shipped store: the stored rows need no network
    assert sequential_vs_parallel(cfg, store) == rows and not checkpoint.exists()
    assert store.ls("sequential") == [stored]
