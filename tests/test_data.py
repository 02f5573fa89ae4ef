"""Data root, tensor cache, splits, CIFAR-10 JPEG copy, missing-data errors, batching, MIP batch."""

from __future__ import annotations

import io
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from critneuron.catalog import dataset_record
from critneuron.config import DataConfig, ScoreConfig
from critneuron.errors import ConfigError, CritneuronError, DatasetMissingError
from critneuron.nets.batches import authors_mip_batch, balanced_order, full_train_set, mip_batch, select_mip_batch
from critneuron.nets.data import (
    SOURCE_JPEG_COPY, SOURCE_TORCHVISION, augment_batch, cache_dir, data_root, dataset_source, iterate_batches,
    load_split,
)
from critneuron.experiments.runs import score_inputs

AUTHORS_TRANSFORM = transforms.Compose(
    [transforms.Resize((32, 32)), transforms.Grayscale(num_output_channels=3), transforms.ToTensor()]
)


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CRITNEURON_DATA", raising=False)
    assert data_root() == tmp_path / "data"
    monkeypatch.setenv("CRITNEURON_DATA", "/from/env")
    assert data_root() == Path("/from/env")
    assert data_root("/from/arg") == Path("/from/arg")


def test_cache_dir_is_the_user_cache_unless_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CRITNEURON_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CRITNEURON_DATA", str(tmp_path / "data"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "critneuron"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "critneuron"
    monkeypatch.setenv("CRITNEURON_CACHE", str(tmp_path / "data" / "cache"))
    assert cache_dir() == tmp_path / "data" / "cache"


def test_tiny_mnist_equals_authors_transforms(tiny_mnist_root: Path) -> None:
    """Served batches equal Resize + Grayscale(3) + ToTensor applied image by image."""
    cfg = DataConfig(dataset="mnist", root=str(tiny_mnist_root))
    splits = {name: load_split(cfg, name) for name in ("train", "val", "test")}
    assert [len(splits[name]) for name in ("train", "val", "test")] == [40, 10, 20]
    assert sorted(torch.cat([splits["train"].indices, splits["val"].indices]).tolist()) == list(range(50))
    raw = _read_idx_images(tiny_mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte")
    val = splits["val"]
    expected = torch.stack([AUTHORS_TRANSFORM(Image.fromarray(raw[int(i)])) for i in val.indices])
    assert val.images.dtype == torch.uint8 and val.images.shape == (10, 1, 32, 32)
    assert torch.equal(val.x(), expected)
    assert torch.equal(val.y(), val.indices % 10)
    assert val.source == SOURCE_TORCHVISION


def _read_idx_images(path: Path) -> np.ndarray:
    data = path.read_bytes()
    n, rows, cols = np.frombuffer(data[4:16], dtype=">u4")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, rows, cols)


def test_tensor_cache_is_used(tiny_mnist_root: Path) -> None:
    cfg = DataConfig(dataset="mnist", root=str(tiny_mnist_root))
    first = load_split(cfg, "test")
    assert len(list((tiny_mnist_root / "critneuron-cache").glob("mnist-test-torchvision-*.pt"))) == 1
    for path in (tiny_mnist_root / "MNIST" / "raw").iterdir():
        path.unlink()
    assert torch.equal(load_split(cfg, "test").images, first.images)


def test_splits_are_seeded_and_subsets_nested(tiny_mnist_root: Path) -> None:
    def val_indices(seed: int) -> list[int]:
        return load_split(DataConfig(root=str(tiny_mnist_root), split_seed=seed), "val").indices.tolist()

    assert val_indices(0) == val_indices(0) != val_indices(1)
    sub = DataConfig(root=str(tiny_mnist_root), subset=20, test_subset=5)
    assert [len(load_split(sub, s)) for s in ("train", "val", "test")] == [16, 4, 5]


