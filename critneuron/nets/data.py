"""Data root, torchvision datasets, uint8 tensor cache, seeded splits, batching (the MIP batch is
in `nets.batches`).

Every dataset gets the authors' preprocessing, `Resize((32, 32))`, `Grayscale(3)`, `ToTensor()`
and no normalisation (CIFAR-10 becomes grayscale too). The PIL transforms run once per image;
the result is cached as uint8 N×1×32×32 and expanded to 3 channels and divided by 255 when a
batch is served, which is exactly what `ToTensor` returns.

Which datasets exist, where their files lie and whether they are augmented is the catalog's
(`catalog.dataset_record`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import shutil
import stat
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import PIL
import torch
import torch.nn.functional as F
import torchvision
from torchvision import datasets, transforms
from tqdm import tqdm

from critneuron.catalog import dataset_record
from critneuron.config import DataConfig
from critneuron.errors import ConfigError, DatasetMissingError

SPLITS = ("train", "val", "test")
SOURCE_TORCHVISION = "torchvision"
SOURCE_LOADER = "loader"
SOURCE_JPEG_COPY = "jpeg-copy (JPEG, not byte-exact)"

_SOURCE_SLUGS = {SOURCE_TORCHVISION: "torchvision", SOURCE_LOADER: "loader", SOURCE_JPEG_COPY: "jpeg"}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `root` if given, else `$CRITNEURON_DATA`, else `./data`."""
    if root is None:
        root = os.environ.get("CRITNEURON_DATA") or Path.cwd() / "data"
    return Path(root).expanduser()


def _writable(path: Path) -> bool:
    """Whether we may write under `path` (its nearest existing ancestor).

    Also requires a write bit in the mode: root passes every `os.access` test, and read-only
    shared folders are marked by their mode alone.
    """
    path = path.absolute()
    while not path.exists():
        path = path.parent
    write_bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & write_bits)


