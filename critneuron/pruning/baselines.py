"""Baseline neuron scorers (random, critical, magnitude, SNIP, activation) and their masks.

Every scorer returns `Scores` keyed by `scored_layer_names(model)`, one value per Linear neuron
or Conv2d output channel, higher = more important, deterministic for a given seed and batch.
The `BASELINES` masks prune exactly as many units per layer as a reference mask (usually the
MIP's), so only the choice of units differs; "snip" there is ours (neuron-level SNIP on the
network it is given, at the MIP's counts). The authors' own rules are separate and named so:
`random_authors_masks` ("random-authors": draws with replacement among the units with a MIP
score above 0, so it may prune fewer) and `snip_authors_masks` ("snip-authors": their SNIP
port, with its own keep rule of 45 % of all neurons).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from critneuron.errors import ConfigError, CritneuronError, UnsupportedLayerError
from critneuron.nets.data import TensorData, iterate_batches
from critneuron.pruning.masks import Masks, masks_with_counts, unit_count
from critneuron.mip.scores import Scores
from critneuron.nets.models import scored_layer_names

BASELINES = ("random", "critical", "magnitude-l1", "magnitude-l2", "snip", "activation")
RANDOM_AUTHORS = "random-authors"
SNIP_AUTHORS = "snip-authors"
SNIP_BATCH_SIZE = 128
SNIP_AUTHORS_KEEP = 0.45  # compress_snip.py --keep


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
    """Our neuron-level SNIP ("snip"): connection sensitivity summed per unit, sum_j |w_j * dL/dw_j|
    over its incoming weights, of `model` as given (in the transfer chapter: the network the MIP
    scored), for use at the MIP's per-layer counts.

    |dL/dm_w| of SNIP's connection mask m (at m = 1) is |w * dL/dw|. L is the real cross-entropy
    (NLL of log-softmax) on one training minibatch of 128 (`snip_batch`); the network is evaluated
    in eval mode (BatchNorm running stats) on a copy of `model`. Unlike the authors' port
    (`snip_authors_scores`) the weights are not re-initialised and the output layer is not scored.
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


def _output_layer(model: nn.Sequential) -> str:
    """The name of the last Linear/Conv2d child (the output layer, never scored by the MIP)."""
    return [name for name, m in model.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def snip_authors_scores(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> Scores:
    """The authors' SNIP port (`related_pruning/snip.py`, neuron mode) on a copy of `model`.

    Every Conv2d/Linear weight, the output layer's included, is re-initialised Xavier-normal
    (from `torch.Generator().manual_seed(seed)`, in model order), biases are kept as given (pass
    the network at its initialisation, as they do), and the loss is `nll_loss` on the raw logits,
    -mean(logit_y), as in their code. A unit's score is sum_j |dL/dm_j| over its incoming weights
    divided by the sum over all units of all those layers. The network runs in training mode, as
    their freshly built copy does (this matters only with BatchNorm). `Scores.layers` holds the
    MIP's scored layers; `provenance["output_scores"]` the output layer's units, which count in
    the keep rule of `snip_authors_masks`.
    """
    net = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(seed)
    layers = {name: m for name, m in net.named_children() if isinstance(m, (nn.Linear, nn.Conv2d))}
    with torch.no_grad():
        for module in layers.values():
            nn.init.xavier_normal_(module.weight, generator=generator)
    device = next(net.parameters()).device
    loss = F.nll_loss(net(x.to(device)), y.to(device))
    grads = torch.autograd.grad(loss, [module.weight for module in layers.values()])
    sums = {name: (m.weight * g).abs().flatten(1).sum(dim=1).detach().double().cpu()
            for (name, m), g in zip(layers.items(), grads)}
    total = float(sum(v.sum() for v in sums.values()))
    values = {name: (v / total).numpy() for name, v in sums.items()}
    output = _output_layer(net)
    scored = scored_layer_names(net)
    return Scores(layers={name: values[name] for name in scored}, method=SNIP_AUTHORS,
                  provenance={"batch_size": len(y), "seed": seed, "loss": "nll_loss on logits",
                              "init": "xavier_normal", "output_layer": output,
                              "output_scores": values[output].tolist()})


def snip_authors_masks(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                       keep: float = SNIP_AUTHORS_KEEP) -> Masks:
    """The authors' SNIP mask: keep every unit whose `snip_authors_scores` value is >= the
    floor(keep * N)-th largest of all N units of all Conv2d/Linear layers (the output layer
    included, though it is never masked), prune the rest. The counts per layer are SNIP's own,
    not the MIP's."""
    if not 0 < keep <= 1:
        raise ConfigError(f"SNIP keep ratio must be in (0, 1], got {keep!r}")
    scores = snip_authors_scores(model, x, y, seed)
    every = np.concatenate([*scores.layers.values(), scores.provenance["output_scores"]])
    n_keep = math.floor(len(every) * keep)
    if n_keep == 0:
        raise ConfigError(f"SNIP keep ratio {keep} keeps none of the {len(every)} units")
    threshold = np.sort(every)[-n_keep]
    kept = {name: np.flatnonzero(values >= threshold).tolist() for name, values in scores.layers.items()}
    return Masks(kept=kept, sizes={name: len(values) for name, values in scores.layers.items()})


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


def random_authors_masks(scores: Scores, like: Masks, seed: int = 0) -> Masks:
    """The authors' Random mode ("random-authors"): for each layer, draw as many indices as `like`
    prunes there, uniformly *with replacement* from the units whose reference score (the MIP's)
    is > 0, and prune the distinct ones drawn, so a layer may lose fewer units than `like`'s.
    Draws from `numpy.random.default_rng(seed)`, layer by layer in `like`'s order.

    Raises CritneuronError when a layer must lose units but none scored > 0 (their
    `np.random.choice` fails there too).
    """
    rng = np.random.default_rng(seed)
    kept = {}
    for name, count in like.n_pruned().items():
        candidates = np.flatnonzero(np.asarray(scores.layers[name], dtype=float) > 0)
        if count and not len(candidates):
            raise CritneuronError(f"random-authors: {name} must lose {count} units but none scored > 0")
        pruned = set(rng.choice(candidates, size=count, replace=True).tolist()) if count else set()
        kept[name] = [i for i in range(like.sizes[name]) if i not in pruned]
    return Masks(kept=kept, sizes=dict(like.sizes))


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
    """The mask of baseline `method` pruning as many units per layer as `like` (e.g. the MIP mask).

    `method` may also be "random-authors" (`random_authors_masks`; needs `scores`, prunes at
    most as many per layer).
    """
    if method == RANDOM_AUTHORS:
        if scores is None:
            raise ConfigError(f"baseline {RANDOM_AUTHORS!r} needs scores")
        return random_authors_masks(scores, like, seed)
    chosen = baseline_scores(method, model, seed=seed, x=x, y=y, scores=scores)
    counts = like.n_pruned()
    layers = {name: chosen.layers[name] for name in counts}
    return masks_with_counts(Scores(layers=layers, method=chosen.method), counts)
