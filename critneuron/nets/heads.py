"""Auxiliary heads and decoupled greedy training (Belilovsky et al.) for per-block scoring.

A network is split at every Conv2d: block k runs from the end of block k−1 (so pooling that
precedes Conv_k belongs to block k) through the first ReLU after Conv_k; the last block, from
the last Conv2d on, is the network's own tail. Every block but the tail gets an auxiliary
classifier head. Block k + head k is a small network of its own (`Decoupled.sub_model`), which
`mip.blocks` scores with one MIP per block.
"""

from __future__ import annotations

import math
import typing
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from critneuron.catalog.records import Training
from critneuron.config import TrainConfig
from critneuron.errors import CritneuronError, UnsupportedLayerError
from critneuron.nets.data import TensorData, iterate_batches
from critneuron.nets.models import INPUT_SHAPE, NUM_CLASSES, evaluating, init_weights, scored_layer_names
from critneuron.nets.train import State, clone_state, evaluate, make_optimizer, resolve_device

TRAINING: tuple[Training, ...] = typing.get_args(Training)


def split_blocks(model: nn.Sequential) -> list[list[str]]:
    """Module names of each block (see the module docstring); the last list is the tail.

    Raises `UnsupportedLayerError` when the network has no Conv2d or a Conv2d without a ReLU after it.
    """
    names = [name for name, _ in model.named_children()]
    convs = [i for i, (_, m) in enumerate(model.named_children()) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UnsupportedLayerError("decoupled scoring splits a network at its Conv2d layers; this one has none")
    blocks, start = [], 0
    for c in convs[:-1]:
        relu = next((i for i in range(c + 1, len(names)) if isinstance(getattr(model, names[i]), nn.ReLU)), None)
        if relu is None or any(isinstance(getattr(model, names[i]), (nn.Conv2d, nn.Linear)) for i in range(c + 1, relu)):
            raise UnsupportedLayerError(f"{names[c]}: no ReLU after it before the next affine layer")
        blocks.append(names[start:relu + 1])
        start = relu + 1
    blocks.append(names[start:])
    return blocks


def _sequential(model: nn.Module, names: list[str]) -> nn.Sequential:
    """An `nn.Sequential` sharing the named children of `model` (training it trains `model`)."""
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in names))


