"""The balanced batch the MIP scores: a seeded draw of correctly classified images per class
(`mip_batch`), or the authors' deterministic pick (`authors_mip_batch`), chosen by
`ScoreConfig.batch_rule` (`select_mip_batch`)."""

from __future__ import annotations

import torch
from torch import nn

from critneuron.config import BatchRule, DataConfig, ScoreConfig, choices
from critneuron.errors import ConfigError, CritneuronError
from critneuron.nets.data import TensorData, dataset_source, load_split, official_split
from critneuron.nets.models import NUM_CLASSES, evaluating

AUTHORS_LOADER_BATCH = 100  # their balanced "val" loader's batch size
_AUTHORS_BLOCK = 2000  # images classified at once while searching for their MIP batch


@torch.no_grad()
def _correct_positions(
    model: nn.Module, data: TensorData, label: int, count: int, generator: torch.Generator,
    correct_only: bool = True,
) -> list[int]:
    """`count` random positions of class `label` that `model` classifies correctly (any, if not
    `correct_only`)."""
    device = next(model.parameters()).device
    candidates = torch.nonzero(data.labels == label).flatten()
    candidates = candidates[torch.randperm(len(candidates), generator=generator)]
    if not correct_only:
        if len(candidates) < count:
            raise CritneuronError(f"only {len(candidates)} {data.split} images of class {label}, need {count}")
        return candidates[:count].tolist()
    found: list[int] = []
    for chunk in candidates.split(256):
        predicted = model(data.x(chunk).to(device)).argmax(dim=1).cpu()
        found += chunk[predicted == label].tolist()
        if len(found) >= count:
            return found[:count]
    raise CritneuronError(
        f"only {len(found)} {data.split} images of class {label} are classified correctly, need {count}"
    )


def mip_batch(
    model: nn.Module, data: TensorData, batch_size: int = 10, seed: int = 0, correct_only: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The balanced batch the MIP scores: image i has class i % 10, and each is drawn (seeded)
    from the images of `data` (pass the training split) that `model` classifies correctly.

    `correct_only=False` draws from all images of the class, for untrained networks (pruning at
    initialisation), which classify too few correctly. Returns (x float B×3×32×32, y, indices
    into the official split).
    """
    generator = torch.Generator().manual_seed(seed)
    wanted = [i % NUM_CLASSES for i in range(batch_size)]
    classes = sorted(set(wanted))  # a fixed order of draws from the generator
    with evaluating(model):
        picks = {c: _correct_positions(model, data, c, wanted.count(c), generator, correct_only) for c in classes}
    positions = torch.tensor([picks[c][i // NUM_CLASSES] for i, c in enumerate(wanted)])
    return data.x(positions), data.y(positions), data.indices[positions]


def full_train_set(cfg: DataConfig, download: bool = True) -> TensorData:
    """The whole official training set in its official order (no split, no `subset`): what the
    authors' balanced loader wraps. Its `split` is "official-train"."""
    images, labels = official_split(cfg, train=True, download=download)
    return TensorData(images, labels, torch.arange(len(labels)), cfg.dataset, "official-train", dataset_source(cfg))


def balanced_order(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """The positions the authors' `BalancedDataLoader` serves, in order: item i is the
    (i mod n_c)-th image (in dataset order) of class c = i mod `num_classes`, where n_c is the
    size of class c (so a small class repeats), for i < len(labels)."""
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    items = torch.arange(len(labels))
    order = torch.empty_like(items)
    for c, positions in enumerate(per_class):
        chosen = items[items % num_classes == c]
        if len(chosen) and not len(positions):
            raise CritneuronError(f"no image of class {c} for the balanced loader")
        order[chosen] = positions[chosen % len(positions)]
    return order


@torch.no_grad()
def authors_mip_batch(
    model: nn.Module, data: TensorData, batch_size: int = 10, loader_batch: int = AUTHORS_LOADER_BATCH
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' deterministic MIP batch (`dataset/mip_batch_loader.py`) from `data`, which
    should be `full_train_set` (theirs is the whole official training set, val part included).

    Their balanced loader (`balanced_order`) is cut into batches of `loader_batch` = 100; each
    batch offers the chunks at offsets 0, B, 2B, ... that end before the batch's last item (their
    `>=` test skips the chunk ending at 100). Every chunk is scored by their evaluator, which
    equals (K - 1) × the chunk's accuracy under `model` (eval mode), and the last chunk in loader
    order among those of highest accuracy is taken: for a trained network, the last fully-correct
    chunk, typically items 80-89 of the last batch. Exact score ties are assumed where their float
    sums of 1 - p might differ in the last bit. CIFAR-10 images are served unaugmented (their
    loader applies the random training augmentation). B > 10 repeats classes, which their
    balance check refuses. Returns (x float B×3×32×32, y, indices into the official split), like
    `mip_batch`.
    """
    order = balanced_order(data.labels)
    device = next(model.parameters()).device
    starts = [b + o for b in range(0, len(order), loader_batch) for o in range(0, loader_batch - batch_size + 1, batch_size)
              if o + batch_size < min(loader_batch, len(order) - b)]
    best, best_start, hits, hits_from = -1, None, None, len(order)
    with evaluating(model):
        for start in reversed(starts):  # from the end: the first fully-correct chunk found is the answer
            if start < hits_from:  # classify the next stretch of the loader, a block of batches at a time
                hits_from = max(0, start + batch_size - _AUTHORS_BLOCK)
                stretch = order[hits_from : start + batch_size]
                hits = model(data.x(stretch).to(device)).argmax(dim=1).cpu() == data.y(stretch)
            correct = int(hits[start - hits_from : start - hits_from + batch_size].sum())
            if correct > best:
                best, best_start = correct, start
            if best == batch_size:
                break
    if best_start is None:
        raise CritneuronError(f"no chunk of {batch_size} images in loader batches of {loader_batch}")
    positions = order[best_start : best_start + batch_size]
    return data.x(positions), data.y(positions), data.indices[positions]


def select_mip_batch(
    rule: BatchRule, model: nn.Module, cfg: DataConfig, batch_size: int = 10, seed: int = 0, correct_only: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MIP batch of `cfg`'s dataset by `rule` (`config.BatchRule`): "random" = `mip_batch` on the
    training split (seeded by `seed`, `correct_only` as there), "authors" = `authors_mip_batch`
    on `full_train_set` (deterministic; `seed` and `correct_only` do not apply)."""
    if rule == "random":
        return mip_batch(model, load_split(cfg, "train"), batch_size, seed=seed, correct_only=correct_only)
    if rule == "authors":
        return authors_mip_batch(model, full_train_set(cfg), batch_size)
    raise ConfigError(f"batch_rule must be one of {', '.join(map(repr, choices(ScoreConfig, 'batch_rule')))}, "
                      f"got {rule!r}")
