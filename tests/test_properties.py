"""Property-based tests: random tiny networks of every supported layer type and option, random
batches, ε, λ and mode. The package's optimum equals the independent oracle's (`tests/oracle.py`),
its scores achieve that optimum in the oracle's program, the exact-mode self-check passes, masks
follow the threshold rule and the compacted network equals the masked one."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import nn

from critneuron.errors import CompactionError
from critneuron.config import ScoreConfig
from critneuron.mip.bounds import interval_bounds, module_bounds, stability_counts
from critneuron.mip.scores import score
from critneuron.mip.spec import network_spec
from critneuron.pruning.compact import compact_model
from critneuron.pruning.masks import apply_masks, count_params_flops, masks_from_scores
from oracle import TinyProgram
from tolerances import HIGHS_FEASIBILITY, objective_tolerance

MAX_UNSTABLE_EXACT = 8  # the oracle's branch and bound stays well under a second
EPSILONS = [0.2, 0.05, 0.5, 1e-5, 0.0]  # the first is drawn most; wide boxes give unstable units


def _batchnorm(draw, kind, n: int) -> nn.Module:
    """BatchNorm with random running statistics; with affine, a scale of either sign."""
    bn = kind(n, affine=draw(st.booleans()))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    with torch.no_grad():
        bn.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
        bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
        if bn.affine:
            bn.weight.copy_(torch.randn(n, generator=gen))
            bn.bias.copy_(0.3 * torch.randn(n, generator=gen))
    return bn


def _head(draw, layers: list, n_in: int) -> None:
    """Optionally Linear → [BatchNorm1d] → ReLU, then the last Linear to 2 or 3 logits."""
    if draw(st.booleans()):
        width = draw(st.integers(1, 3))
        layers += [("fc_hidden", nn.Linear(n_in, width))]
        if draw(st.booleans()):
            layers += [("bn_hidden", _batchnorm(draw, nn.BatchNorm1d, width))]
        layers += [("relu_hidden", nn.ReLU())]
        n_in = width
    layers += [("fc_out", nn.Linear(n_in, draw(st.integers(2, 3))))]


@st.composite
def dense_nets(draw) -> tuple[nn.Sequential, tuple]:
    """Flatten → Linear → [BatchNorm1d, affine or not] → ReLU → [Linear → [BN] → ReLU] → Linear."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    features, width = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    layers = [("flatten", nn.Flatten()), ("fc1", nn.Linear(features, width))]
    if draw(st.booleans()):
        layers += [("bn1", _batchnorm(draw, nn.BatchNorm1d, width))]
    layers += [("relu1", nn.ReLU())]
    _head(draw, layers, width)
    return nn.Sequential(OrderedDict(layers)).eval(), (1, 1, features)