def _write_jpeg_zip(root: Path, per_class: int) -> dict[str, bytes]:
    """A CIFAR10-jpeg/cifar10-jpeg.zip with `per_class` random colour images per class and split."""
    rng = np.random.default_rng(1)
    files = {}
    for split in ("train", "test"):
        for name in dataset_record("cifar10").class_names:
            for k in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
                files[f"{split}/{name}/{k:04d}.jpg"] = buffer.getvalue()
    (root / "CIFAR10-jpeg").mkdir(parents=True)
    with zipfile.ZipFile(root / "CIFAR10-jpeg" / "cifar10-jpeg.zip", "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return files


def test_cifar10_jpeg_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRITNEURON_CACHE", str(tmp_path / "critneuron-cache"))
    files = _write_jpeg_zip(tmp_path, per_class=2)
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path), val_fraction=0.0)
    assert dataset_source(cfg) == SOURCE_JPEG_COPY
    test = load_split(cfg, "test")
    assert test.source == SOURCE_JPEG_COPY and len(test) == 20
    assert test.labels.tolist() == [i // 2 for i in range(20)]  # ImageFolder order, airplane..truck
    classes = dataset_record("cifar10").class_names
    names = [f"test/{classes[i // 2]}/{i % 2:04d}.jpg" for i in range(20)]
    expected = torch.stack([AUTHORS_TRANSFORM(Image.open(io.BytesIO(files[n]))) for n in names])
    assert torch.equal(test.x(), expected)
    assert len(load_split(cfg, "train")) == 20
    assert list((tmp_path / "critneuron-cache").glob("cifar10-jpeg-*/.complete"))


def test_missing_dataset_names_dataset_and_root(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="kmnist", root=str(tmp_path))
    message = rf"dataset 'kmnist' not found under data root {re.escape(str(tmp_path))} .*download disabled"
    with pytest.raises(DatasetMissingError, match=message) as caught:
        load_split(cfg, "train", download=False)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_missing_dataset_in_read_only_root_does_not_download(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir(mode=0o555)
    start = time.perf_counter()
    with pytest.raises(DatasetMissingError, match=r"'cifar10' .*cifar-10-batches-py .*read-only"):
        load_split(DataConfig(dataset="cifar10", root=str(root)), "test")
    assert time.perf_counter() - start < 5 and not any(root.iterdir())


def test_iterate_batches_covers_data_once_and_is_seeded(tiny_mnist_root: Path) -> None:
    data = load_split(DataConfig(root=str(tiny_mnist_root)), "train")

    def labels(seed: int) -> list[list[int]]:
        batches = iterate_batches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [y.tolist() for _, y in batches]

    assert [len(b) for b in labels(0)] == [16, 16, 8]
    assert sorted(sum(labels(0), [])) == sorted(data.labels.tolist())
    assert labels(0) == labels(0) and labels(0) != labels(1)
    x, _ = next(iterate_batches(data, 4))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32


def test_augment_batch_is_a_padded_crop_with_optional_flip() -> None:
    images = torch.randint(1, 256, (6, 1, 32, 32), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0))
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    flipped = 0
    for original, crop in zip(padded, out):
        candidates = [original[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        plain = any(torch.equal(crop, c) for c in candidates)
        mirrored = any(torch.equal(crop, c.flip(-1)) for c in candidates)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 0 < flipped < 6
    assert torch.equal(out, augment_batch(images, torch.Generator().manual_seed(0)))


def test_mip_batch_needs_enough_correct_images(tiny_mnist_root: Path) -> None:
    always_zero = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    nn.init.zeros_(always_zero[1].weight)
    with torch.no_grad():
        always_zero[1].bias.copy_(torch.arange(10, 0, -1).float())
    data = load_split(DataConfig(root=str(tiny_mnist_root)), "train")
    _, y, _ = mip_batch(always_zero, data, batch_size=1)
    assert y.tolist() == [0]
    with pytest.raises(CritneuronError, match="train images of class 1 are classified correctly"):
        mip_batch(always_zero, data, batch_size=2)
    _, y, indices = mip_batch(always_zero, data, batch_size=2, correct_only=False)  # untrained networks
    assert y.tolist() == [0, 1] and torch.equal(mip_batch(always_zero, data, 2, correct_only=False)[2], indices)
    with pytest.raises(CritneuronError, match="only 4 train images of class 0, need 6"):
        mip_batch(always_zero, data, batch_size=60, correct_only=False)


TEST_CLASS_COUNTS = {
    "mnist": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    "fashion-mnist": [1000] * 10,
}


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_full_mnist_like_sizes(shared_data_root: Path, dataset: str) -> None:
    cfg = DataConfig(dataset=dataset, root=str(shared_data_root))
    sizes = {split: len(load_split(cfg, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 48_000, "val": 12_000, "test": 10_000}
    test = load_split(cfg, "test")
    x = test.x(torch.arange(0, 10_000, 7))
    assert x.shape[1:] == (3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.99
    assert torch.equal(x[:, 0], x[:, 2])
    assert torch.bincount(test.labels).tolist() == TEST_CLASS_COUNTS[dataset]


def test_mip_batch_balanced_correct_and_seeded(lenet5_mnist, mnist_subset: dict) -> None:
    model, train = lenet5_mnist.model, mnist_subset["train"]
    x, y, indices = mip_batch(model, train, batch_size=20, seed=0)
    assert x.shape == (20, 3, 32, 32)
    assert y.tolist() == [i % 10 for i in range(20)]
    with torch.no_grad():
        assert torch.equal(model.eval()(x).argmax(dim=1), y)
    assert len(set(indices.tolist())) == 20 and set(indices.tolist()) <= set(train.indices.tolist())
    assert torch.equal(mip_batch(model, train, batch_size=20, seed=0)[2], indices)
    assert not torch.equal(mip_batch(model, train, batch_size=20, seed=1)[2], indices)


@pytest.fixture(scope="module")
def mnist_full(shared_data_root: Path):
    return full_train_set(DataConfig(dataset="mnist", root=str(shared_data_root)))


def test_balanced_order_is_the_authors_loader(mnist_full) -> None:
    """Item i: class i % 10, the (i mod n_c)-th image of that class in dataset order."""
    labels = mnist_full.labels
    assert len(mnist_full) == 60_000 and torch.equal(mnist_full.indices, torch.arange(60_000))
    order = balanced_order(labels)
    assert torch.equal(labels[order], torch.arange(60_000) % 10)
    fives = torch.nonzero(labels == 5).flatten()  # 5,421 images: the loader wraps around this class
    for i in (5, 15, 54_215, 59_995):
        assert order[i] == fives[i % len(fives)]
    assert order[0] == torch.nonzero(labels == 0).flatten()[0]


def test_authors_mip_batch_is_the_last_fully_correct_chunk(lenet5_mnist, mnist_full) -> None:
    model = lenet5_mnist.model.eval()
    x, y, indices = authors_mip_batch(model, mnist_full)
    order = balanced_order(mnist_full.labels)
    with torch.no_grad():
        hits = torch.cat([model(mnist_full.x(order[i : i + 5000])).argmax(1) == mnist_full.labels[order[i : i + 5000]]
                          for i in range(0, 60_000, 5000)])
    chunks = [b + o for b in range(0, 60_000, 100) for o in range(0, 90, 10)]  # the chunk ending at 100 never
    last = [c for c in chunks if hits[c : c + 10].all()][-1]
    assert torch.equal(indices, order[last : last + 10]) and y.tolist() == list(range(10))
    assert torch.equal(x, mnist_full.x(order[last : last + 10]))
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), y)
    assert torch.equal(authors_mip_batch(model, mnist_full)[2], indices)  # deterministic


def test_authors_mip_batch_falls_back_to_the_most_accurate_chunk(mnist_full) -> None:
    """An untrained-like net right on class 0 only: no chunk is fully correct, so among chunks with
    one hit (those holding class 0) the last in loader order wins; B = 5 gives classes 0-4 or 5-9."""
    always_zero = nn.Sequential(nn.Flatten(), nn.Linear(3072, 10))
    nn.init.zeros_(always_zero[1].weight)
    with torch.no_grad():
        always_zero[1].bias.copy_(torch.arange(10, 0, -1).float())
    _, y, indices = authors_mip_batch(always_zero, mnist_full, batch_size=5)
    assert y.tolist() == [0, 1, 2, 3, 4] and torch.equal(indices, balanced_order(mnist_full.labels)[59_990:59_995])


def test_select_mip_batch_by_rule(lenet5_mnist, shared_data_root: Path) -> None:
    cfg = DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000)
    model = lenet5_mnist.model
    _, _, authors = select_mip_batch("authors", model, cfg, 10, seed=0)
    assert torch.equal(authors, select_mip_batch("authors", model, cfg, 10, seed=3)[2])  # no seed involved
    assert torch.equal(authors, authors_mip_batch(model, full_train_set(cfg))[2])  # the full set, not the subset
    _, _, drawn = select_mip_batch("random", model, cfg, 10, seed=0)
    assert torch.equal(drawn, mip_batch(model, load_split(cfg, "train"), 10, seed=0)[2])
    rule = ScoreConfig(batch_rule="authors")  # what a run selects
    assert score_inputs(model, cfg, rule)[2]["batch_indices"] == authors.tolist()
    with pytest.raises(ConfigError, match="batch_rule must be one of 'random', 'authors', got 'last'"):
        select_mip_batch("last", model, cfg)