def cache_dir() -> Path:
    """Where tensor caches go: `$CRITNEURON_CACHE`, else `$XDG_CACHE_HOME/critneuron`, else
    `~/.cache/critneuron`; never into a data root unless `$CRITNEURON_CACHE` says so. Cache
    files name their data root (a hash of its path), so one cache serves several roots."""
    env = os.environ.get("CRITNEURON_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "critneuron"


def dataset_source(cfg: DataConfig) -> str:
    """Which copy of the data `cfg` loads: `SOURCE_TORCHVISION`, `SOURCE_LOADER` (the record's own
    loader) or `SOURCE_JPEG_COPY`.

    A dataset with a JPEG copy (CIFAR-10: `<root>/CIFAR10-jpeg/cifar10-jpeg.zip`) falls back to it
    only when its official folder is absent.
    """
    record, root = dataset_record(cfg.dataset), data_root(cfg.root)
    if record.loader is not None:
        return SOURCE_LOADER
    if record.jpeg_copy and not (root / record.folders[0]).is_dir() and (root / record.jpeg_copy).is_file():
        return SOURCE_JPEG_COPY
    return SOURCE_TORCHVISION


def preprocess() -> transforms.Compose:
    """The authors' transforms with `PILToTensor` in place of `ToTensor` (uint8 3×32×32)."""
    return transforms.Compose(
        [transforms.Resize((32, 32)), transforms.Grayscale(num_output_channels=3), transforms.PILToTensor()]
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 B×1×32×32 -> float32 B×3×32×32 in [0, 1], as `ToTensor` gives after `Grayscale(3)`."""
    return images.float().div(255).expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True, eq=False)
class TensorData:
    """One split held in memory.

    `images` is uint8 N×1×32×32, `labels` int64 N, and `indices` int64 N gives each image's
    position in the official split (train or test) of `source`, so results can name images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    dataset: str
    split: str
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def x(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Float images B×3×32×32 in [0, 1] (all, or those at positions `idx`)."""
        return to_float(self.images if idx is None else self.images[idx])

    def y(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Labels (all, or those at positions `idx`)."""
        return self.labels if idx is None else self.labels[idx]


def _missing(dataset: str, root: Path, reason: str) -> DatasetMissingError:
    expected = " or ".join(str(root / place) for place in dataset_record(dataset).folders)
    return DatasetMissingError(
        f"dataset {dataset!r} not found under data root {root} (expected {expected}; {reason}). "
        "Fix: set CRITNEURON_DATA or --data-root to a folder that holds it, "
        "or run once with internet access so torchvision can download it"
    )


def _open_torchvision(dataset: str, root: Path, train: bool, download: bool) -> torch.utils.data.Dataset:
    cls = getattr(datasets, dataset_record(dataset).torchvision)
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        pass
    if not download:
        raise _missing(dataset, root, "download disabled") from None
    if not _writable(root):
        raise _missing(dataset, root, "the root is read-only, so no download was tried") from None
    try:
        return cls(str(root), train=train, download=True)
    except Exception:  # URLError, HTTP errors, checksum failures: all mean "not available"
        raise _missing(dataset, root, "the download failed: offline?") from None


def _extract_jpeg_zip(dataset: str, root: Path) -> Path:
    """Unpack a dataset's JPEG copy once into the cache dir; return the folder."""
    target = cache_dir() / f"{dataset}-jpeg-{_root_key(root)}"
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(root / dataset_record(dataset).jpeg_copy) as archive:
        archive.extractall(tmp)
    (tmp / ".complete").touch()
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _open_jpeg_copy(dataset: str, root: Path, train: bool) -> datasets.ImageFolder:
    record = dataset_record(dataset)
    images = datasets.ImageFolder(str(_extract_jpeg_zip(dataset, root) / ("train" if train else "test")))
    if tuple(images.classes) != record.class_names:
        raise DatasetMissingError(
            f"{root / record.jpeg_copy} has classes {images.classes}, expected {list(record.class_names)}"
        )
    return images


def _root_key(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def _cache_version() -> str:
    """What a cached tensor depends on besides its data: the source of the functions that read
    and preprocess the images, and the torchvision and Pillow versions that run them."""
    digest = hashlib.sha256()
    for function in (preprocess, _tensorize, _open_torchvision, _open_jpeg_copy, _extract_jpeg_zip):
        digest.update(inspect.getsource(function).encode())
    digest.update(f"{torchvision.__version__} {PIL.__version__}".encode())
    return digest.hexdigest()[:12]


def _tensorize(images: torch.utils.data.Dataset, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the preprocessing on every (PIL image, label) item once."""
    pipeline = preprocess()
    out = torch.empty((len(images), 1, 32, 32), dtype=torch.uint8)
    labels = torch.empty(len(images), dtype=torch.int64)
    for i in tqdm(range(len(images)), desc=desc, disable=None, leave=False):
        image, label = images[i]
        out[i] = pipeline(image)[:1]
        labels[i] = label
    return out, labels


def _save_cache(blob: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as err:
        warnings.warn(f"could not write the tensor cache {path}: {err}", stacklevel=3)


def official_split(cfg: DataConfig, train: bool, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All preprocessed images (uint8 N×1×32×32) and labels of the official train or test set.

    Read from the tensor cache when present; otherwise built once and cached.
    """
    root, source = data_root(cfg.root), dataset_source(cfg)
    name = "train" if train else "test"
    key = f"{cfg.dataset}-{name}-{_SOURCE_SLUGS[source]}-{_root_key(root)}-{_cache_version()}.pt"
    path = cache_dir() / key
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return blob["images"], blob["labels"]
    if source == SOURCE_LOADER:
        raw = dataset_record(cfg.dataset).loader(root, train)
    elif source == SOURCE_JPEG_COPY:
        raw = _open_jpeg_copy(cfg.dataset, root, train)
    else:
        raw = _open_torchvision(cfg.dataset, root, train, download)
    images, labels = _tensorize(raw, desc=f"caching {cfg.dataset} {name}")
    _save_cache({"images": images, "labels": labels}, path)
    return images, labels


def split_indices(n: int, cfg: DataConfig, split: str) -> torch.Tensor:
    """Sorted positions in the official split that make up `split`.

    train/val: a seeded permutation of the official train set, cut to `subset` images if set;
    its first `val_fraction` is val, the rest train. test: all, or a seeded `test_subset`.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed))
    if split == "test":
        chosen = perm[: cfg.test_subset] if cfg.test_subset else torch.arange(n)
    else:
        perm = perm[: cfg.subset] if cfg.subset else perm
        n_val = round(len(perm) * cfg.val_fraction)
        chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return chosen.sort().values


def load_split(cfg: DataConfig, split: str, download: bool = True) -> TensorData:
    """Load `split` ('train', 'val' or 'test') of `cfg.dataset`.

    Raises DatasetMissingError (one line, no traceback chain) when the data is neither in the
    root nor downloadable; `download=False` never touches the network.

    Example:
        >>> train = load_split(DataConfig(dataset="mnist"), "train")
        >>> train.x(torch.arange(8)).shape
        torch.Size([8, 3, 32, 32])
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    images, labels = official_split(cfg, train=split != "test", download=download)
    idx = split_indices(len(labels), cfg, split)
    return TensorData(images[idx], labels[idx], idx, cfg.dataset, split, dataset_source(cfg))


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """`RandomCrop(size, padding)` + `RandomHorizontalFlip()` on a batch B×C×H×W, per image."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    offset_y = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (offset_y[:, None] + torch.arange(h))[:, None, :, None]
    cols = (offset_x[:, None] + torch.arange(w))[:, None, None, :]
    crops = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def iterate_batches(
    data: TensorData,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float images B×3×32×32, labels) batches; `generator` (default: seed 0) drives
    shuffling and augmentation."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    for start in range(0, len(data), batch_size):
        idx = order[start : start + batch_size]
        images = data.images[idx]
        if augment:
            images = augment_batch(images, generator)
        yield to_float(images), data.labels[idx]
