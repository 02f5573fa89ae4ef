"""Config validation messages, from_dict, and the canonical hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from critneuron.config import DataConfig, ModelConfig, PruneConfig, RunConfig, ScoreConfig, TrainConfig, config_hash, from_dict, paper_train_config, to_dict
from critneuron.errors import ConfigError


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScoreConfig(mode="exakt"), "mode must be one of 'exact', 'relaxed', got 'exakt'"),
        (lambda: ScoreConfig(batch_rule="first"), "batch_rule must be one of 'random', 'authors', got 'first'"),
        (lambda: DataConfig(dataset="imagenet"), "dataset must be one of 'mnist', .*got 'imagenet'"),
        (lambda: DataConfig(val_fraction=1.0), r"val_fraction must be in \[0, 1\), got 1.0"),
        (lambda: DataConfig(subset=0), "subset must be > 0, got 0"),
        (lambda: ModelConfig(name="resnet"), "model must be one of 'fc3', .*got 'resnet'"),
        (lambda: TrainConfig(lr=-1.0), "lr must be > 0, got -1.0"),
        (lambda: TrainConfig(epochs="3"), "epochs must be a number, got '3'"),
        (lambda: TrainConfig(optimizer="adam"), "optimizer must be one of 'rmsprop', 'sgd', got 'adam'"),
        (lambda: PruneConfig(threshold=1.5), r"threshold must be in \[0, 1\] or 'mean', got 1.5"),
    ],
)
def test_bad_values_raise_named_errors(make, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        make()


def test_from_dict_round_trip_and_unknown_keys() -> None:
    run = RunConfig(data=DataConfig(dataset="cifar10", subset=100), train=paper_train_config("lenet5", "cifar10"))
    assert from_dict(RunConfig, to_dict(run)) == run
    with pytest.raises(ConfigError, match=r"unknown TrainConfig field\(s\) \['lrr'\]; known: \["):
        from_dict(TrainConfig, {"lr": 0.1, "lrr": 1})
    with pytest.raises(ConfigError, match=r"unknown DataConfig field\(s\) \['sub_set'\]"):
        from_dict(RunConfig, {"data": {"sub_set": 3}})
    with pytest.raises(ConfigError, match="TrainConfig expects a mapping, got list"):
        from_dict(TrainConfig, [1, 2])


def test_config_hash_is_stable() -> None:
    run = RunConfig()
    assert config_hash(run) == config_hash(RunConfig(data=DataConfig(dataset="mnist")))
    assert config_hash(run) == config_hash(from_dict(RunConfig, to_dict(run)))
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert len(config_hash(run)) == 16 and int(config_hash(run), 16) >= 0
    code = "from critneuron.config import RunConfig, config_hash; print(config_hash(RunConfig()))"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other_process.stdout.strip() == config_hash(run)


def test_config_hash_sees_every_change() -> None:
    run = RunConfig()
    changed = [
        dataclasses.replace(run, data=DataConfig(split_seed=1)),
        dataclasses.replace(run, model=ModelConfig(name="fc3")),
        dataclasses.replace(run, train=TrainConfig(lr=2e-3)),
        dataclasses.replace(run, score=ScoreConfig(lambda_=1.0)),
        dataclasses.replace(run, prune=PruneConfig(threshold="mean")),
    ]
    hashes = {config_hash(run), *(config_hash(c) for c in changed), config_hash(run, weights="abc")}
    assert len(hashes) == len(changed) + 2
    assert config_hash(run, weights="abc") != config_hash(run, weights="abd")
    assert config_hash(TrainConfig()) != config_hash(DataConfig())


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]
