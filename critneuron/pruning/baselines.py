"""Baseline neuron scorers (random, critical, magnitude, SNIP, activation) and their masks.

Every scorer returns `Scores` keyed by `scored_layer_names(model)`, one value per Linear neuron
or Conv2d output channel, higher = more important, deterministic for a given seed and batch.
Baseline masks prune the same number of units per layer as a reference mask (usually the
MIP's), so only the choice of units differs.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critneuron.errors import ConfigError, UnsupportedLayerError
from critneuron.nets.data import TensorData, iterate_batches
from critneuron.pruning.masks import Masks, masks_with_counts, unit_count
from critneuron.mip.scores import Scores
from critneuron.nets.models import scored_layer_names

BASELINES = ("random", "critical", "magnitude-l1", "magnitude-l2", "snip", "activation")
SNIP_BATCH_SIZE = 128


def _scored(model: nn.Sequential) -> dict[str, nn.Module]:
    return {name: getattr(model, name) for name in scored_layer_names(model)}


def random_scores(model: nn.Sequential, seed: int) -> Scores:
    """Uniform [0, 1) scores from `numpy.random.default_rng(seed)`, layer by layer in model order."""
    rng = np.random.default_rng(seed)
    layers = {name: rng.random(unit_count(module)) for name, module in _scored(model).items()}
    return Scores(layers=layers, method="random", provenance={"seed": seed})


def magnitude_scores(model: nn.Sequential, p: int = 1) -> Scores:
    """The L`p` norm of each unit's incoming weights (Linear row, Conv2d output-channel kernel)."""
    if p not in (1, 2):
        raise ConfigError(f"magnitude norm p must be 1 or 2, got {p!r}")
    layers = {
        name: module.weight.detach().flatten(1).norm(p=p, dim=1).double().cpu().numpy()
        for name, module in _scored(model).items()
    }
    return Scores(layers=layers, method=f"magnitude-l{p}", provenance={"p": p})


def snip_scores(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> Scores:
    """SNIP connection sensitivity summed per unit: sum_j |w_j * dL/dw_j| over its incoming weights.

    |dL/dm_w| of SNIP's connection mask m (at m = 1) is |w * dL/dw|. L is the real cross-entropy
    (NLL of log-softmax) on one training minibatch of 128 (`snip_batch`), as in the authors' port;
    the network is evaluated in eval mode (BatchNorm running stats) on a copy of `model`.
    """
    net = copy.deepcopy(model).eval()
    modules = _scored(net)
    device = next(net.parameters()).device
    loss = F.nll_loss(F.log_softmax(net(x.to(device)), dim=1), y.to(device))
    grads = torch.autograd.grad(loss, [module.weight for module in modules.values()])
    layers = {
        name: (module.weight * grad).abs().flatten(1).sum(dim=1).detach().double().cpu().numpy()
        for (name, module), grad in zip(modules.items(), grads)
    }
    return Scores(layers=layers, method="snip", provenance={"batch_size": len(y)})


def snip_batch(
    train: TensorData, seed: int = 0, batch_size: int = SNIP_BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first minibatch of the training split shuffled with `seed` (SNIP's one batch)."""
    generator = torch.Generator().manual_seed(seed)
    return next(iterate_batches(train, batch_size, shuffle=True, generator=generator))


def relu_after(model: nn.Sequential) -> dict[str, str]:
    """For each scored layer, the name of the first ReLU after it (after BatchNorm in VGG)."""
    scored, found, pending = scored_layer_names(model), {}, None
    for name, module in model.named_children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if pending is not None:
                raise UnsupportedLayerError(f"no ReLU between {pending} and {name}")
            pending = name if name in scored else None
        elif isinstance(module, nn.ReLU) and pending is not None:
            found[pending], pending = name, None
    return found


def activation_scores(model: nn.Sequential, x: torch.Tensor) -> Scores:
    """Mean post-ReLU activation of each unit over the batch `x` (and positions, for channels), eval mode."""
    net = copy.deepcopy(model).eval()
    relus = relu_after(net)
    means: dict[str, torch.Tensor] = {}

    def record(layer: str) -> Callable:
        return lambda _m, _i, out: means.__setitem__(layer, out.transpose(0, 1).flatten(1).mean(dim=1))

    handles = [getattr(net, relu).register_forward_hook(record(layer)) for layer, relu in relus.items()]
    with torch.no_grad():
        net(x.to(next(net.parameters()).device))
    for handle in handles:
        handle.remove()
    layers = {name: means[name].double().cpu().numpy() for name in relus}
    return Scores(layers=layers, method="activation", provenance={"batch_size": len(x)})


def critical_scores(scores: Scores) -> Scores:
    """Negated scores: pruning the lowest of these prunes the highest-scored (most critical) units."""
    layers = {name: -np.asarray(values, dtype=float) for name, values in scores.layers.items()}
    return Scores(layers=layers, method="critical", provenance={"negated": scores.method})


def baseline_scores(
    method: str,
    model: nn.Sequential,
    *,
    seed: int = 0,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    scores: Scores | None = None,
) -> Scores:
    """Scores of baseline `method` (one of `BASELINES`).

    random needs `seed`; snip needs `x`, `y` (`snip_batch`); activation needs `x`;
    critical needs the reference `scores` (the MIP's) and prunes their top-scored units.
    """
    scorers: dict[str, tuple[dict, Callable[[], Scores]]] = {
        "random": ({}, lambda: random_scores(model, seed)),
        "critical": ({"scores": scores}, lambda: critical_scores(scores)),
        "magnitude-l1": ({}, lambda: magnitude_scores(model, 1)),
        "magnitude-l2": ({}, lambda: magnitude_scores(model, 2)),
        "snip": ({"x": x, "y": y}, lambda: snip_scores(model, x, y)),
        "activation": ({"x": x}, lambda: activation_scores(model, x)),
    }
    if method not in scorers:
        raise ConfigError(f"baseline must be one of {', '.join(map(repr, BASELINES))}, got {method!r}")
    needed, scorer = scorers[method]
    missing = [key for key, value in needed.items() if value is None]
    if missing:
        raise ConfigError(f"baseline {method!r} needs {', '.join(missing)}")
    return scorer()


def baseline_masks(
    method: str,
    model: nn.Sequential,
    like: Masks,
    *,
    seed: int = 0,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    scores: Scores | None = None,
) -> Masks:
    """The mask of baseline `method` pruning as many units per layer as `like` (e.g. the MIP mask)."""
    chosen = baseline_scores(method, model, seed=seed, x=x, y=y, scores=scores)
    counts = like.n_pruned()
    layers = {name: chosen.layers[name] for name in counts}
    return masks_with_counts(Scores(layers=layers, method=chosen.method), counts)
