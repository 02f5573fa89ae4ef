"""Tests of critneuron.pruning.baselines: every scorer's values, determinism, and masks at fixed counts."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from critneuron.pruning.baselines import (
    BASELINES,
    RANDOM_AUTHORS,
    activation_scores,
    baseline_masks,
    baseline_scores,
    critical_scores,
    magnitude_scores,
    random_authors_masks,
    random_scores,
    relu_after,
    snip_authors_masks,
    snip_authors_scores,
    snip_batch,
    snip_scores,
)
from critneuron.config import DataConfig
from critneuron.errors import ConfigError, CritneuronError, UnsupportedLayerError
from critneuron.mip.scores import Scores
from critneuron.nets.data import TensorData, load_split
from critneuron.nets.models import build_model, scored_layer_names
from critneuron.pruning.masks import Masks, masks_from_scores, unit_count

SCORERS = ["random", "magnitude-l1", "magnitude-l2", "snip", "activation"]


def hand_net() -> nn.Sequential:
    """x (2) -> fc1 (3) -> relu1 -> out (2), with hand-set weights.

        fc1.weight = [[1, -2], [3, 0], [-1, -1]],  fc1.bias = [0, -1, 0.5]
    """
    net = nn.Sequential(OrderedDict([("fc1", nn.Linear(2, 3)), ("relu1", nn.ReLU()), ("out", nn.Linear(3, 2))]))
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, -1.0]]))
        net.fc1.bias.copy_(torch.tensor([0.0, -1.0, 0.5]))
    return net


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def trained_like(name: str) -> nn.Sequential:
    """A real model with non-zero biases and running stats, in train mode (scorers must not care)."""
    model = build_model(name, width=1 / 16 if name == "vgg16" else 1.0, seed=2)
    with torch.no_grad():
        for module in model.children():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.bias.uniform_(-0.1, 0.3)
        model(batch(16, seed=9)[0])
    return model


@pytest.mark.parametrize("method", SCORERS)
@pytest.mark.parametrize("name", ["lenet5", "vgg16"])
def test_scorers_cover_scored_layers_and_are_deterministic(name: str, method: str) -> None:
    model = trained_like(name)
    x, y = batch()
    first = baseline_scores(method, model, seed=4, x=x, y=y)
    second = baseline_scores(method, model, seed=4, x=x, y=y)
    assert list(first.layers) == scored_layer_names(model)
    for layer, values in first.layers.items():
        assert values.shape == (unit_count(getattr(model, layer)),)
        assert np.all(np.isfinite(values)) and np.array_equal(values, second.layers[layer])
    assert model.training and all(p.grad is None for p in model.parameters())


def test_random_scores_depend_on_the_seed_only() -> None:
    model = build_model("fc3")
    a, b, c = random_scores(model, 1), random_scores(build_model("fc3", seed=5), 1), random_scores(model, 2)
    assert all(np.array_equal(a.layers[k], b.layers[k]) for k in a.layers)
    assert not np.array_equal(a.layers["fc1"], c.layers["fc1"])


def test_magnitude_scores_by_hand() -> None:
    net = hand_net()
    assert np.allclose(magnitude_scores(net, 1).layers["fc1"], [3, 3, 2])
    assert np.allclose(magnitude_scores(net, 2).layers["fc1"], [math.sqrt(5), 3, math.sqrt(2)])
    conv = nn.Sequential(
        OrderedDict([("conv1", nn.Conv2d(1, 2, 2)), ("flatten", nn.Flatten()), ("fc", nn.Linear(2, 1))])
    )
    with torch.no_grad():
        conv.conv1.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2))
    assert np.allclose(magnitude_scores(conv, 1).layers["conv1"], [4, 8])
    with pytest.raises(ConfigError, match="p must be 1 or 2, got 3"):
        magnitude_scores(net, 3)


def test_snip_equals_the_mask_derivative() -> None:
    """SNIP: sum over a unit's weights of |dL/dm| for the loss of the net with weights w*m at m = 1."""
    model = trained_like("lenet5")
    x, y = batch(6)
    net = model.eval()
    params = dict(net.named_parameters())
    names = [f"{k}.weight" for k in scored_layer_names(net)]
    masks = {k: torch.ones_like(params[k], requires_grad=True) for k in names}
    masked = {k: v * masks[k] if k in masks else v for k, v in params.items()}
    loss = F.cross_entropy(functional_call(net, masked, (x,)), y)
    grads = torch.autograd.grad(loss, list(masks.values()))
    got = snip_scores(model, x, y)
    for (key, _), grad in zip(masks.items(), grads):
        expected = grad.abs().flatten(1).sum(dim=1).double().numpy()
        assert np.allclose(got.layers[key.removesuffix(".weight")], expected, rtol=1e-5, atol=1e-9)


