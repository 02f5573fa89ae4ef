"""Stored runs are reproducible whatever process runs them."""

from __future__ import annotations

from pathlib import Path

import torch

from critneuron.config import DataConfig, ModelConfig, RunConfig, paper_train_config
from critneuron.experiments.runs import trained_model
from critneuron.experiments.store import Store
from critneuron.nets.train import torch_threads


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