@st.composite
def conv_nets(draw) -> tuple[nn.Sequential, tuple]:
    """Conv2d (kernel 1–3, stride 1–2, padding 0–1) → [BatchNorm2d] → ReLU → [AvgPool2d or
    AdaptiveAvgPool2d] → Flatten → head."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    c_in, side, c_out = draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(1, 2))
    kernel = draw(st.integers(1, min(3, side)))
    stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
    out = (side + 2 * padding - kernel) // stride + 1
    layers = [("conv1", nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))]
    if draw(st.booleans()):
        layers += [("bn1", _batchnorm(draw, nn.BatchNorm2d, c_out))]
    layers += [("relu1", nn.ReLU())]
    pool = draw(st.sampled_from(["none", "avg", "adaptive"] if out >= 2 else ["none", "adaptive", "adaptive"]))
    if pool == "avg":
        layers += [("pool1", nn.AvgPool2d(2))]
        out //= 2
    elif pool == "adaptive":
        size = draw(st.integers(1, 2))
        layers += [("pool1", nn.AdaptiveAvgPool2d(size))]
        out = size
    layers += [("flatten", nn.Flatten())]
    _head(draw, layers, c_out * out * out)
    return nn.Sequential(OrderedDict(layers)).eval(), (c_in, side, side)


@st.composite
def problems(draw, nets) -> tuple:
    """A net, a batch of 1–3 inputs in [0, 1] with labels, a config (ε, λ, mode) and a threshold τ."""
    net, shape = draw(nets)
    batch = draw(st.integers(1, 3))
    gen = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = gen.uniform(0, 1, (batch, *shape))
    n_classes = net[-1].out_features
    y = np.array(draw(st.lists(st.integers(0, n_classes - 1), min_size=batch, max_size=batch)))
    cfg = ScoreConfig(mode=draw(st.sampled_from(["exact", "relaxed"])), epsilon=draw(st.sampled_from(EPSILONS)),
                      lambda_=draw(st.floats(0.0, 10.0)))
    return net, x, y, cfg, draw(st.floats(0.0, 1.0))


def _check_against_oracle(net: nn.Sequential, x: np.ndarray, y: np.ndarray, cfg: ScoreConfig, tau: float) -> None:
    program = TinyProgram(net, x, y, cfg.epsilon, cfg.lambda_)
    n_unstable = sum(int(u.sum()) for u in program.unstable.values())
    assume(cfg.mode == "relaxed" or n_unstable <= MAX_UNSTABLE_EXACT)
    _check_bounds(net, x, cfg.epsilon, program)
    event(f"{cfg.mode}, unstable units: {'yes' if n_unstable else 'no'}")
    for module in net:
        event(type(module).__name__ + (f"(affine={module.affine})" if hasattr(module, "affine") else ""))
    result = score(net, x, y, cfg)
    report = result.provenance["solver"]
    oracle = program.solve(cfg.mode)
    tol = objective_tolerance(cfg, oracle.objective)
    assert report["status"] == "optimal"
    assert report["objective"] == pytest.approx(oracle.objective, abs=tol)
    # the scores achieve the optimum in the oracle's program (rows met up to HiGHS's tolerance)
    achieved = program.solve(cfg.mode, result.layers, feasibility_tol=10 * HIGHS_FEASIBILITY)
    assert achieved.objective <= oracle.objective + 2 * tol
    if cfg.mode == "exact":
        assert result.provenance["selfcheck_passed"]
        assert result.provenance["selfcheck_error"] <= cfg.selfcheck_tol
    _check_masks(net, result, x.shape[1:], tau)


def _check_bounds(net: nn.Sequential, x: np.ndarray, epsilon: float, program: TinyProgram) -> None:
    """The package's bounds (from the specs and from the torch modules) are the oracle's, and its
    stability counts classify the ReLU inputs as the oracle does."""
    spec = network_spec(net, x.shape[1:])
    bounds = interval_bounds(spec, x, epsilon)
    by_module = module_bounds(net, x, epsilon)
    for i, (name, _) in enumerate(program.children):
        lo, up = (b.numpy().reshape(len(x), -1) for b in program.bounds[i])
        scale = 1e-12 * (1 + np.abs(lo).max() + np.abs(up).max())
        assert np.allclose(bounds.lower[i], lo, atol=scale) and np.allclose(bounds.upper[i], up, atol=scale), name
        assert np.allclose(by_module[name][1].reshape(len(x), -1), lo, atol=scale), name
        assert np.allclose(by_module[name][2].reshape(len(x), -1), up, atol=scale), name
    counts = {row["layer"]: row for row in stability_counts(spec, bounds)}
    for i, (name, module) in enumerate(program.children):
        if isinstance(module, nn.ReLU):
            lo, up = program.bounds[i - 1]
            off, on = up <= 0, (lo >= 0) & (up > 0)
            expected = {"off": int(off.sum()), "on": int(on.sum()), "unstable": int(program.unstable[name].sum())}
            assert {k: counts[name][k] for k in expected} == expected, name


def _check_masks(net: nn.Sequential, result, shape: tuple, tau: float) -> None:
    """Masks keep exactly the units scored ≥ τ; the compacted net equals the masked one."""
    masks = masks_from_scores(result, tau)
    for name, values in result.layers.items():
        assert masks.kept[name] == np.flatnonzero(np.asarray(values) >= tau).tolist()
    if any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net):
        return  # compaction does not support adaptive pooling
    net64 = net.double()
    try:
        compact, _ = compact_model(net64, masks, input_shape=shape)
    except CompactionError as err:  # a Conv2d(·, 0) or BatchNorm(0) cannot run; an empty Linear compacts
        assert not all(masks.kept.values()) and "keep none of their units" in str(err)
        return
    assert count_params_flops(net64, None, shape)[0] == sum(p.numel() for p in net64.parameters())
    masked = apply_masks(net64, masks)
    assert count_params_flops(net64, masks, shape)[0] == sum(p.numel() for p in compact.parameters())
    probe = torch.rand(4, *shape, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(compact(probe), masked(probe), atol=1e-10)


@given(problems(dense_nets()))
def test_dense_nets_match_the_oracle(problem):
    _check_against_oracle(*problem)


@given(problems(conv_nets()))
def test_conv_nets_match_the_oracle(problem):
    _check_against_oracle(*problem)
