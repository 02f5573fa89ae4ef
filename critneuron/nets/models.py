"""Seeded networks from the catalog's architectures (`build_model`), their initialisation, and
`evaluating`. Input 3×32×32, 10 classes. No training defaults here."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn

from critneuron.catalog import model_names, model_record
from critneuron.catalog.architectures import INPUT_SHAPE, NUM_CLASSES
from critneuron.errors import ConfigError

__all__ = ["INPUT_SHAPE", "NUM_CLASSES", "build_model", "conv_bias_bound", "evaluating", "init_weights",
           "scored_layer_names"]


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """The authors' `weights_init`, every draw from `generator`: Conv2d weights ~ N(0, 0.02) and
    biases PyTorch's default U(±1/√fan_in) (their code leaves conv biases as constructed); Linear
    weights Kaiming-normal, biases 0; affine BatchNorm weights ~ N(1, 0.02), biases 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
            if module.bias is not None:
                bound = conv_bias_bound(module)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
            nn.init.normal_(module.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(module.bias)


def conv_bias_bound(conv: nn.Conv2d) -> float:
    """1/√fan_in: the half-width of PyTorch's default uniform initialisation of a conv bias."""
    fan_in = conv.weight[0].numel()
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


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
