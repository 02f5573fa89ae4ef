"""Seeded training and evaluation loops on in-memory tensors, and checkpoints.

Same seed, same data and same device give identical weights on the CPU (shuffling and
augmentation draw from one seeded `torch.Generator`; initialisation is seeded in `build_model`).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm import tqdm

from critneuron.config import DataConfig, ModelConfig, TrainConfig, from_dict, to_dict
from critneuron.errors import CheckpointError
from critneuron.nets.data import TensorData, iterate_batches
from critneuron.nets.models import build_model, evaluating

CHECKPOINT_FORMAT = 1
State = dict[str, torch.Tensor]


@dataclass
class TrainResult:
    """What `train_model` returns. `model` holds `best_state` (lowest validation loss; the last
    epoch when there is no validation data; the initial weights after 0 epochs)."""

    model: nn.Module
    init_state: State
    best_state: State
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch CPU threads. CPU reductions depend on the thread count, so
    training with a fixed one gives the same weights in a notebook, serially or on a Dask worker
    (which starts with one thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def clone_state(model: nn.Module) -> State:
    """A detached CPU copy of the model's state_dict."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop(lr) or SGD(lr, Nesterov momentum, weight decay), as `cfg.optimizer` says."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    return torch.optim.RMSprop(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of `model` on `data`, in eval mode."""
    device = _device_of(model)
    correct, loss = 0, 0.0
    with evaluating(model):
        for x, y in iterate_batches(data, batch_size):
            logits = model(x.to(device)).cpu()
            correct += int((logits.argmax(dim=1) == y).sum())
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
    n = max(len(data), 1)
    return correct / n, loss / n


def _train_epoch(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    augment: bool,
    bar: tqdm,
) -> tuple[float, float]:
    """One pass over `data`; returns (accuracy, mean loss) over the pass."""
    device = _device_of(model)
    model.train()
    correct, loss_sum = 0, 0.0
    for x, y in iterate_batches(data, cfg.batch_size, shuffle=True, generator=generator, augment=augment):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        bar.update(1)
    return correct / len(data), loss_sum / len(data)


def train_model(
    model: nn.Module,
    train_data: TensorData,
    val_data: TensorData,
    cfg: TrainConfig,
    augment: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` with `cfg`, keeping the weights of the lowest validation loss.

    Example:
        >>> result = train_model(build_model("lenet5"), train, val, paper_train_config("lenet5", "mnist", epochs=1))
        >>> evaluate(result.model, test)  # (accuracy, loss)
    """
    model.to(resolve_device(device))
    init_state = clone_state(model)
    result = TrainResult(model, init_state, init_state, best_epoch=0)
    optimizer, generator = make_optimizer(model, cfg), torch.Generator().manual_seed(cfg.seed)
    best_loss, start = math.inf, time.perf_counter()
    steps = math.ceil(len(train_data) / cfg.batch_size) * cfg.epochs
    with tqdm(total=steps, desc="train", unit="batch", disable=not progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            train_acc, train_loss = _train_epoch(model, train_data, cfg, optimizer, generator, augment, bar)
            val_acc, val_loss = evaluate(model, val_data) if len(val_data) else (None, None)
            record = {"epoch": epoch, "train_accuracy": train_acc, "train_loss": train_loss}
            result.history.append({**record, "val_accuracy": val_acc, "val_loss": val_loss})
            bar.set_postfix(train_loss=round(train_loss, 4), val_accuracy=val_acc)
            if val_loss is None or val_loss < best_loss:
                best_loss = math.inf if val_loss is None else val_loss
                result.best_state, result.best_epoch = clone_state(model), epoch
    model.load_state_dict(result.best_state)
    result.train_seconds = time.perf_counter() - start
    return result


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_cfg: ModelConfig,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    init_state: State | None = None,
    metrics: dict[str, Any] | None = None,
    heads: State | None = None,
) -> Path:
    """Write weights, initial weights, configs, metrics and auxiliary heads (the state of a
    `nets.heads.Decoupled`'s heads, if any) as plain dicts and tensors, atomically.

    `metrics` must be JSON-able; values JSON does not know (paths, versions) are stored as text.
    """
    path = Path(path)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "model_config": to_dict(model_cfg),
        "data_config": to_dict(data_cfg),
        "train_config": to_dict(train_cfg),
        "state_dict": clone_state(model),
        "init_state": init_state or {},
        "heads": heads or {},
        "metrics": json.loads(json.dumps(metrics or {}, default=str)),  # plain data for weights_only
        "torch_version": str(torch.__version__),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Sequential, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone; meta holds the configs (as dataclasses),
    `init_state`, `metrics`, `torch_version` and `heads` (empty unless decoupled-trained). CheckpointError (naming the file) if it is not
    a readable critneuron checkpoint, or if a weight or buffer of the network or its heads is NaN or inf."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign files fail in pickle, zipfile, torch or OS code
        # torch's own text (e.g. "rerun with weights_only=False") misleads for a corrupt file
        raise CheckpointError(f"{path} is not a critneuron checkpoint: torch cannot load it "
                              f"({type(err).__name__})") from err
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a critneuron checkpoint of format {CHECKPOINT_FORMAT}")
    try:
        model_cfg = from_dict(ModelConfig, blob["model_config"])
        model = build_model(model_cfg.name, model_cfg.width)
        model.load_state_dict(blob["state_dict"])
        meta = {
            "model_config": model_cfg,
            "data_config": from_dict(DataConfig, blob["data_config"]),
            "train_config": from_dict(TrainConfig, blob["train_config"]),
            **{key: blob[key] for key in ("init_state", "metrics", "torch_version")},
            "heads": blob.get("heads", {}),
        }
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is a damaged critneuron checkpoint: {_one_line(err)}") from err
    bad = [name for name, value in [*model.state_dict().items(), *meta["heads"].items()]
           if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"{path} has non-finite weights (NaN or inf) in {', '.join(bad[:3])}"
                              f"{' and more' if len(bad) > 3 else ''}: training diverged; train it again "
                              "(e.g. with a lower --lr)")
    return model, meta


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"
