"""The paper's networks (fc3, fc4, lenet5, vgg16) as flat `nn.Sequential`s with meaningful child
names, and the registry `build_model`. Input 3×32×32, 10 classes. No training defaults here.

May import: config.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Callable, Iterator

import torch
from torch import nn

from critneuron.config import ConfigError

NUM_CLASSES = 10
INPUT_SHAPE = (3, 32, 32)
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

Layers = list[tuple[str, nn.Module]]


def _dense(sizes: tuple[int, ...]) -> Layers:
    """fc1, relu1, fc2, relu2, ..., fcK: Linear layers of `sizes` with ReLUs between them."""
    layers: Layers = []
    for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        if k > 1:
            layers.append((f"relu{k - 1}", nn.ReLU()))
        layers.append((f"fc{k}", nn.Linear(n_in, n_out)))
    return layers


def _fc3(width: float) -> Layers:
    return [("flatten", nn.Flatten()), *_dense((3072, 300, 100, NUM_CLASSES))]


def _fc4(width: float) -> Layers:
    return [("flatten", nn.Flatten()), *_dense((3072, 200, 100, 100, NUM_CLASSES))]


def _lenet5(width: float) -> Layers:
    return [
        ("conv1", nn.Conv2d(3, 6, 5)), ("relu1", nn.ReLU()), ("pool1", nn.AvgPool2d(2)),
        ("conv2", nn.Conv2d(6, 16, 5)), ("relu2", nn.ReLU()), ("pool2", nn.AvgPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(400, 120)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(120, 84)), ("relu4", nn.ReLU()),
        ("fc3", nn.Linear(84, NUM_CLASSES)),
    ]


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _vgg16(width: float) -> Layers:
    """13 × (conv, BatchNorm without affine, ReLU), an average pool after each block, then
    fc1 + BatchNorm + ReLU and fc2. `width` scales every conv channel count and fc1's 512."""
    layers: Layers = []
    n_in, k = INPUT_SHAPE[0], 0
    for j, block in enumerate(VGG16_BLOCKS, start=1):
        for channels in block:
            k += 1
            n_out = _scaled(channels, width)
            layers += [
                (f"conv{k}", nn.Conv2d(n_in, n_out, 3, padding=1)),
                (f"bn{k}", nn.BatchNorm2d(n_out, affine=False)),
                (f"relu{k}", nn.ReLU()),
            ]
            n_in = n_out
        layers.append((f"pool{j}", nn.AvgPool2d(2)))
    hidden = _scaled(512, width)
    return layers + [
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(n_in, hidden)),
        (f"bn{k + 1}", nn.BatchNorm1d(hidden, affine=False)),
        (f"relu{k + 1}", nn.ReLU()),
        ("fc2", nn.Linear(hidden, NUM_CLASSES)),
    ]


_BUILDERS: dict[str, Callable[[float], Layers]] = {
    "fc3": _fc3, "fc4": _fc4, "lenet5": _lenet5, "vgg16": _vgg16,
}
MODEL_NAMES = tuple(_BUILDERS)
WIDTH_SCALABLE = ("vgg16",)


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
    if name not in _BUILDERS:
        raise ConfigError(f"model must be one of {', '.join(map(repr, MODEL_NAMES))}, got {name!r}")
    if width <= 0 or (width != 1.0 and name not in WIDTH_SCALABLE):
        raise ConfigError(
            f"width must be > 0 and applies to {', '.join(WIDTH_SCALABLE)} only, got {width!r} for {name}"
        )
    model = nn.Sequential(OrderedDict(_BUILDERS[name](width)))
    init_weights(model, torch.Generator().manual_seed(seed))
    return model


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
