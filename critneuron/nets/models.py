"""Seeded networks from the catalog's architectures (`build_model`), their initialisation, and
`evaluating`. Input 3×32×32, 10 classes. No training defaults here."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn

from critneuron.catalog import model_names, model_record
from critneuron.catalog.architectures import INPUT_SHAPE, NUM_CLASSES
from critneuron.errors import ConfigError

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "build_model", "evaluating", "init_weights", "scored_layer_names"]


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Conv weights ~ N(0, 0.02), Linear weights Kaiming-normal; all biases zero."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, generator=generator)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(name: str, width: float = 1.0, seed: int = 0) -> nn.Sequential:
    """A freshly initialised network (initialisation seeded by `seed`).

    Example:
        >>> model = build_model("lenet5")
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    record = model_record(name)
    if width <= 0 or (width != 1.0 and not record.width_scalable):
        scalable = ", ".join(n for n in model_names() if model_record(n).width_scalable)
        raise ConfigError(f"width must be > 0 and applies to {scalable} only, got {width!r} for {name}")
    model = nn.Sequential(OrderedDict(record.layers(width)))
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


def scored_layer_names(model: nn.Sequential) -> list[str]:
    """Names of the modules that get importance scores: every Conv2d and every Linear but the last."""
    linears = [name for name, m in model.named_children() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    return [
        name
        for name, m in model.named_children()
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and name != last)
    ]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put `model` in eval mode, restoring every submodule's training flag afterwards
    (not the container's flag on all of them: a container built over shared modules, e.g. a block
    and its head, must not switch the network it shares them with back to training)."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags.items():
            module.train(flag)
