"""Tests of critneuron.pruning.compact: the compact network equals the masked one, and is as small as counted."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from critneuron.pruning.compact import BorderBiasConv2d, build_compact, compact_model, load_compact, save_compact
from critneuron.errors import CompactionError, ConfigError, UnsupportedLayerError
from critneuron.nets.models import build_model
from critneuron.pruning.masks import (
    Masks,
    apply_masks,
    count_params_flops,
    freeze_masks,
    masks_from_scores,
    pruning_stats,
)
from critneuron.mip.scores import Scores
from critneuron.nets.models import scored_layer_names

MODELS = {"fc3": 1.0, "lenet5": 1.0, "vgg16": 1 / 16}


def prepared(name: str) -> nn.Sequential:
    """A real model with non-zero biases and, for vgg16, non-trivial BatchNorm running stats; eval mode."""
    model = build_model(name, width=MODELS[name], seed=3)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in model.children():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.3)
        model.train()
        for _ in range(3):
            model(2 * torch.rand(16, 3, 32, 32, generator=generator) - 0.5)
    return model.eval()


def random_masks(model: nn.Sequential, seed: int, threshold: float = 0.4) -> Masks:
    rng = np.random.default_rng(seed)
    layers = {n: rng.random(getattr(model, n).weight.shape[0]) for n in scored_layer_names(model)}
    return masks_from_scores(Scores(layers=layers, method="random"), threshold)


def inputs(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def max_gap(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


@pytest.mark.parametrize("bias", ["keep-bias", "remove"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compact_equals_masked(name: str, bias: str) -> None:
    model = prepared(name)
    masks = random_masks(model, seed=0)
    masked, compact = apply_masks(model, masks, bias).eval(), compact_model(model, masks, bias)[0]
    assert [n for n, _ in compact.named_children()] == [n for n, _ in model.named_children()]
    assert sum(masks.n_pruned().values()) > 0
    for layer, kept in masks.kept.items():
        assert getattr(compact, layer).weight.shape[0] == len(kept)
    assert max_gap(masked, compact, inputs()) <= 1e-5
    assert max_gap(masked, model, inputs()) > 1e-3  # pruning did change the logits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compact_sizes_match_pruning_stats(name: str) -> None:
    model = prepared(name)
    masks = random_masks(model, seed=1)
    compact, _ = compact_model(model, masks)
    stats = pruning_stats(model, masks)
    assert sum(p.numel() for p in compact.parameters()) == stats["params_compact"] < stats["params_dense"]
    assert count_params_flops(compact) == (stats["params_compact"], stats["flops_compact"])


def test_lenet5_compact_parameter_count_by_hand() -> None:
    model = prepared("lenet5")
    compact, _ = compact_model(model, Masks(kept={"conv1": [0, 2, 3, 5]}, sizes={"conv1": 6}))
    assert sum(p.numel() for p in compact.parameters()) == 4 * 76 + (16 * 4 * 25 + 16) + 48120 + 10164 + 850


def test_vgg_border_bias_map_is_needed_and_exact() -> None:
    model = prepared("vgg16")
    masks = random_masks(model, seed=0)
    compact, arch = compact_model(model, masks, "keep-bias")
    maps = [m.bias_map for m in compact.children() if isinstance(m, BorderBiasConv2d)]
    assert maps and sum(e["type"] == "BorderBiasConv2d" for e in arch["layers"]) == len(maps)
    big = max(maps, key=lambda t: t.shape[-1])
    assert not torch.allclose(big[:, 0, 0], big[:, 1, 1])  # the border differs from the interior


def test_fully_pruned_layer_is_removed_and_folded() -> None:
    model = prepared("fc3")
    masks = Masks(kept={"fc1": [], "fc2": [3, 50]}, sizes={"fc1": 300, "fc2": 100})
    compact, _ = compact_model(model, masks)
    assert compact.fc1.weight.shape == (0, 3072) and compact.fc2.weight.shape == (2, 0)
    masked = apply_masks(model, masks).eval()
    assert max_gap(masked, compact, inputs()) <= 1e-5


def test_a_convolution_that_keeps_no_channel_is_a_named_error() -> None:
    model = prepared("lenet5")
    masks = random_masks(model, seed=6)
    masks = Masks(kept={**masks.kept, "conv2": []}, sizes=masks.sizes)
    with pytest.raises(CompactionError, match=r"\['conv2'\] keep none of their units"):
        compact_model(model, masks)


def test_frozen_model_compacts_like_the_plain_one() -> None:
    model = prepared("lenet5")
    masks = random_masks(model, seed=6)
    frozen = apply_masks(model, masks, "remove")
    freeze_masks(frozen, masks, "remove")
    with torch.no_grad():
        frozen.conv1.parametrizations.weight.original.add_(1.0)  # what retraining does to masked entries
    expected = apply_masks(model, masks, "remove")
    with torch.no_grad():
        expected.conv1.weight.add_(1.0)
    expected = apply_masks(expected, masks, "remove").eval()
    compact, _ = compact_model(frozen, masks, "remove")
    assert max_gap(expected, compact, inputs()) <= 1e-5


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = prepared(name)
    compact, arch = compact_model(model, random_masks(model, seed=2), "remove")
    save_compact(tmp_path / "net", compact, arch)
    loaded, loaded_arch = load_compact(tmp_path / "net")
    assert loaded_arch == arch and sorted(p.name for p in (tmp_path / "net").iterdir()) == [
        "arch.json", "state_dict.pt"]
    assert max_gap(loaded, compact, inputs()) == 0.0


def test_compact_rejects_unsupported_layers() -> None:
    model = nn.Sequential(
        OrderedDict([("fc1", nn.Linear(4, 3)), ("act", nn.Tanh()), ("fc2", nn.Linear(3, 2))])
    )
    with pytest.raises(UnsupportedLayerError, match=r"cannot compact act \(Tanh\); supported: Linear"):
        compact_model(model, Masks(kept={"fc1": [0]}, sizes={"fc1": 3}), input_shape=(4,))
    padded_pool = nn.Sequential(
        OrderedDict([("conv1", nn.Conv2d(1, 2, 3)), ("relu1", nn.ReLU()),
                     ("pool1", nn.AvgPool2d(2, padding=1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(32, 2))])
    )
    with torch.no_grad():
        padded_pool.conv1.bias.fill_(1.0)
    with pytest.raises(UnsupportedLayerError, match="pool1: constant channels do not stay constant"):
        compact_model(padded_pool, Masks(kept={"conv1": [0]}, sizes={"conv1": 2}), input_shape=(1, 8, 8))


def test_build_compact_rejects_unknown_layer_type() -> None:
    arch = {"input_shape": [4], "dtype": "float32", "layers": [{"name": "a", "type": "GELU", "kwargs": {}}]}
    with pytest.raises(ConfigError, match=r"unknown layer types \['GELU'\]"):
        build_compact(arch)


def test_compact_equals_masked_on_mnist(lenet5_mnist, mnist_subset: dict) -> None:
    """Real MNIST test images (skipped without the data): the trained LeNet-5 and a small VGG."""
    x = mnist_subset["test"].x(torch.arange(256))
    for model in (lenet5_mnist.model.eval(), prepared("vgg16")):
        masks = random_masks(model, seed=4)
        for bias in ("keep-bias", "remove"):
            compact, _ = compact_model(model, masks, bias)
            masked = apply_masks(model, masks, bias).eval()
            assert max_gap(masked, compact, x) <= 1e-5