def test_activation_scores_by_hand() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # fc1(x) = [[1, 2, -0.5], [-2, -1, -0.5]] -> relu -> mean over the batch
    assert np.allclose(activation_scores(hand_net(), x).layers["fc1"], [0.5, 1.0, 0.0])


def test_activation_scores_vgg_use_the_relu_after_batchnorm() -> None:
    model = trained_like("vgg16").eval()
    relus = relu_after(model)
    assert relus["conv1"] == "relu1" and relus["conv13"] == "relu13" and relus["fc1"] == "relu14"
    x, _ = batch()
    expected = torch.relu(model.bn1(model.conv1(x))).mean(dim=(0, 2, 3))
    assert np.allclose(activation_scores(model, x).layers["conv1"], expected.detach().numpy(), atol=1e-6)


def test_relu_after_requires_a_relu_between_scored_layers() -> None:
    net = nn.Sequential(OrderedDict([("fc1", nn.Linear(2, 3)), ("fc2", nn.Linear(3, 2)), ("relu", nn.ReLU()),
                                     ("out", nn.Linear(2, 2))]))
    with pytest.raises(UnsupportedLayerError, match="no ReLU between fc1 and fc2"):
        relu_after(net)


def test_critical_prunes_the_top_scored_units() -> None:
    mip = Scores(layers={"fc1": np.array([0.9, 0.1, 0.5])}, method="mip")
    assert np.array_equal(critical_scores(mip).layers["fc1"], [-0.9, -0.1, -0.5])
    like = masks_from_scores(mip, 0.2)  # prunes unit 1
    assert baseline_masks("critical", hand_net(), like, scores=mip).kept == {"fc1": [1, 2]}


@pytest.mark.parametrize("method", BASELINES)
@pytest.mark.parametrize("name", ["lenet5", "vgg16"])
def test_baseline_masks_prune_as_many_units_per_layer_as_the_reference(name: str, method: str) -> None:
    model = trained_like(name)
    x, y = batch()
    reference = Scores(layers={k: v + 0.2 for k, v in random_scores(model, 11).layers.items()}, method="mip")
    like = masks_from_scores(reference, 0.6)
    kwargs = dict(seed=3, x=x, y=y, scores=reference)
    masks = baseline_masks(method, model, like, **kwargs)
    assert masks.n_pruned() == like.n_pruned() and masks.sizes == like.sizes
    assert masks == baseline_masks(method, model, like, **kwargs)
    assert masks != like  # a different choice of units at the same counts


def test_random_baseline_masks_change_with_the_seed() -> None:
    model = build_model("fc3")
    like = Masks(kept={"fc1": list(range(150)), "fc2": list(range(50))}, sizes={"fc1": 300, "fc2": 100})
    assert baseline_masks("random", model, like, seed=0) != baseline_masks("random", model, like, seed=1)


def test_baseline_scores_name_missing_inputs_and_unknown_methods() -> None:
    model = hand_net()
    with pytest.raises(ConfigError, match="baseline 'snip' needs x, y"):
        baseline_scores("snip", model)
    with pytest.raises(ConfigError, match="baseline 'critical' needs scores"):
        baseline_scores("critical", model)
    with pytest.raises(ConfigError, match="baseline must be one of 'random', .* got 'obd'"):
        baseline_scores("obd", model)


def test_snip_batch_is_a_seeded_minibatch_of_128() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (300, 1, 32, 32), dtype=torch.uint8, generator=generator)
    train = TensorData(images, torch.arange(300) % 10, torch.arange(300), "mnist", "train", "synthetic")
    x, y = snip_batch(train, seed=1)
    assert x.shape == (128, 3, 32, 32) and y.shape == (128,)
    assert torch.equal(x, snip_batch(train, seed=1)[0]) and not torch.equal(y, snip_batch(train, seed=2)[1])
    assert len(set(y.tolist())) == 10


