"""The paper's architectures (fc3, fc4, lenet5, vgg16) as named layer lists for a flat
`nn.Sequential`: 3×32×32 input, 10 classes. Registered as catalog records in `catalog.paper`."""

from __future__ import annotations

from torch import nn

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


def fc3(width: float) -> Layers:
    return [("flatten", nn.Flatten()), *_dense((3072, 300, 100, NUM_CLASSES))]


def fc4(width: float) -> Layers:
    return [("flatten", nn.Flatten()), *_dense((3072, 200, 100, 100, NUM_CLASSES))]


def lenet5(width: float) -> Layers:
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


def vgg16(width: float) -> Layers:
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
