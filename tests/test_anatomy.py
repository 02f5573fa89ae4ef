"""Chapter 01's look inside one program, stored so that the chapter replays without the network."""

from __future__ import annotations

from pathlib import Path

from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.experiments.anatomy import EPSILONS, program_anatomy
from critneuron.experiments.store import Store


def test_the_anatomy_is_stored_and_read_back_without_the_network(shared_data_root: Path, tmp_path: Path) -> None:
    run = RunConfig(data=DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000, test_subset=300),
                    model=ModelConfig(name="fc3"), train=paper_train_config("fc3", "mnist", epochs=1))
    store = Store(tmp_path)
    study = program_anatomy(run, ScoreConfig(time_limit=60), ["relaxed"], store)
    assert [(r["layer"], r["epsilon"]) for r in study["stability"]] == [
        (layer, eps) for eps in EPSILONS for layer in ("relu1", "relu2")]
    assert all(r["off"] + r["on"] + r["unstable"] == 10 * n for r in study["stability"]
               for n in [{"relu1": 300, "relu2": 100}[r["layer"]]])
    assert study["shift"]["layer"] == "fc1" and len(study["shift"]["units"]) == 3
    assert study["sizes"]["relaxed"]["binaries"] == 0 and study["solves"]["relaxed"]["summary"]["status"] == "optimal"
    assert len(study["solves"]["relaxed"]["scores"]) == 400 and len(study["batch_indices"]) == 10
    checkpoint = Path(store.ls("train")[0]["path"]) / "artifacts" / "checkpoint.pt"
    checkpoint.unlink()  # as in a clone of a shipped store
    assert program_anatomy(run, ScoreConfig(time_limit=60), ["relaxed"], store) == study
    assert not checkpoint.exists() and len(store.ls("anatomy")) == 1