def test_snip_authors_scores_match_their_port() -> None:
    """Xavier-normal weights (seeded), biases as given, nll_loss on raw logits, |dL/dm| summed per
    unit and normalised by the total over every Conv2d/Linear layer, the output layer included."""
    model = build_model("lenet5", seed=5)
    x, y = batch(16)
    got = snip_authors_scores(model, x, y, seed=7)
    net = build_model("lenet5", seed=5)
    generator = torch.Generator().manual_seed(7)
    names = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    with torch.no_grad():
        for name in names:
            nn.init.xavier_normal_(getattr(net, name).weight, generator=generator)
    params = dict(net.named_parameters())
    masks = {k: torch.ones_like(params[f"{k}.weight"], requires_grad=True) for k in names}
    masked = {k: v * masks[k.removesuffix(".weight")] if k.removesuffix(".weight") in masks else v
              for k, v in params.items()}
    loss = -functional_call(net, masked, (x,)).gather(1, y[:, None]).mean()  # nll_loss on logits
    grads = dict(zip(names, torch.autograd.grad(loss, list(masks.values()))))
    sums = {k: g.abs().flatten(1).sum(dim=1).double() for k, g in grads.items()}
    total = sum(v.sum() for v in sums.values())
    assert list(got.layers) == names[:-1] and got.method == "snip-authors"
    for name in names[:-1]:
        assert np.allclose(got.layers[name], (sums[name] / total).numpy(), rtol=1e-5, atol=1e-12)
    assert np.allclose(got.provenance["output_scores"], (sums["fc3"] / total).numpy(), rtol=1e-5, atol=1e-12)
    assert not np.allclose(got.layers["fc1"], snip_authors_scores(model, x, y, seed=8).layers["fc1"])
    assert torch.equal(model.conv1.weight, build_model("lenet5", seed=5).conv1.weight)  # a copy was changed


def test_snip_authors_masks_keep_45_percent_of_all_units_globally() -> None:
    model = build_model("lenet5", seed=0)
    x, y = batch(32)
    scores = snip_authors_scores(model, x, y, seed=1)
    masks = snip_authors_masks(model, x, y, seed=1)
    every = np.concatenate([*scores.layers.values(), scores.provenance["output_scores"]])
    assert len(every) == 6 + 16 + 120 + 84 + 10
    threshold = np.sort(every)[-math.floor(0.45 * len(every))]
    n_output_kept = int((np.asarray(scores.provenance["output_scores"]) >= threshold).sum())
    assert sum(len(k) for k in masks.kept.values()) + n_output_kept == math.floor(0.45 * 236)  # no ties
    for name, values in scores.layers.items():
        assert all(values[i] >= threshold for i in masks.kept[name])
        assert all(values[i] < threshold for i in masks.pruned(name))
    assert masks == snip_authors_masks(model, x, y, seed=1)
    assert sum(len(k) for k in snip_authors_masks(model, x, y, seed=1, keep=0.9).kept.values()) > 200
    with pytest.raises(ConfigError, match="keep ratio"):
        snip_authors_masks(model, x, y, keep=0.0)


def test_snip_authors_runs_on_a_real_mnist_batch(shared_data_root) -> None:
    train = load_split(DataConfig(dataset="mnist", root=str(shared_data_root), subset=2000), "train")
    x, y = snip_batch(train, seed=0)
    masks = snip_authors_masks(build_model("lenet5", seed=0), x, y, seed=0)
    kept = sum(len(k) for k in masks.kept.values())
    assert 0 < kept <= math.floor(0.45 * 236) and masks.sizes == {"conv1": 6, "conv2": 16, "fc1": 120, "fc2": 84}


def test_random_authors_draws_with_replacement_among_positive_scores() -> None:
    scores = Scores(layers={"fc1": np.array([0.0, 0.5, 0.0, 0.9, 0.2, 0.0]), "fc2": np.array([0.3, 0.0, 0.4])},
                    method="mip")
    like = masks_from_scores(scores, 0.1)  # prunes 3 units of fc1 and 1 of fc2
    draws = [random_authors_masks(scores, like, seed) for seed in range(40)]
    for masks in draws:
        for name in like.sizes:
            assert set(masks.pruned(name)) <= set(np.flatnonzero(scores.layers[name] > 0))
            assert 1 <= len(masks.pruned(name)) <= like.n_pruned()[name]
    assert any(len(m.pruned("fc1")) < 3 for m in draws)  # repeats: fewer units than the MIP prunes
    assert len({tuple(m.pruned("fc1")) for m in draws}) > 1
    assert draws[3] == random_authors_masks(scores, like, 3)
    assert baseline_masks(RANDOM_AUTHORS, hand_net(), like, seed=3, scores=scores) == draws[3]
    with pytest.raises(ConfigError, match="'random-authors' needs scores"):
        baseline_masks(RANDOM_AUTHORS, hand_net(), like)
    dead = Scores(layers={"fc1": np.zeros(6), "fc2": np.array([0.3, 0.0, 0.4])}, method="mip")
    with pytest.raises(CritneuronError, match="fc1 must lose 6 units but none scored > 0"):
        random_authors_masks(dead, masks_from_scores(dead, 0.1), 0)
