"""The catalog: one record per dataset and model. A new dataset is one record, and everything
downstream (configs, loading, training, scoring, the CLI's choices) sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from critneuron import catalog
from critneuron.catalog import records
from critneuron.cli import build_parser
from critneuron.config import DataConfig, ModelConfig, RunConfig, ScoreConfig, paper_train_config
from critneuron.errors import ConfigError
from critneuron.experiments.runs import mip_scores, trained_model
from critneuron.experiments.store import Store
from critneuron.nets.data import SOURCE_LOADER, dataset_source, load_split


class Bars(torch.utils.data.Dataset):
    """Image i: a 28×28 grayscale PIL image, dark with noise, and a bright bar in row band
    `label` (= i % 10), so a small network learns it in a few epochs."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, np.random.default_rng(seed)
        self.images = self.rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i in range(n):
            self.images[i, 2 + 2 * (i % 10): 4 + 2 * (i % 10), 4:24] = 255

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i], mode="L"), i % 10


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> catalog.DatasetRecord:
    """The dataset 'bars' registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(records, "_DATASETS", dict(records._DATASETS))
    schedule = catalog.Schedule(epochs=4, optimizer="rmsprop", lr=1e-3, batch_size=32)
    return catalog.register_dataset(catalog.DatasetRecord(
        "bars", ("bars",), schedule, loader=lambda root, train: Bars(600 if train else 200, int(train)), tau=0.25))


def test_a_registered_dataset_trains_and_scores_without_touching_other_modules(
        bars: catalog.DatasetRecord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_CACHE", str(tmp_path / "cache"))
    data = DataConfig(dataset="bars", root=str(tmp_path))
    assert dataset_source(data) == SOURCE_LOADER and len(load_split(data, "test")) == 200
    cfg = RunConfig(data=data, model=ModelConfig("fc3"), train=paper_train_config("fc3", "bars", seed=0),
                    score=ScoreConfig(batch_size=10, time_limit=60))
    assert cfg.train.epochs == 4 and cfg.prune.resolve("fc3", "bars") == 0.25
    model, metrics = trained_model(cfg, Store(tmp_path / "results"))
    assert metrics["test_accuracy"] > 0.9 and metrics["source"] == SOURCE_LOADER
    scores = mip_scores(model, cfg, Store(tmp_path / "results"))
    assert scores.provenance["solver"]["status"] == "optimal"
    assert {k: len(v) for k, v in scores.layers.items()} == {"fc1": 300, "fc2": 100}
    assert "bars" in build_parser().parse_args(["train", "--dataset", "bars"]).dataconfig_dataset


def test_unknown_names_are_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"dataset must be one of 'mnist', .*'cifar10'.*got 'cifar100'"):
        DataConfig(dataset="cifar100")
    with pytest.raises(ConfigError, match=r"model must be one of 'fc3', .*'vgg16', got 'resnet'"):
        ModelConfig(name="resnet")


def test_a_record_needs_exactly_one_way_to_open_it() -> None:
    schedule = catalog.Schedule(epochs=1, optimizer="sgd", lr=0.1)
    with pytest.raises(ConfigError, match="give exactly one of torchvision= and loader="):
        catalog.DatasetRecord("none", ("none",), schedule)


def test_paper_schedules_and_thresholds_come_from_the_records() -> None:
    assert paper_train_config("lenet5", "mnist").optimizer == "rmsprop"
    cifar = paper_train_config("lenet5", "cifar10")
    assert (cifar.optimizer, cifar.lr, cifar.epochs) == ("sgd", 1e-2, 256)
    vgg = paper_train_config("vgg16", "mnist")  # VGG-16's own schedule on every dataset (PAPER_SPEC §4)
    assert (vgg.optimizer, vgg.lr, vgg.epochs, vgg.weight_decay) == ("sgd", 0.1, 30, 5e-4)
    assert [catalog.paper_threshold(m, d) for m, d in [("fc3", "mnist"), ("lenet5", "fashion-mnist"),
                                                       ("vgg16", "cifar10"), ("lenet5", "cifar10")]] == [0.1, 0.2, 0.3, 0.3]


def test_paper_fine_tuning_and_transfer_schedules_per_table() -> None:
    """PAPER_SPEC §7 (fine-tuning 1 epoch, LeNet-5 on MNIST 2) and §9.1 (LeNet-5 → CIFAR-10 at lr 0.1)."""
    assert [catalog.paper_finetune_epochs(m, d) for m, d in [("lenet5", "mnist"), ("lenet5", "fashion-mnist"),
                                                             ("fc3", "mnist"), ("vgg16", "cifar10")]] == [2, 1, 1, 1]
    assert catalog.transfer_schedule("lenet5", "cifar10").lr == 0.1 and catalog.paper_schedule("lenet5", "cifar10").lr == 1e-2
    assert catalog.transfer_schedule("fc3", "fashion-mnist") == catalog.paper_schedule("fc3", "fashion-mnist")
