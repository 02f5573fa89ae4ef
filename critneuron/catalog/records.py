"""What a dataset and a model *are*: frozen records, and the registry that holds them.

Everything the code needs to know about a dataset or an architecture (where its files live,
augmentation, the paper's schedule and τ, width scaling, decoupled training) is one record here;
no other module compares dataset or model names. Adding one is `register_dataset(DatasetRecord(...))`
or `register_model(ModelRecord(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from critneuron.errors import ConfigError

Optimizer = Literal["rmsprop", "sgd"]
Training = Literal["end-to-end", "decoupled"]
Layers = list  # list[tuple[str, torch.nn.Module]]: named children of a flat nn.Sequential


@dataclass(frozen=True)
class Schedule:
    """A training schedule as the authors ran it (PAPER_SPEC §4): optimiser, learning rate, epochs."""

    epochs: int
    optimizer: Optimizer
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128


@dataclass(frozen=True)
class DatasetRecord:
    """One dataset: how to open it, how to train on it as the paper did, and its pruning threshold.

    `torchvision` names a `torchvision.datasets` class (downloaded when missing); otherwise
    `loader(root, train)` returns a dataset of (PIL image, label) items. `folders` are where its
    files lie under the data root (the first is the official one). `jpeg_copy`: an offline zip of
    JPEGs (one folder per class in `class_names` order) used when the official folder is absent.
    `transfer_schedule`: how the authors retrained a mask transferred to this dataset, where it
    differs from `schedule` (PAPER_SPEC §9.1: LeNet-5 MNIST → CIFAR-10 at lr 0.1).
    """

    name: str
    folders: tuple[str, ...]
    schedule: Schedule
    torchvision: str | None = None
    loader: Callable[[Path, bool], Any] | None = None
    augment: bool = False
    tau: float | None = None
    jpeg_copy: str | None = None
    class_names: tuple[str, ...] = ()
    transfer_schedule: Schedule | None = None

    def __post_init__(self) -> None:
        if (self.torchvision is None) == (self.loader is None):
            raise ConfigError(f"dataset {self.name!r}: give exactly one of torchvision= and loader=")


@dataclass(frozen=True)
class ModelRecord:
    """One architecture: its layers for a width multiplier, the paper's τ, and how the paper trains it.

    `layers(width)` returns the named children of a flat `nn.Sequential` (3×32×32 in, 10 classes
    out). `schedule` overrides every dataset's paper schedule (VGG-16: SGD 0.1 everywhere).
    `finetune_epochs`: the paper's fine-tuning epochs after pruning, per dataset where they differ
    from one (PAPER_SPEC §7: LeNet-5 on MNIST, 2). Scored layers follow the network's structure
    (`nets.models.scored_layer_names`).
    """

    name: str
    layers: Callable[[float], Layers]
    tau: float
    width_scalable: bool = False
    schedule: Schedule | None = None
    training: Training = "end-to-end"
    finetune_epochs: tuple[tuple[str, int], ...] = ()


_DATASETS: dict[str, DatasetRecord] = {}
_MODELS: dict[str, ModelRecord] = {}


def register_dataset(record: DatasetRecord) -> DatasetRecord:
    """Add (or replace) a dataset; every config, loader and CLI choice sees it at once."""
    _DATASETS[record.name] = record
    return record


def register_model(record: ModelRecord) -> ModelRecord:
    """Add (or replace) an architecture."""
    _MODELS[record.name] = record
    return record


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names, in registration order."""
    return tuple(_DATASETS)


def model_names() -> tuple[str, ...]:
    """Registered model names, in registration order."""
    return tuple(_MODELS)


def _lookup(table: dict, kind: str, name: str):
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ConfigError(f"{kind} must be one of {', '.join(map(repr, table))}, got {name!r}") from None


def dataset_record(name: str) -> DatasetRecord:
    """The record of a dataset; ConfigError listing the known ones if there is none."""
    return _lookup(_DATASETS, "dataset", name)


def model_record(name: str) -> ModelRecord:
    """The record of a model; ConfigError listing the known ones if there is none."""
    return _lookup(_MODELS, "model", name)


def paper_schedule(model: str, dataset: str) -> Schedule:
    """The authors' schedule for `model` on `dataset`: the model's own, else the dataset's."""
    return model_record(model).schedule or dataset_record(dataset).schedule


def transfer_schedule(model: str, dataset: str) -> Schedule:
    """The authors' schedule for retraining a transferred mask of `model` on `dataset`: the model's
    own, else the dataset's transfer schedule, else its paper schedule."""
    record = dataset_record(dataset)
    return model_record(model).schedule or record.transfer_schedule or record.schedule


def paper_finetune_epochs(model: str, dataset: str) -> int:
    """The authors' fine-tuning epochs after pruning `model` on `dataset` (1 unless the model's record says)."""
    return dict(model_record(model).finetune_epochs).get(dataset, 1)


def paper_threshold(model: str, dataset: str) -> float:
    """The authors' pruning threshold τ: the dataset's when it sets one (CIFAR-10), else the model's."""
    tau = dataset_record(dataset).tau
    return model_record(model).tau if tau is None else tau
