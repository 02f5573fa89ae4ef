"""Training reaches a sensible accuracy, is deterministic per seed, and checkpoints round-trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from critneuron.config import DataConfig, ModelConfig, TrainConfig, paper_train_config
from critneuron.nets.data import load_split
from critneuron.nets.models import build_model
from critneuron.nets.train import evaluate, load_checkpoint, make_optimizer, save_checkpoint, train_model


def test_lenet5_one_epoch_on_mnist_subset(lenet5_mnist, mnist_subset: dict) -> None:
    accuracy, loss = evaluate(lenet5_mnist.model, mnist_subset["test"])
    assert accuracy > 0.80 and loss < 1.0
    assert len(lenet5_mnist.history) == 1 and lenet5_mnist.best_epoch == 1
    assert lenet5_mnist.history[0]["val_accuracy"] > 0.75


def _train_tiny(root: Path, seed: int, model: str = "lenet5", augment: bool = False):
    data = DataConfig(root=str(root))
    cfg = TrainConfig(epochs=2, batch_size=8, seed=seed, optimizer="sgd", lr=0.05)
    net = build_model(model, width=0.125 if model == "vgg16" else 1.0, seed=seed)
    return train_model(net, load_split(data, "train"), load_split(data, "val"), cfg, augment, progress=False)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights(tiny_mnist_root: Path) -> None:
    first, again, other = (_train_tiny(tiny_mnist_root, seed) for seed in (0, 0, 1))
    assert _same_state(first.model.state_dict(), again.model.state_dict())
    assert not _same_state(first.model.state_dict(), other.model.state_dict())
    assert not _same_state(first.init_state, first.best_state)
    assert _same_state(first.best_state, first.model.state_dict())
    assert [h["epoch"] for h in first.history] == [1, 2]


def test_same_seed_same_weights_with_batchnorm_and_augmentation(tiny_mnist_root: Path) -> None:
    first, again = (_train_tiny(tiny_mnist_root, 0, "vgg16", augment=True) for _ in range(2))
    assert _same_state(first.model.state_dict(), again.model.state_dict())
    plain = _train_tiny(tiny_mnist_root, 0, "vgg16", augment=False)
    assert not _same_state(first.model.state_dict(), plain.model.state_dict())


def test_zero_epochs_keeps_initial_weights(tiny_mnist_root: Path) -> None:
    data = DataConfig(root=str(tiny_mnist_root))
    model = build_model("fc3")
    train, val = load_split(data, "train"), load_split(data, "val")
    result = train_model(model, train, val, TrainConfig(epochs=0), progress=False)
    assert result.best_epoch == 0 and result.history == []
    assert _same_state(result.init_state, model.state_dict())


def test_paper_optimisers() -> None:
    model = build_model("fc3")
    sgd = make_optimizer(model, paper_train_config("lenet5", "cifar10"))
    assert type(sgd).__name__ == "SGD"
    paper = {"nesterov": True, "momentum": 0.9, "weight_decay": 5e-4, "lr": 1e-2}
    assert {key: sgd.defaults[key] for key in paper} == paper
    rmsprop = make_optimizer(model, paper_train_config("lenet5", "mnist"))
    assert type(rmsprop).__name__ == "RMSprop" and rmsprop.defaults["lr"] == 1e-3


def test_checkpoint_round_trip(tmp_path: Path, tiny_mnist_root: Path) -> None:
    result = _train_tiny(tiny_mnist_root, 0)
    model_cfg, data_cfg = ModelConfig(name="lenet5"), DataConfig(root=str(tiny_mnist_root))
    train_cfg = dataclasses.replace(paper_train_config("lenet5", "mnist"), epochs=2)
    metrics = {"test_accuracy": 0.5, "history": result.history, "torch": torch.__version__, "out": tmp_path}
    configs = (model_cfg, data_cfg, train_cfg)
    path = tmp_path / "run" / "checkpoint.pt"
    assert save_checkpoint(path, result.model, *configs, result.init_state, metrics) == path
    model, meta = load_checkpoint(path)
    assert _same_state(model.state_dict(), result.model.state_dict())
    assert _same_state(meta["init_state"], result.init_state)
    assert (meta["model_config"], meta["data_config"], meta["train_config"]) == configs
    assert meta["metrics"] == {**metrics, "torch": str(torch.__version__), "out": str(tmp_path)}
    assert meta["torch_version"] == torch.__version__
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), result.model.eval()(x))