def make_head(channels: int, spatial: int, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """Auxiliary classifier on a block output of `channels` × `spatial` × `spatial` (for VGG-16
    the block's input size too: its convolutions keep the size)."""
    c = channels
    return nn.Sequential(OrderedDict([
        ("head_pool", nn.AdaptiveAvgPool2d(math.ceil(spatial / 4))),
        ("head_conv", nn.Conv2d(c, c, 1, bias=False)),
        ("head_bn1", nn.BatchNorm2d(c, affine=False)),
        ("head_relu1", nn.ReLU()),
        ("head_pool2", nn.AdaptiveAvgPool2d(2)),
        ("head_flatten", nn.Flatten()),
        ("head_fc1", nn.Linear(4 * c, 4 * c)),
        ("head_bn2", nn.BatchNorm1d(4 * c, affine=False)),
        ("head_relu2", nn.ReLU()),
        ("head_fc2", nn.Linear(4 * c, num_classes)),
    ]))


@dataclass
class Decoupled:
    """A network, its block split and one auxiliary head per block but the tail.

    The heads are separate modules; `model` itself is unchanged and is what gets evaluated.
    """

    model: nn.Sequential
    heads: nn.ModuleList
    blocks: list[list[str]]

    @classmethod
    def build(cls, model: nn.Sequential, seed: int = 0, input_shape: tuple[int, ...] = INPUT_SHAPE) -> "Decoupled":
        """Split `model` and give each block a freshly initialised head (seeded)."""
        blocks = split_blocks(model)
        heads, x = [], torch.zeros(2, *input_shape, device=next(model.parameters()).device)
        with evaluating(model), torch.no_grad():
            for names in blocks[:-1]:
                x = _sequential(model, names)(x)
                heads.append(make_head(x.shape[1], x.shape[-1]))
        head_list = nn.ModuleList(heads).to(x.device)
        init_weights(head_list, torch.Generator().manual_seed(seed))
        return cls(model, head_list, blocks)

    def block(self, k: int) -> nn.Sequential:
        """Block k's modules of the network."""
        return _sequential(self.model, self.blocks[k])

    def prefix(self, k: int) -> nn.Sequential:
        """The network's modules before block k."""
        return _sequential(self.model, [n for names in self.blocks[:k] for n in names])

    def sub_model(self, k: int) -> nn.Sequential:
        """Block k followed by its head (the tail alone for the last block): the k-th MIP's network."""
        if k == len(self.blocks) - 1:
            return self.block(k)
        head = self.heads[k]
        return nn.Sequential(OrderedDict([*self.block(k).named_children(), *head.named_children()]))

    def classifier(self, k: int) -> nn.Sequential:
        """Input → prefix → block k → head k: the network head k's accuracy is measured on."""
        return nn.Sequential(OrderedDict([*self.prefix(k).named_children(), *self.sub_model(k).named_children()]))

    def kept_layers(self, k: int) -> list[str]:
        """The network's own scored layers in sub-model k (head layers are scored but dropped)."""
        return [n for n in scored_layer_names(self.sub_model(k)) if n in self.blocks[k]]

    def names(self) -> list[str]:
        """Block names: block1 .. blockK−1, tail."""
        return [f"block{k + 1}" for k in range(len(self.blocks) - 1)] + ["tail"]

    def state(self) -> dict[str, State]:
        """Detached copies of the network's and the heads' weights."""
        return {"model": clone_state(self.model), "heads": clone_state(self.heads)}

    def load_state(self, state: dict[str, State]) -> None:
        """Inverse of `state`."""
        self.model.load_state_dict(state["model"])
        self.heads.load_state_dict(state["heads"])

    def eval(self) -> "Decoupled":
        """Network and heads in eval mode."""
        self.model.eval()
        self.heads.eval()
        return self


@dataclass
class DecoupledTraining:
    """What `train_decoupled` returns: per epoch, each sub-model's train loss/accuracy and the
    end-to-end network's validation accuracy; the weights of the best validation loss are loaded."""

    training: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0


def _epoch(net: Decoupled, data: TensorData, cfg: TrainConfig, optimizers: list, generator: torch.Generator,
           augment: bool, train_blocks: bool, bar: tqdm) -> list[dict[str, float]]:
    """One greedy pass: each sub-model learns from its own loss on its detached input."""
    device = next(net.model.parameters()).device
    subs = [(net.block(k), net.heads[k] if k < len(net.heads) else None) for k in range(len(net.blocks))]
    net.model.train(train_blocks)
    net.heads.train()
    sums = [[0.0, 0] for _ in subs]
    for x, y in iterate_batches(data, cfg.batch_size, shuffle=True, generator=generator, augment=augment):
        h, y = x.to(device), y.to(device)
        for k, ((block, head), opt) in enumerate(zip(subs, optimizers)):
            last = head is None
            if train_blocks:
                h = block(h.detach())
            else:
                with torch.no_grad():
                    h = block(h)
            if last and not train_blocks:
                break  # an end-to-end network's tail is already its classifier
            logits = h if last else head(h)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums[k][0] += float(loss.detach()) * len(y)
            sums[k][1] += int((logits.argmax(dim=1) == y).sum())
        bar.update(1)
    n = len(data)
    return [{"loss": s[0] / n, "accuracy": s[1] / n} for s in sums]


def train_decoupled(net: Decoupled, train_data: TensorData, val_data: TensorData, cfg: TrainConfig,
                    training: str = "decoupled", augment: bool = False, device: str | torch.device | None = None,
                    progress: bool = True) -> DecoupledTraining:
    """Train greedily with one optimizer per sub-model (block + head; the tail on its own), or,
    with training='end-to-end', only the heads on the frozen blocks of an already trained network.

    The network's weights (and the heads') of the lowest end-to-end validation loss are kept
    (the last epoch without validation data).
    """
    if training not in TRAINING:
        raise CritneuronError(f"training must be one of {TRAINING}, got {training!r}")
    train_blocks = training == "decoupled"
    dev = resolve_device(device)
    net.model.to(dev)
    net.heads.to(dev)
    params = [list(net.block(k).parameters()) if train_blocks else [] for k in range(len(net.blocks))]
    for k, head in enumerate(net.heads):
        params[k] += list(head.parameters())
    optimizers = [make_optimizer(nn.ParameterList(p), cfg) if p else None for p in params]
    generator = torch.Generator().manual_seed(cfg.seed)
    result, best_loss, best = DecoupledTraining(training), math.inf, net.state()
    start = time.perf_counter()
    with tqdm(total=math.ceil(len(train_data) / cfg.batch_size) * cfg.epochs, desc=f"train ({training})",
              unit="batch", disable=not progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            subs = _epoch(net, train_data, cfg, optimizers, generator, augment, train_blocks, bar)
            val_acc, val_loss = evaluate(net.model, val_data) if len(val_data) else (None, None)
            result.history.append({"epoch": epoch, "sub_models": subs, "val_accuracy": val_acc, "val_loss": val_loss})
            if val_loss is None or val_loss < best_loss:
                best_loss = math.inf if val_loss is None else val_loss
                best, result.best_epoch = net.state(), epoch
    net.load_state(best)
    net.eval()
    result.train_seconds = time.perf_counter() - start
    return result


def head_accuracies(net: Decoupled, data: TensorData) -> list[float]:
    """Test accuracy of input → block k → head k for every head, then of the whole network."""
    return [evaluate(net.classifier(k), data)[0] for k in range(len(net.heads))] + [evaluate(net.model, data)[0]]
