"""Shared fixtures: a temporary results root, the full-data root (or a skip), a briefly trained LeNet-5,
tiny IDX files, a toy package for code fingerprints."""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from critneuron.config import DataConfig, paper_train_config
from critneuron.nets.data import load_split
from critneuron.nets.models import build_model
from critneuron.nets.train import TrainResult, train_model

torch.set_num_threads(min(2, torch.get_num_threads()))

# Property-based tests: no per-example deadline (a solve's time varies on a loaded machine); in CI
# (CI=true) the examples are derandomized, so a run is repeatable and a failure reproducible;
# HYPOTHESIS_PROFILE=mutation runs few of them and does not shrink a failure (benchmarks/mutation.py).
settings.register_profile("dev", max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.register_profile("mutation", parent=settings.get_profile("ci"), max_examples=10,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true"
                                                               else "dev"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def temporary_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`$CRITNEURON_RESULTS` points at a temporary folder for the whole session: nothing a test
    runs (the smoke book included) reads or writes the repository's results/."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CRITNEURON_RESULTS", str(root))
        yield root


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """`$CRITNEURON_DATA`, else `<repo>/../shared/data`, when it holds MNIST; else skip."""
    root = Path(os.environ.get("CRITNEURON_DATA") or REPO.parent / "shared" / "data")
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        reason = f"full MNIST not found under {root}/MNIST/raw: set CRITNEURON_DATA to a data root holding it"
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def mnist_subset(shared_data_root: Path) -> dict:
    """train/val/test splits of MNIST with 2,000 official training images (1,600 train, 400 val)."""
    cfg = DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000)
    return {split: load_split(cfg, split) for split in ("train", "val", "test")}


@pytest.fixture(scope="session")
def lenet5_mnist(mnist_subset: dict) -> TrainResult:
    """LeNet-5 after 1 epoch on `mnist_subset`.

    Batch 16, not the paper's 128: at 128 one epoch is only 13 steps and reaches ~50% test
    accuracy; at 16 it reaches ~87% (seeds 0-3: 86-88%).
    """
    cfg = dataclasses.replace(paper_train_config("lenet5", "mnist", epochs=1, seed=0), batch_size=16)
    model = build_model("lenet5", seed=0)
    return train_model(model, mnist_subset["train"], mnist_subset["val"], cfg, progress=False)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST files (magic 0x0801 labels, 0x0803 images)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root with MNIST/raw holding 50 train and 20 test random 28×28 images, labels i % 10.

    The tensor cache goes to `<root>/critneuron-cache` ($CRITNEURON_CACHE points there).
    """
    monkeypatch.setenv("CRITNEURON_CACHE", str(tmp_path / "critneuron-cache"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


@pytest.fixture
def toy_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable package (uniquely named, on sys.path) for code-fingerprint tests:
    ``<name>.compute`` (imports ``.helpers``), ``<name>.helpers`` and ``<name>.glue``, whose
    `stage` uses ``compute.run`` and its own `_helper` while `other` uses nothing."""
    name = f"toypkg_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "src" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    (package / "compute.py").write_text("from .helpers import double\n\n\ndef run(x):\n    return double(x) + 1\n")
    (package / "glue.py").write_text(
        f"from {name}.compute import run\n\n\ndef _helper(x):\n    return x\n\n\n"
        "def stage(x):\n    return run(_helper(x))\n\n\ndef other(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    return package
